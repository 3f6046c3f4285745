"""``ilm_preset: auto``: an ILM preset estimated from a category's own training images.

NSA's per-category presets (``presets.PRESETS``) encode two facts about each MVTec AD
category: whether the part lies on a plain background, so that patches must be cut from
and pasted onto the part rather than the background, and how large the part is. For a
category without a published preset ``auto`` measures both (docs/ilm.md, "auto"):

1. **Background level.** The grey level (mean of the three channels, as the object rule
   of :func:`mrkd_core.ilm.nsa.object_mask` uses) of a ring along the image border,
   ``BORDER_FRACTION`` of the side wide, pooled over the training images (at most
   ``MAX_IMAGES``, evenly spaced). Its median is the background level ``b``; the 95th
   percentile of ``|grey − b|`` on the ring is the border's spread ``s``.
2. **Plain?** Only a border with ``s ≤ MAX_BORDER_SPREAD`` grey levels can be a plain
   background (a texture's border varies as much as its middle).
3. **Object pixels.** Threshold ``t = max(MIN_THRESHOLD, THRESHOLD_FACTOR × s)``: a
   pixel further than ``t`` from ``b`` is object, after the median clean-up of the
   object rule (the very mask ILM will use).
4. **Object?** Only when the median object share of the images lies in
   ``[MIN_OBJECT_SHARE, MAX_OBJECT_SHARE]``: almost nothing off-background is a plain
   texture (or an empty belt), almost everything is a part that fills the frame.
5. **The object preset.** Background ``(b, t)``; a source patch at least
   ``MIN_OBJECT`` object and ``MIN_OVERLAP`` of its object pixels landing on object (NSA's
   values for objects with holes or thin parts, metal_nut and screw: the shape is
   unknown); up to ``OBJECT_PATCHES`` patches (NSA's count for most objects); half-sizes
   from 0.03 (NSA's lower bound) up to half the median extent of the object's bounding
   box per axis, within [0.05, 0.4] and rounded to 0.001, so that a patch is at most as
   large as the part. Background level and threshold are rounded to 0.1 grey level.

Anything else gets NSA's texture setting (``presets.TEXTURE_PRESET``). Deterministic: the
same images give the same preset.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from mrkd_core.ilm.nsa import object_mask
from mrkd_core.ilm.presets import TEXTURE_PRESET, ILMPreset

log = logging.getLogger(__name__)

MAX_IMAGES = 64
BORDER_FRACTION = 0.05
MAX_BORDER_SPREAD = 30.0
THRESHOLD_FACTOR = 2.0
MIN_THRESHOLD = 10.0
MIN_OBJECT_SHARE = 0.02
MAX_OBJECT_SHARE = 0.85
MIN_OBJECT = 0.5
MIN_OVERLAP = 0.25
OBJECT_PATCHES = 3
LOWER_HALF_SIZE = 0.03
UPPER_HALF_SIZE = (0.05, 0.4)


@dataclass(frozen=True)
class BackgroundEstimate:
    """What :func:`estimate_background` measured (grey levels 0-255, shares 0-1).

    ``level``: the border's median grey ``b``; ``spread``: the 95th percentile of
    ``|grey − b|`` on the border; ``threshold``: ``t``; ``object_share``: the median share of
    object pixels per image (NaN when the border is not plain); ``extent``: the median
    (height, width) of the object's bounding box as fractions of the side ((0, 0) without
    object); ``is_object``: the verdict of steps 2 and 4.
    """

    level: float
    spread: float
    threshold: float
    object_share: float
    extent: tuple[float, float]
    is_object: bool


def _grey(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float32).mean(axis=2) if image.ndim == 3 else image.astype(np.float32)


def _subset(images: Sequence[np.ndarray]) -> list[np.ndarray]:
    n = len(images)
    if n <= MAX_IMAGES:
        return list(images)
    return [images[int(i)] for i in np.linspace(0, n - 1, MAX_IMAGES).round()]


def estimate_background(images: Sequence[np.ndarray]) -> BackgroundEstimate:
    """Steps 1-4 of the module docstring on uint8 H×W×3 training images (same size)."""
    if not images:
        raise ValueError("auto ILM preset: no training images")
    chosen = _subset(images)
    h, w = chosen[0].shape[:2]
    ring = max(2, int(round(BORDER_FRACTION * min(h, w))))
    border = np.ones((h, w), dtype=bool)
    border[ring:h - ring, ring:w - ring] = False
    values = np.concatenate([_grey(img)[border] for img in chosen])
    level = float(np.median(values))
    spread = float(np.quantile(np.abs(values - level), 0.95))
    threshold = max(MIN_THRESHOLD, THRESHOLD_FACTOR * spread)
    if spread > MAX_BORDER_SPREAD:
        return BackgroundEstimate(level, spread, threshold, float("nan"), (0.0, 0.0), False)
    probe = replace(TEXTURE_PRESET, name="auto-probe", background=level, background_threshold=threshold)
    shares, heights, widths = [], [], []
    for img in chosen:
        obj = object_mask(img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2), probe)
        shares.append(float(obj.mean()))
        rows, cols = np.flatnonzero(obj.any(axis=1)), np.flatnonzero(obj.any(axis=0))
        heights.append((rows[-1] - rows[0] + 1) / h if rows.size else 0.0)
        widths.append((cols[-1] - cols[0] + 1) / w if cols.size else 0.0)
    share = float(np.median(shares))
    is_object = MIN_OBJECT_SHARE <= share <= MAX_OBJECT_SHARE
    extent = (float(np.median(heights)), float(np.median(widths))) if is_object else (0.0, 0.0)
    return BackgroundEstimate(level, spread, threshold, share, extent, is_object)


def estimate_preset(images: Sequence[np.ndarray]) -> ILMPreset:
    """The ``auto`` preset of a category from its training images (uint8 H×W×3, one size).

    An object preset when the images show a part on a plain background, else NSA's
    texture setting (module docstring). Raises ``ValueError`` for no images.
    """
    est = estimate_background(images)
    log.debug("auto ILM preset: %s", est)
    if not est.is_object:
        return replace(TEXTURE_PRESET, name="auto")
    lo_up, hi_up = UPPER_HALF_SIZE
    bounds = tuple((LOWER_HALF_SIZE, round(float(np.clip(0.5 * e, lo_up, hi_up)), 3)) for e in est.extent)
    return ILMPreset(
        name="auto", width_bounds_pct=bounds, num_patches=OBJECT_PATCHES,
        background=round(est.level, 1), background_threshold=round(est.threshold, 1),
        min_object_pct=MIN_OBJECT, min_overlap_pct=MIN_OVERLAP,
    )  # fmt: skip
