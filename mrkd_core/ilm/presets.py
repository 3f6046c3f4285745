"""Per-category settings of ILM's NSA-style synthetic anomalies (Sec. 3.2).

MRKD synthesises its training anomalies with NSA (Schlüter et al., ECCV 2022), and NSA
tunes a few numbers per MVTec AD category: how large a patch may be along each axis,
how many patches an image gets, and, for objects on a plain background, which pixels
count as "object" so that patches are cut from and pasted onto the object rather than
the background. The values below are NSA's published per-class settings, which the
official MRKD code uses (its carpet and bottle entries match them), except toothbrush,
for which the MRKD code uses fixed 1 % patches. Where a value is ours and not NSA's,
docs/ilm.md says so and why.

A preset is a frozen value: the training dataset reads one per category and passes it
to every :func:`mrkd_core.ilm.nsa.synthesize` call.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from mrkd_core.errors import ConfigError

log = logging.getLogger(__name__)

Bounds = tuple[tuple[float, float], tuple[float, float]]

MVTEC_CATEGORIES: tuple[str, ...] = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)  # fmt: skip


@dataclass(frozen=True)
class ILMPreset:
    """How NSA draws patches for one category.

    Patch half-width along an axis of length ``n`` is
    ``clip((gamma_offset + Gamma(gamma_shape, gamma_scale)) * n, lo * n, hi * n)`` with
    ``(lo, hi)`` from ``width_bounds_pct`` (NSA's sampler: mostly small patches, a long
    tail of large ones). The first patch is always attempted, each of the further
    ``num_patches - 1`` with probability ``extra_patch_prob``.

    Object categories (``background`` is not None): a pixel is "object" when the mean of
    its three channels differs from ``background`` by more than ``background_threshold``
    (then median-filtered to drop speckle). A source patch must be at least
    ``min_object_pct`` object, and at its destination at least ``min_overlap_pct`` of
    those object pixels must fall on the object again, so synthetic anomalies sit on the
    part the network must learn (Sec. 3.2: "replicated in foreground regions").
    """

    name: str
    # ((min, max) of the half-height, (min, max) of the half-width), as fractions of the
    # image height / width. A half-width of 0.4 is a patch 80 % of the image.
    width_bounds_pct: Bounds = ((0.03, 0.4), (0.03, 0.4))
    num_patches: int = 4
    # Grey level (0-255) of a plain background, or None: the whole image is eligible.
    background: float | None = None
    background_threshold: float = 0.0
    min_object_pct: float = 0.0
    min_overlap_pct: float = 0.0
    # NSA's gamma sampler of the half-width, (shape, scale, offset) = (2, 0.05, 0.03).
    gamma_shape: float = 2.0
    gamma_scale: float = 0.05
    gamma_offset: float = 0.03
    extra_patch_prob: float = 0.5
    # Paste at a new, random location (NSA "shift"; always on in NSA's and MRKD's runs).
    # Off only makes sense with a different source image, where the patch then keeps its
    # coordinates (NSA's "FPI" setting).
    shift: bool = True
    # Candidate positions tried per patch, for the source and for the destination, before
    # the patch is given up (NSA: 200). Bounds the work on images with little object.
    max_tries: int = 200

    def __post_init__(self) -> None:
        def fail(field_name: str, msg: str) -> None:
            raise ConfigError(f"ILM preset '{self.name}', field '{field_name}': {msg}")

        try:
            (h_lo, h_hi), (w_lo, w_hi) = self.width_bounds_pct
        except (TypeError, ValueError):
            fail("width_bounds_pct", "expected ((h_min, h_max), (w_min, w_max))")
        for lo, hi in ((h_lo, h_hi), (w_lo, w_hi)):
            if not (0.0 < lo <= hi <= 0.5):
                fail("width_bounds_pct", f"{self.width_bounds_pct}: need 0 < min <= max <= 0.5 "
                     "(half-widths as a fraction of the image side)")
        if self.num_patches < 1:
            fail("num_patches", f"{self.num_patches} must be at least 1")
        if self.background is not None and not (0.0 <= self.background <= 255.0):
            fail("background", f"{self.background} must be a grey level in [0, 255] or None")
        if not (math.isfinite(self.background_threshold) and self.background_threshold >= 0):
            fail("background_threshold", f"{self.background_threshold} must be >= 0")
        for name in ("min_object_pct", "min_overlap_pct", "extra_patch_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                fail(name, f"{value} must lie in [0, 1]")
        if not (self.gamma_shape > 0 and self.gamma_scale > 0 and self.gamma_offset >= 0):
            fail("gamma_shape", "gamma_shape and gamma_scale must be > 0, gamma_offset >= 0")
        if self.max_tries < 1:
            fail("max_tries", f"{self.max_tries} must be at least 1")

    @property
    def is_object(self) -> bool:
        """True when patches are restricted to the object (a background colour is set)."""
        return self.background is not None


def _texture(name: str) -> ILMPreset:
    # NSA's texture setting: half-width 3-40 % per axis, up to 4 patches, anywhere.
    return ILMPreset(name=name, width_bounds_pct=((0.03, 0.4), (0.03, 0.4)), num_patches=4)


def _object(
    name: str, bounds: Bounds, num_patches: int, background: tuple[float, float],
    min_object_pct: float, min_overlap_pct: float = 0.25,
) -> ILMPreset:
    return ILMPreset(
        name=name, width_bounds_pct=bounds, num_patches=num_patches,
        background=background[0], background_threshold=background[1],
        min_object_pct=min_object_pct, min_overlap_pct=min_overlap_pct,
    )  # fmt: skip


_FULL = ((0.03, 0.4), (0.03, 0.4))
# Backgrounds as NSA gives them: (grey level, threshold). Bright (bottle, screw, capsule,
# zipper) and dark (hazelnut, pill, toothbrush, metal nut) MVTec backgrounds.
_BRIGHT = (200.0, 60.0)
_DARK = (20.0, 20.0)

_PRESETS: dict[str, ILMPreset] = {
    # textures: anywhere in the image
    **{name: _texture(name) for name in ("carpet", "grid", "leather", "tile", "wood")},
    # objects that fill the frame (no plain background to skip)
    "cable": ILMPreset(name="cable", width_bounds_pct=((0.05, 0.4), (0.05, 0.4)), num_patches=3),
    "transistor": ILMPreset(name="transistor", width_bounds_pct=_FULL, num_patches=3),
    # objects on a plain background
    "bottle": _object("bottle", _FULL, 3, _BRIGHT, 0.7),
    "capsule": _object("capsule", ((0.03, 0.15), (0.03, 0.4)), 3, _BRIGHT, 0.7),
    "hazelnut": _object("hazelnut", ((0.03, 0.35), (0.03, 0.35)), 3, _DARK, 0.7),
    "metal_nut": _object("metal_nut", _FULL, 3, _DARK, 0.5),
    "pill": _object("pill", ((0.03, 0.2), (0.03, 0.4)), 3, _DARK, 0.7),
    "screw": _object("screw", ((0.03, 0.12), (0.03, 0.12)), 4, _BRIGHT, 0.5),
    # The MRKD code uses fixed 1 % half-widths for toothbrush (NSA: (0.03-0.4, 0.03-0.2));
    # count, background and thresholds are NSA's.
    "toothbrush": _object("toothbrush", ((0.01, 0.01), (0.01, 0.01)), 3, _DARK, 0.25),
    "zipper": _object("zipper", ((0.03, 0.4), (0.03, 0.2)), 4, _BRIGHT, 0.7),
}

#: The 15 MVTec AD presets, read-only.
PRESETS: Mapping[str, ILMPreset] = MappingProxyType(_PRESETS)

#: For any other category (BTAD, MTD, a user's folder): NSA's texture setting. Without
#: knowing a category's background, skipping "background" could refuse every patch or
#: keep patches off the very part that matters; the texture setting works on any image.
DEFAULT_PRESET: ILMPreset = _texture("default")

if set(PRESETS) != set(MVTEC_CATEGORIES):  # a typo in the table must not pass silently
    raise RuntimeError(f"ILM presets and MVTEC_CATEGORIES disagree: {sorted(set(PRESETS) ^ set(MVTEC_CATEGORIES))}")


def get_preset(category: str) -> ILMPreset:
    """The ILM preset of ``category`` (MVTec AD names, case-insensitive), else the default.

    Unknown categories are not an error: every dataset but MVTec AD uses the default.
    """
    if not isinstance(category, str):
        raise ConfigError(f"ILM preset: category must be a string, got {category!r}")
    key = category.strip().lower()
    preset = PRESETS.get(key)
    if preset is None:
        log.info("no ILM preset for category %r; using the texture-like default "
                 "(patches anywhere, half-width 3-40%%, up to 4 patches)", category)
        return DEFAULT_PRESET
    return preset
