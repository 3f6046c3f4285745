"""ILM (Sec. 3.2): NSA-style synthetic anomalies for MRKD training. See docs/ilm.md."""

from mrkd_core.ilm.nsa import BLENDS, ilm_pair, object_mask, synthesize
from mrkd_core.ilm.presets import DEFAULT_PRESET, MVTEC_CATEGORIES, PRESETS, ILMPreset, get_preset

__all__ = [
    "BLENDS",
    "DEFAULT_PRESET",
    "ILMPreset",
    "MVTEC_CATEGORIES",
    "PRESETS",
    "get_preset",
    "ilm_pair",
    "object_mask",
    "synthesize",
]
