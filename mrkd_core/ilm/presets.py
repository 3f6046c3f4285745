"""Per-category settings of ILM's NSA-style synthetic anomalies (Sec. 3.2).

MRKD synthesises its training anomalies with NSA (Schlüter et al., ECCV 2022), and NSA
tunes a few numbers per MVTec AD category: how large a patch may be along each axis,
how many patches an image gets, and, for objects on a plain background, which pixels
count as "object" so that patches are cut from and pasted onto the object rather than
the background. The values below are NSA's published per-class settings, which the
official MRKD code uses (its carpet and bottle entries match them), except toothbrush,
for which the MRKD code uses fixed 1 % patches. Where a value is ours and not NSA's,
docs/ilm.md says so and why.

A preset is a frozen value: the training dataset resolves one per run and passes it
to every :func:`mrkd_core.ilm.nsa.synthesize` call.

Which preset a run uses is the config field ``ilm_preset`` (docs/ilm.md, "Choosing the
preset"): ``default`` (an MVTec category's published preset, else
``UNKNOWN_CATEGORY_PRESET``), ``texture`` (NSA's texture setting), ``auto`` (estimated
from the training images, :mod:`mrkd_core.ilm.auto`), an MVTec category's name, or
explicit parameters such as ``half_size=0.03:0.15,patches=2``.
:func:`canonical_preset` checks a value and gives its one spelling;
:func:`mrkd_core.ilm.resolve.resolve_preset` turns it into an :class:`ILMPreset` for a
category (there, because ``auto`` needs the estimator, which needs this module).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

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

#: NSA's texture setting: patches anywhere, half-width 3-40 % per axis, up to 4 patches. The
#: ``texture`` value of ``ilm_preset``; without knowing a category's background it works on
#: any image, but on a small object on a plain background most patches land on the background.
TEXTURE_PRESET: ILMPreset = _texture("texture")
#: The name this setting had while it was every unknown category's default (kept for callers).
DEFAULT_PRESET: ILMPreset = TEXTURE_PRESET

if set(PRESETS) != set(MVTEC_CATEGORIES):  # a typo in the table must not pass silently
    raise RuntimeError(f"ILM presets and MVTEC_CATEGORIES disagree: {sorted(set(PRESETS) ^ set(MVTEC_CATEGORIES))}")


def get_preset(category: str) -> ILMPreset:
    """The published ILM preset of ``category`` (MVTec AD names, case-insensitive), else ``TEXTURE_PRESET``.

    Unknown categories are not an error. What a *run* uses is ``ilm_preset`` of its
    config: :func:`mrkd_core.ilm.resolve.resolve_preset`.
    """
    if not isinstance(category, str):
        raise ConfigError(f"ILM preset: category must be a string, got {category!r}")
    return PRESETS.get(category.strip().lower(), TEXTURE_PRESET)


# --------------------------------------------------------------------------- the config value
PRESET_DEFAULT = "default"
PRESET_TEXTURE = "texture"
PRESET_AUTO = "auto"
#: What ``default`` means for a category without a published preset (BTAD, MTD, ELPV, a
#: user's folder): chosen by the measurement in docs/ilm.md ("Choosing the default").
UNKNOWN_CATEGORY_PRESET = PRESET_TEXTURE

# Explicit parameters in their canonical order → the ILMPreset field each sets (docs/ilm.md:
# half-sizes LO:HI as fractions of the side, patch count, background grey level and
# threshold, least object share of a patch and of its landing place).
_PARAMETERS: dict[str, str] = {
    "half_height": "width_bounds_pct", "half_width": "width_bounds_pct", "patches": "num_patches",
    "background": "background", "threshold": "background_threshold", "min_object": "min_object_pct",
    "min_overlap": "min_overlap_pct",
}
# Accepted on input, never written: sets half_height and half_width together.
_SHORTHAND = "half_size"
# With a background but without these, NSA's most common object values.
_OBJECT_DEFAULTS = {"min_object": 0.7, "min_overlap": 0.25}
_PRESET_HELP = (f"use {PRESET_DEFAULT}, {PRESET_AUTO}, {PRESET_TEXTURE}, an MVTec AD category ({', '.join(MVTEC_CATEGORIES)}) "
                "or parameters like 'half_size=0.03:0.15,patches=2' (keys: "
                f"{', '.join([_SHORTHAND, *_PARAMETERS])}; docs/ilm.md)")


def _bad(msg: str) -> ConfigError:
    return ConfigError(f"config field 'ilm_preset': {msg}")


def _number(key: str, text: Any) -> float:
    if isinstance(text, bool):
        raise _bad(f"{key}={text!r} is not a number")
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise _bad(f"{key}={text!r} is not a number") from None
    if not math.isfinite(value):
        raise _bad(f"{key}={text!r} must be a finite number")
    return value


def _bounds(key: str, value: Any) -> tuple[float, float]:
    """'0.03:0.15', '0.01', [0.03, 0.15] or 0.01 → (lo, hi)."""
    if isinstance(value, str):
        parts: list[Any] = value.split(":")
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = [value]
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2:
        raise _bad(f"{key}={value!r} must be LO:HI (or one value for a fixed size)")
    lo, hi = (_number(key, x) for x in parts)
    if not 0.0 < lo <= hi <= 0.5:
        raise _bad(f"{key}={value!r}: need 0 < LO <= HI <= 0.5 (half-sizes as a fraction of the image side)")
    return lo, hi


def _parameters(value: str | Mapping[str, Any]) -> dict[str, Any]:
    """Explicit parameters (a 'key=value,...' text or a mapping) → checked values by canonical key."""
    if isinstance(value, str):
        items: list[tuple[str, Any]] = []
        for part in value.split(","):
            key, eq, raw = part.partition("=")
            if not eq or not key.strip():
                raise _bad(f"{part.strip()!r} is not key=value; {_PRESET_HELP}")
            items.append((key.strip().lower(), raw.strip()))
    else:
        items = [(str(k).strip().lower(), v) for k, v in value.items()]
    out: dict[str, Any] = {}
    for key, raw in items:
        if key != _SHORTHAND and key not in _PARAMETERS:
            raise _bad(f"unknown parameter {key!r}; keys: {', '.join([_SHORTHAND, *_PARAMETERS])}")
        names = ("half_height", "half_width") if key == _SHORTHAND else (key,)
        for name in names:
            if name in out:
                raise _bad(f"{name} is given twice")
            if name.startswith("half_"):
                out[name] = _bounds(key, raw)
            elif name == "patches":
                n = _number(key, raw)
                if n != int(n) or n < 1:
                    raise _bad(f"patches={raw!r} must be a whole number >= 1")
                out[name] = int(n)
            else:
                out[name] = _number(key, raw)
    if "background" not in out:
        stray = [k for k in ("threshold", "min_object", "min_overlap") if k in out]
        if stray:
            raise _bad(f"{', '.join(stray)}: used only with a background; add background=<grey level>")
    else:
        if "threshold" not in out:
            raise _bad("background needs threshold=<grey levels> (NSA: 60 for bright, 20 for dark backgrounds)")
        for k, v in _OBJECT_DEFAULTS.items():
            out.setdefault(k, v)
    out.setdefault("half_height", TEXTURE_PRESET.width_bounds_pct[0])
    out.setdefault("half_width", TEXTURE_PRESET.width_bounds_pct[1])
    out.setdefault("patches", TEXTURE_PRESET.num_patches)
    return out


def _fmt(v: float) -> str:
    return format(float(v), ".10g")


def _spell(params: Mapping[str, Any]) -> str:
    parts = []
    for key in _PARAMETERS:
        if key not in params:
            continue
        v = params[key]
        parts.append(f"{key}={_fmt(v[0])}:{_fmt(v[1])}" if isinstance(v, tuple) else f"{key}={_fmt(v)}")
    return ",".join(parts)


def _from_parameters(params: Mapping[str, Any], name: str) -> ILMPreset:
    try:
        return ILMPreset(
            name=name, width_bounds_pct=(params["half_height"], params["half_width"]), num_patches=params["patches"],
            background=params.get("background"), background_threshold=params.get("threshold", 0.0),
            min_object_pct=params.get("min_object", 0.0), min_overlap_pct=params.get("min_overlap", 0.0),
        )  # fmt: skip
    except ConfigError as exc:  # ILMPreset names its own field; say which parameter that is
        msg = str(exc)
        for key, field_name in _PARAMETERS.items():
            msg = msg.replace(f"field '{field_name}'", f"parameter '{key}'")
        raise _bad(msg) from None


def canonical_preset(value: str | Mapping[str, Any]) -> str:
    """The one spelling of an ``ilm_preset`` value, so that equal presets hash equally.

    ``default``, ``auto``, ``texture`` and MVTec names in lower case; explicit parameters
    (a ``key=value,...`` text or a mapping, e.g. from JSON) as ``key=value`` in a fixed
    order with every parameter that applies spelt out. Raises ``ConfigError`` with one line
    naming the bad part and the accepted values.
    """
    if isinstance(value, Mapping):
        if not value:
            raise _bad(f"an empty mapping; {_PRESET_HELP}")
        params = _parameters(value)
    elif isinstance(value, str):
        word = value.strip().lower()
        if not word:
            raise _bad(f"empty; {_PRESET_HELP}")
        if word in (PRESET_DEFAULT, PRESET_AUTO, PRESET_TEXTURE) or word in PRESETS:
            return word
        if "=" not in word:
            raise _bad(f"unknown preset {value!r}; {_PRESET_HELP}")
        params = _parameters(word)
    else:
        raise _bad(f"{value!r} must be a name or parameters; {_PRESET_HELP}")
    text = _spell(params)
    _from_parameters(params, text)  # every value in range
    return text


def named_preset(value: str) -> ILMPreset:
    """The preset a canonical ``ilm_preset`` value names: ``texture``, an MVTec category or parameters.

    ``default`` and ``auto`` depend on the category and its images:
    :func:`mrkd_core.ilm.resolve.resolve_preset` decides those. Raises ``ConfigError`` for
    a bad value.
    """
    if value == PRESET_TEXTURE:
        return TEXTURE_PRESET
    if value in PRESETS:
        return PRESETS[value]
    if value in (PRESET_DEFAULT, PRESET_AUTO):
        raise ConfigError(f"ilm_preset {value!r} depends on the category: resolve it with resolve_preset")
    return _from_parameters(_parameters(value), value)


def describe_preset(preset: ILMPreset) -> str:
    """A preset as ``ilm_preset`` parameters (what to pass to reproduce it without ``auto``)."""
    params: dict[str, Any] = {"half_height": preset.width_bounds_pct[0], "half_width": preset.width_bounds_pct[1],
                              "patches": preset.num_patches}
    if preset.background is not None:
        params.update(background=preset.background, threshold=preset.background_threshold,
                      min_object=preset.min_object_pct, min_overlap=preset.min_overlap_pct)
    return _spell(params)
