"""ILM (Sec. 3.2): NSA-style synthetic anomalies, our own implementation.

NSA (Natural Synthetic Anomalies, Schlüter et al., ECCV 2022) cuts rectangular patches
out of a normal image and pastes them elsewhere. The patch content is normal, only its
position is wrong, so the student must use the image context to tell what belongs
where (the paper's "semantically plausible" anomalies).

Two switches separate what the paper says from what its code runs (docs/ilm.md):

- ``source``: ``None`` cuts the patch from the image itself (the official code's
  ``same=True``); an array cuts it from another training image (the paper's text).
- ``blend``: ``"swap"`` pastes the pixels as they are (the code's ``mode='swap'``);
  ``"poisson"`` clones them seamlessly with OpenCV's Poisson editing (the paper's text,
  NSA's own setting).

Randomness comes only from the ``numpy.random.Generator`` passed in, so a synthetic
image is a pure function of (image, source, preset, generator state, blend). Patch
positions never depend on the blend, so the same seed gives the same patches under
``swap`` and ``poisson``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from mrkd_core.errors import ConfigError
from mrkd_core.ilm.presets import ILMPreset

log = logging.getLogger(__name__)

BLENDS = ("swap", "poisson")

# OpenCV's seamlessClone raises or changes nothing when the mask's bounding box is
# under 6 px on a side (measured on OpenCV 5.0: sides 1, 3, 4 raise, 2 and 5 are
# no-ops); such patches are pasted plainly instead.
_MIN_CLONE_SIDE = 6
# Margin added around the image before cloning, so a patch touching the image border
# never asks OpenCV for a region outside the image (several OpenCV versions assert on
# that). The margin is never inside a clone region, so it does not change the result.
_CLONE_PAD = 2


@dataclass(frozen=True)
class _Patch:
    """One placed patch: cut at (sy, sx) from the source, pasted at (dy, dx), ph × pw."""

    sy: int
    sx: int
    dy: int
    dx: int
    ph: int
    pw: int


# --------------------------------------------------------------------------- object mask
def _median_ksize(height: int, width: int) -> int:
    """NSA's 7 × 7 median at 256 px, scaled with the image so small images are not eroded."""
    return max(3, 2 * int(3 * min(height, width) / 256 + 0.5) + 1)


def object_mask(image: np.ndarray, preset: ILMPreset) -> np.ndarray | None:
    """Where the object is: |channel mean − background| > threshold, median-cleaned.

    Returns a bool H×W array, or None for presets without a background (every pixel is
    eligible). The median filter removes the speckle a hard threshold leaves on noisy
    backgrounds, as NSA does.
    """
    if preset.background is None:
        return None
    # |mean − b| > t  ⇔  sum < 3(b − t) or sum > 3(b + t): an int16 channel sum is ~15x
    # faster than a float mean over the last axis.
    total = image[..., 0].astype(np.int16)
    total += image[..., 1]
    total += image[..., 2]
    b, t = float(preset.background), float(preset.background_threshold)
    raw = ((total < 3.0 * (b - t)) | (total > 3.0 * (b + t))).view(np.uint8)
    # The median of a 0/1 image is a majority vote: a box sum over k×k (odd, so no ties)
    # compared with half gives exactly cv2.medianBlur's result (same replicated border)
    # at a twentieth of its cost.
    k = _median_ksize(*raw.shape)
    votes = cv2.boxFilter(raw, cv2.CV_16U, (k, k), normalize=False, borderType=cv2.BORDER_REPLICATE)
    return votes > (k * k) // 2


def _window_sums(integral: np.ndarray, y0: np.ndarray, x0: np.ndarray, y1: np.ndarray, x1: np.ndarray) -> np.ndarray:
    """Object pixels in the windows [y0, y1) × [x0, x1), all at once (corners as arrays or ints)."""
    return integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]


# --------------------------------------------------------------------------- placement
def _half_width(rng: np.random.Generator, n: int, bounds: tuple[float, float], preset: ILMPreset) -> tuple[int, int]:
    """(lower bound, half-width) along an axis of length n, in pixels.

    NSA's sampler: (offset + Gamma(shape, scale)) × side, clipped to the category's bounds
    (rounded to pixels, as NSA does). Both are capped at (n − 3) // 2, the largest half-width
    NSA's destination rule can place (only bounds near the allowed 0.5 reach it; NSA itself
    would raise there).
    """
    cap = max((n - 3) // 2, 1)
    lo, hi = (int(np.round(b * n)) for b in bounds)
    width = int(np.clip((preset.gamma_offset + rng.gamma(preset.gamma_shape, preset.gamma_scale)) * n, lo, hi))
    return min(lo, cap), min(max(width, 1), cap)


def _place(
    rng: np.random.Generator,
    preset: ILMPreset,
    shape: tuple[int, int],
    same: bool,
    src_obj: np.ndarray | None,
    dst_obj: np.ndarray | None,
    src_int: np.ndarray | None,
    dst_int: np.ndarray | None,
) -> _Patch | None:
    """Choose one patch (size, source and destination corners), or None after max_tries.

    Candidates are drawn ``max_tries`` at a time and the first valid one is taken: the
    same as NSA's loop of single tries (first success of i.i.d. draws), vectorised, with
    a fixed number of draws so the generator's state does not depend on the image.
    """
    height, width = shape
    (bh, bw) = preset.width_bounds_pct
    lo_h, hh = _half_width(rng, height, bh, preset)
    lo_w, hw = _half_width(rng, width, bw, preset)
    if lo_h >= height - lo_h or lo_w >= width - lo_w:
        return None
    n = preset.max_tries

    # NSA: the source window's centre is uniform in [lo, side − lo) and the window, centre ±
    # half-width, is clipped to the image, so windows near the border come out smaller.
    cys = rng.integers(lo_h, height - lo_h, size=n)
    cxs = rng.integers(lo_w, width - lo_w, size=n)
    y0s, y1s = np.maximum(cys - hh, 0), np.minimum(cys + hh, height)
    x0s, x1s = np.maximum(cxs - hw, 0), np.minimum(cxs + hw, width)
    if src_int is not None:
        counts = _window_sums(src_int, y0s, x0s, y1s, x1s)
        areas = (y1s - y0s) * (x1s - x0s)
        ok = np.flatnonzero((counts > 0) & (counts >= preset.min_object_pct * areas))
        if ok.size == 0:
            log.debug("ILM %s: no source patch of half-size %dx%d with >= %.0f%% object in %d tries",
                      preset.name, hh, hw, 100 * preset.min_object_pct, n)
            return None
        first = int(ok[0])
    else:
        first = 0
    sy, sx = int(y0s[first]), int(x0s[first])
    ph, pw = int(y1s[first]) - sy, int(x1s[first]) - sx

    if preset.shift:
        # NSA: the patch's centre is uniform in [h // 2 + 1, side − h // 2 − 1), the patch at centre − h // 2.
        if ph // 2 + 1 >= height - ph // 2 - 1 or pw // 2 + 1 >= width - pw // 2 - 1:
            log.debug("ILM %s: no shifted position for a %dx%d patch", preset.name, ph, pw)
            return None
        dys = rng.integers(ph // 2 + 1, height - ph // 2 - 1, size=n) - ph // 2
        dxs = rng.integers(pw // 2 + 1, width - pw // 2 - 1, size=n) - pw // 2
        valid = (dys != sy) | (dxs != sx) if same else np.ones(n, dtype=bool)  # a zero shift is a no-op
    else:
        dys, dxs, valid = np.array([sy]), np.array([sx]), np.ones(1, dtype=bool)

    if dst_obj is None or dst_int is None or src_obj is None:
        ok = np.flatnonzero(valid)
        if ok.size == 0:
            log.debug("ILM %s: no shifted position for a %dx%d patch", preset.name, ph, pw)
            return None
        return _Patch(sy, sx, int(dys[ok[0]]), int(dxs[ok[0]]), ph, pw)

    src_patch_obj = src_obj[sy : sy + ph, sx : sx + pw]
    need = max(1.0, preset.min_overlap_pct * float(np.count_nonzero(src_patch_obj)))
    # The destination window's object count bounds the overlap from above: a cheap filter
    # before the exact overlap, which is computed only for the survivors, in draw order.
    valid &= _window_sums(dst_int, dys, dxs, dys + ph, dxs + pw) >= need
    for j in np.flatnonzero(valid):
        dy, dx = int(dys[j]), int(dxs[j])
        if np.count_nonzero(src_patch_obj & dst_obj[dy : dy + ph, dx : dx + pw]) >= need:
            return _Patch(sy, sx, dy, dx, ph, pw)
    log.debug("ILM %s: no destination for a %dx%d patch overlapping the object by >= %.0f%% in %d tries",
              preset.name, ph, pw, 100 * preset.min_overlap_pct, len(dys))
    return None


# --------------------------------------------------------------------------- blending
def _swap(out: np.ndarray, mask: np.ndarray, src_img: np.ndarray, p: _Patch,
          src_obj: np.ndarray | None, dst_obj: np.ndarray | None) -> None:
    """Plain paste (the official code's mode='swap'), in place.

    On objects only pixels that are object in the source or at the destination change,
    as in NSA: background pasted onto background would change nothing visible anyway.
    """
    region = out[p.dy : p.dy + p.ph, p.dx : p.dx + p.pw]
    patch = src_img[p.sy : p.sy + p.ph, p.sx : p.sx + p.pw]
    if src_obj is None or dst_obj is None:
        region[...] = patch
        mask[p.dy : p.dy + p.ph, p.dx : p.dx + p.pw] = True
        return
    paste = src_obj[p.sy : p.sy + p.ph, p.sx : p.sx + p.pw] | dst_obj[p.dy : p.dy + p.ph, p.dx : p.dx + p.pw]
    region[paste] = patch[paste]
    mask[p.dy : p.dy + p.ph, p.dx : p.dx + p.pw] |= paste


def _poisson(out: np.ndarray, mask: np.ndarray, src_img: np.ndarray, patches: Sequence[_Patch],
             src_obj: np.ndarray | None, dst_obj: np.ndarray | None, preset_name: str) -> np.ndarray:
    """Seamless cloning (cv2.NORMAL_CLONE) of every patch; returns the new image.

    The clone mask is the whole rectangle, as in NSA (its object-or-background mask
    covers the rectangle): Poisson editing keeps the source's gradients inside and the
    destination's values on the rectangle's edge, so the seam disappears. Only patches
    OpenCV cannot clone (too small, or an OpenCV error) are pasted plainly.
    """
    height, width = out.shape[:2]
    pad = _CLONE_PAD
    canvas = cv2.copyMakeBorder(out, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
    for p in patches:
        if min(p.ph, p.pw) < _MIN_CLONE_SIDE:
            log.debug("ILM %s: %dx%d patch is too small for seamlessClone; pasted plainly",
                      preset_name, p.ph, p.pw)
            _swap(canvas[pad : pad + height, pad : pad + width], mask, src_img, p, src_obj, dst_obj)
            continue
        patch = np.ascontiguousarray(src_img[p.sy : p.sy + p.ph, p.sx : p.sx + p.pw])
        clone_mask = np.full((p.ph, p.pw), 255, dtype=np.uint8)
        # OpenCV centres the mask's bounding box (here the whole patch) on `center`.
        center = (pad + p.dx + p.pw // 2, pad + p.dy + p.ph // 2)
        try:
            canvas = cv2.seamlessClone(patch, canvas, clone_mask, center, cv2.NORMAL_CLONE)
        except cv2.error as exc:
            log.debug("ILM %s: seamlessClone failed on a %dx%d patch (%s); pasted plainly",
                      preset_name, p.ph, p.pw, str(exc).strip().splitlines()[-1])
            _swap(canvas[pad : pad + height, pad : pad + width], mask, src_img, p, src_obj, dst_obj)
            continue
        mask[p.dy : p.dy + p.ph, p.dx : p.dx + p.pw] = True
    return np.ascontiguousarray(canvas[pad : pad + height, pad : pad + width])


# --------------------------------------------------------------------------- public API
def _check_image(array: object, what: str) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise TypeError(f"ILM: {what} must be a numpy array, got {type(array).__name__}")
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(
            f"ILM: {what} must be a uint8 H×W×3 array (grey images as 3 equal channels), "
            f"got {array.dtype} {array.shape}"
        )
    return array


def synthesize(
    image: np.ndarray,
    source: np.ndarray | None,
    preset: ILMPreset,
    rng: np.random.Generator,
    blend: str = "swap",
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic anomalous image x_a from a normal image x_n (Sec. 3.2, NSA).

    Args:
        image: x_n, uint8 H×W×3 (any size, square or not).
        source: None to cut patches from ``image`` itself (official code), or another
            training image of the same size (paper's text).
        preset: the category's settings (:func:`mrkd_core.ilm.get_preset`).
        rng: the only source of randomness.
        blend: ``"swap"`` (plain paste, official code) or ``"poisson"`` (seamless clone).

    Returns:
        ``(synthetic, mask)``: a new uint8 H×W×3 image and the bool H×W mask of the pixels
        the patches were written to (every changed pixel is in it). When no patch can be
        placed (e.g. an image with no object) the image comes back unchanged with an
        empty mask, logged at debug level: training then sees one normal pair, which is
        harmless, whereas looping until success could hang a data-loader worker.
    """
    _check_image(image, "image")
    if source is not None:
        _check_image(source, "source")
        if source.shape != image.shape:
            raise ValueError(f"ILM: source {source.shape} and image {image.shape} must have the same size")
    if blend not in BLENDS:
        raise ConfigError(f"ILM blend {blend!r}; choose one of {', '.join(BLENDS)}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"ILM: rng must be a numpy.random.Generator, got {type(rng).__name__}")
    same = source is None
    if same and not preset.shift:
        raise ConfigError(
            f"ILM preset '{preset.name}': shift=False with source=None would paste every patch onto itself; "
            "give another source image or keep shift=True"
        )

    src_img = image if source is None else source
    height, width = image.shape[:2]
    dst_obj = object_mask(image, preset)
    src_obj = dst_obj if same else object_mask(src_img, preset)
    dst_int = None if dst_obj is None else cv2.integral(dst_obj.view(np.uint8))
    src_int = dst_int if same else (None if src_obj is None else cv2.integral(src_obj.view(np.uint8)))

    patches: list[_Patch] = []
    for k in range(preset.num_patches):
        # NSA: the first patch always, each further one on a coin flip.
        if k > 0 and rng.random() >= preset.extra_patch_prob:
            continue
        placed = _place(rng, preset, (height, width), same, src_obj, dst_obj, src_int, dst_int)
        if placed is not None:
            patches.append(placed)

    out = image.copy()
    mask = np.zeros((height, width), dtype=bool)
    if not patches:
        log.debug("ILM %s: no patch could be placed on a %dx%d image; returned unchanged",
                  preset.name, height, width)
        return out, mask
    if blend == "swap":
        for p in patches:
            _swap(out, mask, src_img, p, src_obj, dst_obj)
        return out, mask
    return _poisson(out, mask, src_img, patches, src_obj, dst_obj, preset.name), mask


def ilm_pair(
    image: np.ndarray,
    preset: ILMPreset,
    rng: np.random.Generator,
    *,
    fraction: float,
    source: np.ndarray | None = None,
    source_pool: Sequence[np.ndarray] | None = None,
    blend: str = "swap",
) -> tuple[np.ndarray, np.ndarray]:
    """x_a for one training image: synthetic with probability α (``fraction``), else x_n.

    Table 6's α is the share of training images that receive synthetic anomalies; the
    draw comes first from ``rng`` so that, under a seed, which images are synthetic is
    reproducible. The patch source is ``source`` if given, else one image drawn from
    ``source_pool`` (an empty pool falls back to the image itself), else the image itself.
    Returns ``(synthetic, mask)`` as :func:`synthesize`; an unchanged image is a copy with
    an empty mask.
    """
    _check_image(image, "image")
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"ILM fraction α={fraction} must lie in [0, 1]")
    if source is not None and source_pool is not None:
        raise ValueError("ILM: give either source or source_pool, not both")
    if rng.random() >= fraction:
        return image.copy(), np.zeros(image.shape[:2], dtype=bool)
    if source_pool is not None:
        if len(source_pool) == 0:
            log.debug("ILM %s: empty source pool; cutting patches from the image itself", preset.name)
        else:
            source = source_pool[int(rng.integers(len(source_pool)))]
    return synthesize(image, source, preset, rng, blend)
