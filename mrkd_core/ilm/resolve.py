"""Which ILM preset a run uses: where the named presets and the ``auto`` estimator meet.

``ilm_preset`` (config field, docs/ilm.md "Choosing the preset") names a published
preset, NSA's texture setting, explicit parameters (:mod:`mrkd_core.ilm.presets`) or
``auto``, an estimate from the category's training images (:mod:`mrkd_core.ilm.auto`).
The estimator needs the presets and the object rule of :mod:`mrkd_core.ilm.nsa`, so the
choice between them lives above all three.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from mrkd_core.errors import ConfigError
from mrkd_core.ilm.auto import estimate_preset
from mrkd_core.ilm.presets import (
    PRESET_AUTO,
    PRESET_DEFAULT,
    PRESETS,
    UNKNOWN_CATEGORY_PRESET,
    ILMPreset,
    canonical_preset,
    describe_preset,
    named_preset,
)

log = logging.getLogger(__name__)

__all__ = ["resolve_preset"]


def resolve_preset(value: str, category: str, images: Sequence[np.ndarray] | None = None) -> ILMPreset:
    """The preset a run with ``ilm_preset=value`` uses for ``category``.

    ``default``: the category's published preset (MVTec AD names), else what
    ``UNKNOWN_CATEGORY_PRESET`` says. ``auto`` estimates one from ``images``, the decoded
    uint8 H×W×3 training images (:func:`estimate_preset`). Raises
    ``ConfigError`` for a bad value, or for ``auto`` without images.
    """
    value = canonical_preset(value)
    if value == PRESET_DEFAULT:
        key = category.strip().lower() if isinstance(category, str) else category
        if key in PRESETS:
            return PRESETS[key]
        log.info("ILM preset for %s: %s → %s (no published preset for this category; NSA's setting for "
                 "categories it does not name)", category, PRESET_DEFAULT, UNKNOWN_CATEGORY_PRESET)
        value = UNKNOWN_CATEGORY_PRESET
    if value == PRESET_AUTO:
        if not images:
            raise ConfigError(f"ilm_preset 'auto' for category {category!r}: needs the training images")
        preset = estimate_preset(images)
        log.info("ILM preset for %s: auto → %s", category, describe_preset(preset))
        return preset
    return named_preset(value)
