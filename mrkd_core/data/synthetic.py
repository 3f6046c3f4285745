"""A small generated dataset in true MVTec AD layout, for the demo and end-to-end tests.

Real datasets are gigabytes and cannot ship with the code, yet the pipeline must be shown
to *detect* something. These images are built so that a model trained for a few epochs
can: defects are local and clearly visible (a scratch of a foreign colour, a blob of
another hue, a bite out of an object), while normal images vary naturally (random phase,
frequency, orientation, offset, lighting and sensor noise), so no global statistic such
as the mean colour gives the answer away. Masks are exact: they are the pixels the defect
changed. Everything is a pure function of ``seed`` (per image: seed, category, split, index).

``defect_px`` makes defects a fixed number of pixels across whatever the image size: 1024 px
frames with 4-16 px defects are the high-resolution benchmark of docs/tiling.md, where a model
that resizes the whole frame to 256 px sees a 4 px defect as one pixel.

Categories: ``tex_stripes`` (a periodic weave), ``tex_grain`` (a smooth grey field),
``tex_brick``, ``tex_grass``, ``tex_gravel`` (random crops of the real texture photos that
scikit-image's wheel ships, ``skimage.data.brick()`` etc., with painted defects),
``obj_disc`` (a washer on a dark background, about 30 % of the image) and ``obj_capsule``
(a two-coloured capsule on a bright background, about 12 %: a part on a plain background,
where ILM's texture setting puts most patches on the background).

Layout written::

    <root>/<category>/train/good/000.png
    <root>/<category>/test/good/000.png
    <root>/<category>/test/<defect>/000.png
    <root>/<category>/ground_truth/<defect>/000_mask.png
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mrkd_core.data.io import save_png
from mrkd_core.errors import DataError

log = logging.getLogger(__name__)

_MARKER = ".synthetic.json"  # hidden: never reported by `mrkd data check`
_SPLITS = {"train": 1, "test_good": 2, "test_defect": 3}

Rendered = tuple[np.ndarray, np.ndarray]  # (float image H×W×3 in 0..255, object mask H×W bool)


# --------------------------------------------------------------------------- shapes
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy + 0.5, xx + 0.5


def _segment(size: int, p0: np.ndarray, p1: np.ndarray, width: float) -> np.ndarray:
    """Pixels within width/2 of the segment p0-p1 (points as (y, x))."""
    yy, xx = _grid(size)
    d = p1 - p0
    t = ((yy - p0[0]) * d[0] + (xx - p0[1]) * d[1]) / max(float(d @ d), 1e-6)
    t = np.clip(t, 0.0, 1.0)
    dist2 = (yy - (p0[0] + t * d[0])) ** 2 + (xx - (p0[1] + t * d[1])) ** 2
    return dist2 <= (width / 2.0) ** 2


def _ellipse(size: int, center: np.ndarray, axes: tuple[float, float], angle: float) -> np.ndarray:
    yy, xx = _grid(size)
    c, s = np.cos(angle), np.sin(angle)
    u = (xx - center[1]) * c + (yy - center[0]) * s
    v = -(xx - center[1]) * s + (yy - center[0]) * c
    return (u / axes[0]) ** 2 + (v / axes[1]) ** 2 <= 1.0


def _jitter_colour(rng: np.random.Generator, rgb: Sequence[float], amount: float) -> np.ndarray:
    return np.clip(np.asarray(rgb, dtype=np.float32) + rng.uniform(-amount, amount, 3), 0, 255)


# --------------------------------------------------------------------------- normal images
def _stripes(rng: np.random.Generator, size: int) -> Rendered:
    """Woven-looking stripes: random phase, ±10 % frequency, ±8° orientation, lighting."""
    yy, xx = _grid(size)
    theta = np.deg2rad(rng.uniform(-8, 8))
    freq = rng.uniform(0.9, 1.1) * 8.0 / size  # about 8 periods across the image
    phase = rng.uniform(0, 2 * np.pi)
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
    dark = _jitter_colour(rng, (95, 70, 50), 8)
    light = _jitter_colour(rng, (205, 180, 140), 8)
    img = dark + wave[..., None] * (light - dark)
    img *= rng.uniform(0.92, 1.08)
    return img, np.ones((size, size), dtype=bool)


def _grain(rng: np.random.Generator, size: int) -> Rendered:
    """Grey, leather-like smooth random field (a grayscale category, like grid/screw/zipper)."""
    coarse = rng.normal(0.0, 1.0, (max(size // 8, 2),) * 2).astype(np.float32)
    smooth = np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.Resampling.BICUBIC))
    grey = 128.0 + rng.uniform(-10, 10) + 16.0 * smooth
    img = np.repeat(grey[..., None], 3, axis=2)
    return img, np.ones((size, size), dtype=bool)


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    """A 512×512 grey texture photo from scikit-image's wheel (read from the installed package, offline)."""
    import skimage.data

    return getattr(skimage.data, name)().astype(np.float32)


def _photo_crop(name: str) -> Callable[[np.random.Generator, int], Rendered]:
    """Random crops (35-45 % of the photo's side, mirrored half of the time) of a texture photo."""

    def render(rng: np.random.Generator, size: int) -> Rendered:
        photo = _photo(name)
        side = int(rng.uniform(0.35, 0.45) * min(photo.shape))
        y = int(rng.integers(0, photo.shape[0] - side + 1))
        x = int(rng.integers(0, photo.shape[1] - side + 1))
        crop = photo[y:y + side, x:x + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        grey = np.asarray(Image.fromarray(np.ascontiguousarray(crop), mode="F").resize(
            (size, size), Image.Resampling.BILINEAR)) * rng.uniform(0.94, 1.06)
        return np.repeat(grey[..., None], 3, axis=2), np.ones((size, size), dtype=bool)

    return render


def _disc(rng: np.random.Generator, size: int) -> Rendered:
    """An orange washer on a dark background: random offset, radius, hole and lighting."""
    yy, xx = _grid(size)
    center = np.array([size / 2, size / 2]) + rng.uniform(-0.06, 0.06, 2) * size
    radius = rng.uniform(0.30, 0.34) * size
    hole = rng.uniform(0.09, 0.11) * size
    r = np.sqrt((yy - center[0]) ** 2 + (xx - center[1]) ** 2)
    obj = (r <= radius) & (r >= hole)
    background = _jitter_colour(rng, (30, 32, 36), 6)
    colour = _jitter_colour(rng, (225, 140, 50), 10)
    # Directional light across the object: brighter on one side, as in real photographs.
    angle = rng.uniform(0, 2 * np.pi)
    shade = 1.0 + 0.12 * ((xx - center[1]) * np.cos(angle) + (yy - center[0]) * np.sin(angle)) / radius
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = background
    img[obj] = colour * shade[obj][:, None]
    return img, obj


def _capsule(rng: np.random.Generator, size: int) -> Rendered:
    """A red-and-blue capsule, lying nearly horizontal, on a bright plain background."""
    yy, xx = _grid(size)
    center = np.array([size / 2, size / 2]) + rng.uniform(-0.05, 0.05, 2) * size
    half_length = rng.uniform(0.27, 0.30) * size
    radius = rng.uniform(0.10, 0.115) * size
    angle = np.deg2rad(rng.uniform(-6, 6))
    axis = np.array([np.sin(angle), np.cos(angle)], dtype=np.float32)  # (y, x)
    obj = _segment(size, center - axis * (half_length - radius), center + axis * (half_length - radius), 2 * radius)
    along = (xx - center[1]) * axis[1] + (yy - center[0]) * axis[0]
    across = -(xx - center[1]) * axis[0] + (yy - center[0]) * axis[1]
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = _jitter_colour(rng, (215, 215, 210), 5)
    red, blue = obj & (along < 0), obj & (along >= 0)
    img[red] = _jitter_colour(rng, (165, 45, 45), 8)
    img[blue] = _jitter_colour(rng, (45, 105, 165), 8)
    # A cylinder's shading: brightest along its axis.
    shade = 0.9 + 0.2 * np.clip(1.0 - (across / radius) ** 2, 0.0, 1.0)
    img[obj] *= shade[obj][:, None]
    return img, obj


# --------------------------------------------------------------------------- defects
def _random_point(rng: np.random.Generator, fg: np.ndarray, margin: float) -> np.ndarray:
    """A point of the object (or of the central region for textures)."""
    size = fg.shape[0]
    lo, hi = int(margin * size), int((1 - margin) * size)
    ys, xs = np.nonzero(fg[lo:hi, lo:hi])
    k = int(rng.integers(len(ys)))
    return np.array([ys[k] + lo + 0.5, xs[k] + lo + 0.5], dtype=np.float32)


def _scratch(rng: np.random.Generator, img: np.ndarray, fg: np.ndarray, colour: Sequence[float],
             extent: float | None = None) -> np.ndarray:
    size = fg.shape[0]
    mid = _random_point(rng, fg, 0.3)
    angle = rng.uniform(0, np.pi)
    half = extent / 2 if extent else rng.uniform(0.16, 0.26) * size
    d = np.array([np.sin(angle), np.cos(angle)], dtype=np.float32) * half
    width = max(1.5, extent / 4) if extent else max(2.0, size / 28)
    mask = _segment(size, mid - d, mid + d, width=width) & fg
    img[mask] = _jitter_colour(rng, colour, 10)
    return mask


def _blob(rng: np.random.Generator, img: np.ndarray, fg: np.ndarray, colour: Sequence[float],
          extent: float | None = None) -> np.ndarray:
    size = fg.shape[0]
    center = _random_point(rng, fg, 0.3)
    axes = ((extent / 2, extent / 2 * rng.uniform(0.6, 1.0)) if extent
            else (rng.uniform(0.07, 0.11) * size, rng.uniform(0.05, 0.09) * size))
    mask = _ellipse(size, center, axes, rng.uniform(0, np.pi)) & fg
    img[mask] = _jitter_colour(rng, colour, 10)
    return mask


def _flat_patch(rng: np.random.Generator, img: np.ndarray, fg: np.ndarray, extent: float | None = None) -> np.ndarray:
    """A patch where the texture is missing: the image's own mean colour, without pattern."""
    size = fg.shape[0]
    center = _random_point(rng, fg, 0.3)
    axes = ((extent / 2, extent / 2 * rng.uniform(0.6, 1.0)) if extent
            else (rng.uniform(0.10, 0.14) * size, rng.uniform(0.08, 0.12) * size))
    mask = _ellipse(size, center, axes, rng.uniform(0, np.pi))
    img[mask] = img.reshape(-1, 3).mean(axis=0)
    return mask


def _bite(rng: np.random.Generator, img: np.ndarray, fg: np.ndarray, background: np.ndarray,
          extent: float | None = None) -> np.ndarray:
    """A missing piece: a round bite out of the object's rim, showing the background."""
    size = fg.shape[0]
    ys, xs = np.nonzero(fg)
    center = np.array([ys.mean(), xs.mean()])
    radius = np.sqrt(((ys - center[0]) ** 2 + (xs - center[1]) ** 2).max())
    angle = rng.uniform(0, 2 * np.pi)
    at = center + radius * np.array([np.sin(angle), np.cos(angle)])
    r = extent / 2 if extent else rng.uniform(0.12, 0.16) * size
    mask = _ellipse(size, at, (r, r), 0.0) & fg
    img[mask] = background
    return mask


def _rim_bite(rng: np.random.Generator, img: np.ndarray, fg: np.ndarray, background: np.ndarray,
              extent: float | None = None) -> np.ndarray:
    """A missing piece at a random point of the object's outline (any shape), showing the background."""
    size = fg.shape[0]
    inner = fg.copy()
    inner[1:, :] &= fg[:-1, :]
    inner[:-1, :] &= fg[1:, :]
    inner[:, 1:] &= fg[:, :-1]
    inner[:, :-1] &= fg[:, 1:]
    ys, xs = np.nonzero(fg & ~inner)
    k = int(rng.integers(len(ys)))
    r = extent / 2 if extent else rng.uniform(0.07, 0.09) * size
    mask = _ellipse(size, np.array([ys[k] + 0.5, xs[k] + 0.5]), (r, r), 0.0) & fg
    img[mask] = background
    return mask


@dataclass(frozen=True)
class _Category:
    render: Callable[[np.random.Generator, int], Rendered]
    defects: tuple[str, ...]
    grayscale: bool = False
    # "missing" on an object: a bite where a ray from the centre leaves the object (round
    # parts) or at a random point of the outline (any shape).
    rim_bite: bool = False


CATEGORIES: dict[str, _Category] = {
    "tex_stripes": _Category(_stripes, ("scratch", "blob", "missing")),
    "tex_grain": _Category(_grain, ("scratch", "blob"), grayscale=True),
    "tex_brick": _Category(_photo_crop("brick"), ("scratch", "blob", "missing"), grayscale=True),
    "tex_grass": _Category(_photo_crop("grass"), ("scratch", "blob", "missing"), grayscale=True),
    "tex_gravel": _Category(_photo_crop("gravel"), ("scratch", "blob", "missing"), grayscale=True),
    "obj_disc": _Category(_disc, ("missing", "blob", "scratch")),
    "obj_capsule": _Category(_capsule, ("missing", "blob", "scratch"), rim_bite=True),
}
DEFAULT_CATEGORIES: tuple[str, ...] = ("tex_stripes", "tex_grain", "obj_disc")


def _apply_defect(name: str, kind: str, rng: np.random.Generator, img: np.ndarray, fg: np.ndarray,
                  extent: float | None = None) -> np.ndarray:
    """Paint defect ``kind``; ``extent``: its largest extent in pixels (None: sizes relative to the image)."""
    grey = CATEGORIES[name].grayscale
    if kind == "scratch":
        colour = (20, 20, 20) if grey else (40, 220, 235)
        return _scratch(rng, img, fg, colour, extent)
    if kind == "blob":
        colour = (240, 240, 240) if grey else (60, 90, 220)
        return _blob(rng, img, fg, colour, extent)
    if kind == "missing":
        if fg.all():
            return _flat_patch(rng, img, fg, extent)
        bite = _rim_bite if CATEGORIES[name].rim_bite else _bite
        return bite(rng, img, fg, img[~fg].mean(axis=0), extent)
    raise ValueError(f"unknown synthetic defect {kind!r}")


def _finish(rng: np.random.Generator, img: np.ndarray, grayscale: bool) -> np.ndarray:
    """Sensor noise, then 8-bit; grey categories are stored as 1-channel PNGs like MVTec's."""
    if grayscale:
        grey = img[..., 0] + rng.normal(0.0, 3.0, img.shape[:2])
        return np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    noisy = img + rng.normal(0.0, 3.0, img.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def render_image(category: str, seed: int, split: str, index: int, size: int, defect: str | None = None,
                 defect_px: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8, H×W or H×W×3) and its exact mask (uint8 {0,1}); pure function of the args.

    ``defect_px`` = (lo, hi): the defect's largest extent is drawn in [lo, hi] pixels, whatever
    ``size`` (small defects in large frames: docs/tiling.md); None: sizes relative to the image.
    """
    spec = CATEGORIES[category]
    rng = np.random.default_rng([seed, zlib.crc32(category.encode()), _SPLITS[split], index])
    img, fg = spec.render(rng, size)
    mask = np.zeros((size, size), dtype=bool)
    if defect is not None:
        extent = float(rng.uniform(*defect_px)) if defect_px is not None else None
        mask = _apply_defect(category, defect, rng, img, fg, extent)
        if not mask.any():  # cannot happen with the margins above; keep labels honest anyway
            raise AssertionError(f"empty synthetic defect {category}/{defect}/{index}")
    return _finish(rng, img, spec.grayscale), mask.astype(np.uint8)


def make_synthetic_mvtec(root: str | os.PathLike[str], categories: Sequence[str] = DEFAULT_CATEGORIES,
                         n_train: int = 30, n_test_good: int = 10, n_test_defect: int = 10,
                         size: int = 128, seed: int = 0, defect_px: Sequence[float] | None = None) -> Path:
    """Write the generated dataset under ``root`` and return ``root``.

    ``n_test_defect`` is per category, spread round-robin over the category's defect types.
    ``defect_px`` = (lo, hi): defects of lo to hi pixels across whatever ``size`` (e.g. 1024 px
    frames with 4-16 px defects: the high-resolution benchmark of docs/tiling.md); None: defect
    sizes relative to the image, as before.
    Calling again with the same arguments is a no-op (a hidden marker records them); a
    category folder made with other arguments is regenerated; a non-empty folder that was
    not generated here is never touched (DataError).
    """
    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise DataError(f"synthetic category {unknown[0]!r} unknown — choose from {', '.join(CATEGORIES)}")
    if size < 32 or n_train < 1 or n_test_good < 0 or n_test_defect < 0:
        raise DataError("synthetic data needs size ≥ 32, n_train ≥ 1 and non-negative test counts")
    if defect_px is not None and (len(defect_px) != 2 or not 1 <= defect_px[0] <= defect_px[1] <= size / 4):
        raise DataError(f"synthetic defect_px {list(defect_px)} must be [lo, hi] pixels with 1 ≤ lo ≤ hi ≤ size / 4")
    out = Path(root).expanduser()
    for category in categories:
        params = {"category": category, "n_train": n_train, "n_test_good": n_test_good,
                  "n_test_defect": n_test_defect, "size": size, "seed": seed, "version": 1}
        if defect_px is not None:  # only then: the markers of earlier folders stay valid
            params["defect_px"] = [float(v) for v in defect_px]
        cat_dir = out / category
        marker = cat_dir / _MARKER
        if marker.is_file():
            if json.loads(marker.read_text()) == params:
                log.debug("%s: synthetic data up to date", cat_dir)
                continue
            shutil.rmtree(cat_dir)
        elif cat_dir.exists() and any(cat_dir.iterdir()):
            raise DataError(f"{cat_dir}: folder exists and was not generated by make_synthetic_mvtec — "
                            "choose another root or remove it")
        _write_category(out, category, params)
        marker.write_text(json.dumps(params, sort_keys=True))
    log.info("synthetic MVTec-layout data (%s) at %s", ", ".join(categories), out)
    return out


def _write_category(out: Path, category: str, p: dict) -> None:
    cat_dir = out / category
    size, seed = p["size"], p["seed"]
    defect_px = tuple(p["defect_px"]) if "defect_px" in p else None
    for i in range(p["n_train"]):
        save_png(cat_dir / "train" / "good" / f"{i:03d}.png", render_image(category, seed, "train", i, size)[0])
    for i in range(p["n_test_good"]):
        save_png(cat_dir / "test" / "good" / f"{i:03d}.png", render_image(category, seed, "test_good", i, size)[0])
    defects = CATEGORIES[category].defects
    counters = dict.fromkeys(defects, 0)
    for i in range(p["n_test_defect"]):
        kind = defects[i % len(defects)]
        image, mask = render_image(category, seed, "test_defect", i, size, defect=kind, defect_px=defect_px)
        n = counters[kind]
        counters[kind] += 1
        save_png(cat_dir / "test" / kind / f"{n:03d}.png", image)
        save_png(cat_dir / "ground_truth" / kind / f"{n:03d}_mask.png", mask * 255)
