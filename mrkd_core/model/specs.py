"""Per-backbone architecture facts, derived once so that no module hard-codes channels."""

from __future__ import annotations

from dataclasses import dataclass

from mrkd_core.config import BACKBONES
from mrkd_core.errors import ConfigError
from mrkd_core.model.blocks import BasicBlock, Bottleneck


@dataclass(frozen=True)
class BackboneSpec:
    """What MRKD needs of a backbone: block type, base width, the student's and OCBE's block counts, channels."""

    name: str
    block: type
    base_width: int
    decoder_layers: tuple[int, int, int]  # blocks of the student's stages (from deep to shallow)
    ocbe_blocks: int  # blocks of the OCBE residual stage

    @property
    def channels(self) -> tuple[int, int, int]:
        """Channels of the teacher's layer1..3 outputs (the three scales of Eq. 4-5)."""
        e = self.block.expansion
        return (64 * e, 128 * e, 256 * e)

    @property
    def embedding_channels(self) -> int:
        """Channels of the one-class embedding f_B (2048 for WRN50)."""
        return 512 * self.block.expansion


_SPECS = {
    # RD4AD: the student mirrors the teacher's stages; OCBE has 2 (basic) or 3 (bottleneck) blocks.
    "resnet18": BackboneSpec("resnet18", BasicBlock, 64, (2, 2, 2), 2),
    "resnet50": BackboneSpec("resnet50", Bottleneck, 64, (3, 4, 6), 3),
    "wide_resnet50_2": BackboneSpec("wide_resnet50_2", Bottleneck, 128, (3, 4, 6), 3),
}


def backbone_spec(name: str) -> BackboneSpec:
    """The channels and layers of backbone ``name``; ``ConfigError`` listing the choices otherwise."""
    if name not in _SPECS:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return _SPECS[name]
