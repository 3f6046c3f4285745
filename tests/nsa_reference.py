"""A plain re-statement of NSA's published patch algorithm, as the official MRKD code runs it.

NSA: Schlüter et al., "Natural Synthetic Anomalies for Self-Supervised Anomaly Detection and
Localization", ECCV 2022 (``patch_ex`` of hmsch/natural-synthetic-anomalies). The MRKD code
calls it with ``same=True`` (patches cut from the image itself), ``mode='swap'`` (plain
paste), ``resize=False`` and the gamma sampler (shape 2, scale 0.05, offset 0.03). Written
here from the published description, one draw at a time, for clarity rather than speed:
it is the yardstick that ``mrkd_core/ilm/nsa.py`` (vectorised) is measured against
(tests/core/test_ilm.py, bench/bench_ilm_fidelity.py). Per patch:

1. Half-widths per axis: ``int(clip((0.03 + Gamma(2, 0.05)) · n, round(lo · n), round(hi · n)))``.
2. Source: a centre uniform in ``[round(lo · n), n − round(lo · n))`` per axis; the window
   centre ± half-width is clipped to the image, so windows near the border come out
   smaller. On objects, retried (200 tries) until its object share exceeds ``min_object_pct``.
3. Destination: a centre uniform in ``[h // 2 + 1, n − h // 2 − 1)`` for the (clipped) patch
   height h (likewise the width), the patch placed at ``centre − h // 2``. On objects,
   retried until more than ``min_overlap_pct`` of the patch's object pixels land on object.
4. Paste (swap): the whole rectangle, or on objects the pixels that are object at the
   source or at the destination.

The first patch is always made, each further one with probability ½, and the source is
always the original image, even after earlier patches. NSA's object mask uses a fixed 7 × 7
median; this re-statement reuses ``mrkd_core.ilm.nsa.object_mask`` (the same rule, with the
kernel scaled to the image size), so that only the placement is compared.
"""

from __future__ import annotations

import numpy as np

from mrkd_core.ilm import ILMPreset, object_mask

TRIES = 200


def _half_width(rng: np.random.Generator, n: int, bounds: tuple[float, float], preset: ILMPreset) -> tuple[int, int]:
    """(lo, half-width) along an axis of length n, as step 1."""
    lo, hi = round(bounds[0] * n), round(bounds[1] * n)
    drawn = (preset.gamma_offset + rng.gamma(preset.gamma_shape, preset.gamma_scale)) * n
    return lo, int(np.clip(drawn, lo, hi))


def _one_patch(out: np.ndarray, source: np.ndarray, obj: np.ndarray | None, preset: ILMPreset,
               rng: np.random.Generator) -> np.ndarray | None:
    """Paste one patch into ``out`` in place; the bool H×W mask of the written pixels, or None."""
    height, width = out.shape[:2]
    (bh, bw) = preset.width_bounds_pct
    lo_h, half_h = _half_width(rng, height, bh, preset)
    lo_w, half_w = _half_width(rng, width, bw, preset)
    for _ in range(TRIES):
        cy, cx = rng.integers(lo_h, height - lo_h), rng.integers(lo_w, width - lo_w)
        y0, y1 = max(cy - half_h, 0), min(cy + half_h, height)
        x0, x1 = max(cx - half_w, 0), min(cx + half_w, width)
        if obj is None or obj[y0:y1, x0:x1].mean() > preset.min_object_pct:
            break
    else:
        return None
    h, w = y1 - y0, x1 - x0
    patch_obj = None if obj is None else obj[y0:y1, x0:x1]
    for _ in range(TRIES):
        dy = rng.integers(h // 2 + 1, height - h // 2 - 1) - h // 2
        dx = rng.integers(w // 2 + 1, width - w // 2 - 1) - w // 2
        if patch_obj is None:
            break
        overlap = np.count_nonzero(patch_obj & obj[dy:dy + h, dx:dx + w])
        if overlap / np.count_nonzero(patch_obj) > preset.min_overlap_pct:
            break
    else:
        return None
    paste = np.ones((h, w), dtype=bool) if obj is None else patch_obj | obj[dy:dy + h, dx:dx + w]
    region = out[dy:dy + h, dx:dx + w]
    region[paste] = source[y0:y1, x0:x1][paste]
    written = np.zeros((height, width), dtype=bool)
    written[dy:dy + h, dx:dx + w] = paste
    return written


def nsa_reference(image: np.ndarray, preset: ILMPreset, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(synthetic image, bool mask of the written pixels) for a uint8 H×W×3 ``image``."""
    source = image.copy()  # the original, whatever earlier patches do to ``out``
    obj = object_mask(image, preset)
    out = image.copy()
    written = np.zeros(image.shape[:2], dtype=bool)
    for k in range(preset.num_patches):
        if k > 0 and rng.integers(2) == 0:
            continue
        patch = _one_patch(out, source, obj, preset, rng)
        if patch is not None:
            written |= patch
    return out, written
