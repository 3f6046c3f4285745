"""OCBE, the bottleneck B of Eq. 1: RD4AD's one-class bottleneck embedding, as the official code runs it.

Multi-scale fusion: f_T^1 goes through two stride-2 3×3 conv + BN + ReLU steps and
f_T^2 through one, so both reach f_T^3's resolution; the three are concatenated and
compressed by one residual stage with stride 2 (3 bottleneck blocks for ResNet50 /
WideResNet50-2, 2 basic blocks for ResNet18 and the EfficientNet-Lite teachers) into the
compact embedding f_B, as wide as the teacher's own stride-32 features would be, e.g.
(2048, 8, 8) at 256 px for WRN50, (320, 8, 8) for EfficientNet-Lite0. The official code
also builds a 1×1 conv + BN that it never calls (8.39 M parameters for WRN50, handed to
Adam); it is left out here.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mrkd_core.backbones import Backbone
from mrkd_core.model.blocks import BLOCKS, conv3x3, make_stage
from mrkd_core.model.init import init_like_rd4ad


# f_B is B×C×H/32×W/32: three stride-2 steps of the teacher's stem and layers 1-3 (1/16), one of the OCBE stage.
OCBE_STRIDE = 32


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(conv3x3(cin, cout, 2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class OCBE(nn.Module):
    """B(f_T,a^1..3) → f_B (Eq. 1); channels and blocks from the backbone's catalog record.

    Called ``OCBE`` as in RD4AD and anomalib; the ResNet block of the same name in the
    torchvision sense is ``mrkd_core.model.blocks.Bottleneck``. Input: the teacher's three
    feature maps (B×C1×H/4×W/4, B×C2×H/8×W/8, B×C3×H/16×W/16); output f_B of shape
    B×``out_channels``×H/32×W/32 (e.g. 2048×8×8 for WRN50 at 256 px).
    """

    def __init__(self, backbone: Backbone):
        super().__init__()
        block = BLOCKS[backbone.block]
        c1, c2, c3 = backbone.channels
        self.fuse1 = nn.Sequential(_down(c1, c2), _down(c2, c3))  # f_T^1: 1/4 → 1/16 of the image
        self.fuse2 = _down(c2, c3)  # f_T^2: 1/8 → 1/16
        self.stage = make_stage(block, 3 * c3, backbone.embedding_channels // block.expansion, backbone.ocbe_blocks,
                                stride=2, base_width=backbone.base_width, reverse=False)
        self.in_channels = backbone.channels
        self.out_channels = backbone.embedding_channels
        init_like_rd4ad(self)

    def forward(self, features: list[Tensor]) -> Tensor:
        f1, f2, f3 = features
        fused = torch.cat([self.fuse1(f1), self.fuse2(f2), f3], dim=1)
        return self.stage(fused)
