"""ILM (Sec. 3.2): NSA-style synthetic anomalies for MRKD training. See docs/ilm.md."""

from mrkd_core.ilm.nsa import BLENDS, ilm_pair, object_mask, synthesize
from mrkd_core.ilm.presets import (
    DEFAULT_PRESET,
    MVTEC_CATEGORIES,
    PRESET_AUTO,
    PRESET_DEFAULT,
    PRESET_TEXTURE,
    PRESETS,
    TEXTURE_PRESET,
    UNKNOWN_CATEGORY_PRESET,
    ILMPreset,
    canonical_preset,
    describe_preset,
    get_preset,
    named_preset,
)
from mrkd_core.ilm.resolve import resolve_preset

__all__ = [
    "BLENDS",
    "DEFAULT_PRESET",
    "ILMPreset",
    "MVTEC_CATEGORIES",
    "PRESETS",
    "PRESET_AUTO",
    "PRESET_DEFAULT",
    "PRESET_TEXTURE",
    "TEXTURE_PRESET",
    "UNKNOWN_CATEGORY_PRESET",
    "canonical_preset",
    "describe_preset",
    "get_preset",
    "named_preset",
    "ilm_pair",
    "object_mask",
    "resolve_preset",
    "synthesize",
]
