"""The student S (Sec. 3.3): a reversed ResNet decoding f_B back to the three scales.

"Symmetrical but reversed" to the teacher: RD4AD's de_resnet18 / de_resnet50 /
de_wide_resnet50_2. Its stages mirror the teacher's layer3, layer2, layer1 (with
RD4AD's block counts), and the first block of each stage upsamples ×2 with a 2×2
stride-2 transposed convolution where the forward block would stride. For the
EfficientNet-Lite teachers (beyond the paper) the stages are ResNet18's, as wide as the
teacher's features at strides 16, 8 and 4 (docs/fidelity.md). The official
code also builds an unused 1×1 conv (1.05 M parameters for WRN50); it is left out.
"""

from __future__ import annotations

from torch import Tensor, nn

from mrkd_core.backbones import Backbone, get_backbone
from mrkd_core.model.blocks import BLOCKS, make_stage
from mrkd_core.model.init import init_like_rd4ad


class Student(nn.Module):
    """S(f_B) → [f_S^1, f_S^2, f_S^3] with the teacher's channels and resolutions."""

    def __init__(self, backbone: Backbone):
        super().__init__()
        block = BLOCKS[backbone.block]
        e = block.expansion
        n3, n2, n1 = backbone.decoder_layers
        c1, c2, c3 = backbone.channels
        self.stage3 = make_stage(block, backbone.embedding_channels, c3 // e, n3, 2, backbone.base_width, reverse=True)
        self.stage2 = make_stage(block, c3, c2 // e, n2, 2, backbone.base_width, reverse=True)
        self.stage1 = make_stage(block, c2, c1 // e, n1, 2, backbone.base_width, reverse=True)
        self.channels = backbone.channels
        init_like_rd4ad(self)

    def forward(self, f_b: Tensor) -> list[Tensor]:
        """f_S^1..3, ordered like the teacher's features (scale 1 = largest)."""
        f3 = self.stage3(f_b)
        f2 = self.stage2(f3)
        f1 = self.stage1(f2)
        return [f1, f2, f3]


def build_student(backbone: Backbone | str) -> Student:
    """The reversed student (decoder) mirroring ``backbone`` (a catalog record or its name), initialised as
    RD4AD's (docs/fidelity.md)."""
    return Student(get_backbone(backbone) if isinstance(backbone, str) else backbone)
