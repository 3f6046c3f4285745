"""ResNet building blocks, forward (encoder) and reversed (decoder), with derived widths.

One definition serves every backbone: ``BasicBlock`` (ResNet18, expansion 1) and
``Bottleneck`` (ResNet50 / WideResNet50-2, expansion 4, width = planes × base_width/64).
The reversed blocks upsample with a 2×2 transposed convolution where the forward
block would stride, as RD4AD's student does.
"""

from __future__ import annotations

from torch import Tensor, nn


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    """3×3 convolution, padding 1, no bias (torchvision's ResNet helper)."""
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    """1×1 convolution, no bias (torchvision's ResNet helper)."""
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


def deconv2x2(cin: int, cout: int) -> nn.ConvTranspose2d:
    """2×2 transposed convolution, stride 2, no bias: the student's upsampling (RD4AD's deconv2x2)."""
    return nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=False)


class BasicBlock(nn.Module):
    """ResNet18's two 3×3 convolutions with a residual; ``reverse`` upsamples ×2 (2×2 deconv) where it would stride."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, shortcut: nn.Module | None = None,
                 base_width: int = 64, reverse: bool = False):
        super().__init__()
        first = deconv2x2(cin, planes) if (reverse and stride == 2) else conv3x3(cin, planes, stride)
        self.conv1, self.bn1 = first, nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = conv3x3(planes, planes), nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """The ResNet50 / WRN50 block (1×1, 3×3, 1×1 convolutions, expansion 4); not OCBE (``model/ocbe.py``)."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, shortcut: nn.Module | None = None,
                 base_width: int = 64, reverse: bool = False):
        super().__init__()
        width = int(planes * base_width / 64)
        mid = deconv2x2(width, width) if (reverse and stride == 2) else conv3x3(width, width, stride)
        self.conv1, self.bn1 = conv1x1(cin, width), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = mid, nn.BatchNorm2d(width)
        self.conv3, self.bn3 = conv1x1(width, planes * self.expansion), nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


# The catalog names a backbone's residual block (``Backbone.block``); this is its class.
BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


def make_stage(block: type, cin: int, planes: int, blocks: int, stride: int, base_width: int,
               reverse: bool) -> nn.Sequential:
    """A ResNet stage; the first block changes resolution (stride 2 down, or 2×2 deconv up)."""
    cout = planes * block.expansion
    shortcut = None
    if stride != 1 or cin != cout:
        proj = deconv2x2(cin, cout) if (reverse and stride == 2) else conv1x1(cin, cout, stride)
        shortcut = nn.Sequential(proj, nn.BatchNorm2d(cout))
    layers = [block(cin, planes, stride, shortcut, base_width, reverse)]
    layers += [block(cout, planes, 1, None, base_width, reverse) for _ in range(1, blocks)]
    return nn.Sequential(*layers)
