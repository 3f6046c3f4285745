"""The student S (Sec. 3.3): a reversed ResNet decoding f_B back to the three scales.

"Symmetrical but reversed" to the teacher: RD4AD's de_resnet18 / de_resnet50 /
de_wide_resnet50_2. Its stages mirror the teacher's layer3, layer2, layer1 (with
RD4AD's block counts), and the first block of each stage upsamples ×2 with a 2×2
stride-2 transposed convolution where the forward block would stride. The official
code also builds an unused 1×1 conv (1.05 M parameters for WRN50); it is left out.
"""

from __future__ import annotations

from torch import Tensor, nn

from mrkd_core.model.blocks import make_stage
from mrkd_core.model.init import init_like_rd4ad
from mrkd_core.model.specs import backbone_spec


class Student(nn.Module):
    """S(f_B) → [f_S^1, f_S^2, f_S^3] with the teacher's channels and resolutions."""

    def __init__(self, backbone: str):
        super().__init__()
        spec = backbone_spec(backbone)
        e = spec.block.expansion
        n3, n2, n1 = spec.decoder_layers
        cin = spec.embedding_channels
        self.stage3 = make_stage(spec.block, cin, 256, n3, 2, spec.base_width, reverse=True)
        self.stage2 = make_stage(spec.block, 256 * e, 128, n2, 2, spec.base_width, reverse=True)
        self.stage1 = make_stage(spec.block, 128 * e, 64, n1, 2, spec.base_width, reverse=True)
        self.channels = spec.channels
        init_like_rd4ad(self)

    def forward(self, f_b: Tensor) -> list[Tensor]:
        """f_S^1..3, ordered like the teacher's features (scale 1 = largest)."""
        f3 = self.stage3(f_b)
        f2 = self.stage2(f3)
        f1 = self.stage1(f2)
        return [f1, f2, f3]


def build_student(backbone: str) -> Student:
    """The reversed student (decoder) mirroring ``backbone``, initialised as RD4AD's (docs/fidelity.md)."""
    return Student(backbone)
