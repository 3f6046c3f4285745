"""Time the metrics on MVTec-sized test sets against the straightforward implementations.

    .venv/bin/python bench/bench_metrics.py [--sizes 100 1000] [--image-size 256]

For every size it prints, per metric: our time and peak extra memory (tracemalloc, which
sees numpy's buffers), the reference it is compared with, the reference's time and the
ratio. References:

- au_pro: a loop over thresholds (FPR and per-region overlap at each distinct score), timed
  on a sample of thresholds and extrapolated to all of them; and the global argsort +
  cumsum of the MVTec AD evaluation code, measured.
- au_pro_per_image: the research-code loop (200 thresholds x skimage regionprops per
  image), timed on a few defective images and extrapolated to all of them.
- pixel_auroc: sklearn.metrics.roc_auc_score on the flattened arrays, measured.

The maps are smooth float32 fields (bilinear upsampling of 32x32 noise) with raised
scores inside rectangular and elliptic defects in 60% of the images: few ties, like
real anomaly maps.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrkd_core.metrics import au_pro, au_pro_per_image, compute_all, pixel_auroc  # noqa: E402


def make_set(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    maps = np.empty((n, size, size), np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for start in range(0, n, 50):  # chunks keep the float64 zoom buffer small
        stop = min(n, start + 50)
        coarse = rng.random((stop - start, 32, 32))
        maps[start:stop] = ndimage.zoom(coarse, (1, size / 32, size / 32), order=1)
    for i in range(n):
        if rng.random() < 0.4:
            continue
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.integers(0, size, 2)
            ry, rx = rng.integers(2, size // 8, 2)
            if rng.random() < 0.5:
                masks[i, max(0, cy - ry) : cy + ry, max(0, cx - rx) : cx + rx] = 1
            else:
                masks[i][((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = 1
    maps += 0.4 * masks * rng.random(maps.shape, dtype=np.float32)
    return maps, masks


def timed(fn: Callable[[], object], repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def peak_mb(fn: Callable[[], object]) -> float:
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def loop_au_pro_seconds(maps: np.ndarray, masks: np.ndarray, sample: int = 12) -> tuple[float, int]:
    """Seconds of a per-threshold loop over every distinct score, extrapolated from ``sample``."""
    labels, count = ndimage.label(masks, structure=np.array([np.zeros((3, 3)), np.ones((3, 3)), np.zeros((3, 3))]))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    normal = masks == 0
    n_normal = int(normal.sum())
    distinct = np.unique(maps)
    thresholds = distinct[np.linspace(0, distinct.size - 1, sample).astype(int)]
    t0 = time.perf_counter()
    for t in thresholds:
        above = maps >= t
        _fpr = np.count_nonzero(above & normal) / n_normal
        _pro = np.mean(np.bincount(labels[above], minlength=count + 1)[1:] / sizes)
    per_threshold = (time.perf_counter() - t0) / sample
    return per_threshold * distinct.size, distinct.size


def argsort_au_pro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    """The MVTec AD evaluation code's algorithm: global argsort, cumsums, trapezoid."""
    labels, count = ndimage.label(masks, structure=np.array([np.zeros((3, 3)), np.ones((3, 3)), np.zeros((3, 3))]))
    sizes = np.bincount(labels.ravel())
    pro_step = np.where(labels > 0, 1.0 / sizes[labels], 0.0).ravel()
    fp_step = (labels == 0).ravel()
    scores = maps.ravel()
    order = np.argsort(scores)[::-1]
    scores = scores[order]
    fpr = np.cumsum(fp_step[order], dtype=np.float64) / fp_step.sum()
    pro = np.cumsum(pro_step[order]) / count
    keep = np.append(np.diff(scores) != 0, True)
    x = np.concatenate([[0.0], fpr[keep], [1.0]])
    y = np.concatenate([[0.0], pro[keep], [1.0]])
    i = int(np.searchsorted(x, limit, side="right"))
    y_limit = y[i - 1] + (y[i] - y[i - 1]) * (limit - x[i - 1]) / (x[i] - x[i - 1])
    area = np.sum(0.5 * (y[1:i] + y[: i - 1]) * np.diff(x[:i])) + 0.5 * (y[i - 1] + y_limit) * (limit - x[i - 1])
    return float(area / limit)


def research_loop_seconds(maps: np.ndarray, masks: np.ndarray, sample: int = 2) -> tuple[float, int]:
    """Seconds of the research-code loop over all defective images, extrapolated."""
    from skimage import measure

    defective = np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1))
    t0 = time.perf_counter()
    for i in defective[:sample]:
        amap, mask = maps[i].astype(np.float64), masks[i].astype(int)
        lo, hi = amap.min(), amap.max()
        for th in np.arange(lo, hi, (hi - lo) / 200):
            binary = amap > th
            for region in measure.regionprops(measure.label(mask)):
                binary[region.coords[:, 0], region.coords[:, 1]].sum()
            np.logical_and(mask == 0, binary).sum()
    return (time.perf_counter() - t0) / sample * defective.size, defective.size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--image-size", type=int, default=256)
    args = parser.parse_args()

    rows: list[tuple[str, int, float, float, str, float, bool]] = []
    for n in args.sizes:
        maps, masks = make_set(n, args.image_size)
        repeat = 3 if n <= 200 else 1
        scores = maps.reshape(n, -1).max(axis=1)
        labels = masks.reshape(n, -1).max(axis=1)

        ours = timed(lambda: au_pro(maps, masks), repeat)
        loop_s, n_thresholds = loop_au_pro_seconds(maps, masks)
        rows.append(("au_pro", n, ours, peak_mb(lambda: au_pro(maps, masks)),
                     f"threshold loop x {n_thresholds:,}", loop_s, True))
        value, reference = au_pro(maps, masks), argsort_au_pro(maps, masks)
        assert abs(value - reference) < 1e-6, (value, reference)
        rows.append(("au_pro", n, ours, float("nan"), "global argsort + cumsum",
                     timed(lambda: argsort_au_pro(maps, masks)), False))

        ours = timed(lambda: au_pro_per_image(maps, masks), repeat)
        loop_s, n_defective = research_loop_seconds(maps, masks)
        rows.append(("au_pro_per_image", n, ours, peak_mb(lambda: au_pro_per_image(maps, masks)),
                     f"research loop x {n_defective} images", loop_s, True))

        from sklearn.metrics import roc_auc_score

        ours = timed(lambda: pixel_auroc(maps, masks), repeat)
        ref_s = timed(lambda: roc_auc_score(masks.ravel(), maps.ravel()))
        rows.append(("pixel_auroc", n, ours, peak_mb(lambda: pixel_auroc(maps, masks)),
                     "sklearn roc_auc_score", ref_s, False))

        ours = timed(lambda: compute_all(scores, labels, maps, masks), repeat)
        rows.append(("compute_all (6 metrics)", n, ours, peak_mb(lambda: compute_all(scores, labels, maps, masks)),
                     "-", float("nan"), False))
        del maps, masks

    print(f"\n{'metric':<24} {'maps':>5} {'ours s':>8} {'peak MB':>8}  {'reference':<32} {'ref s':>10} {'ratio':>9}")
    for metric, n, ours, mb, ref, ref_s, extrapolated in rows:
        ref_txt = f"{ref_s:,.1f}{'*' if extrapolated else ''}" if ref_s == ref_s else "-"
        ratio = f"{ref_s / ours:,.0f}x" if ref_s == ref_s else "-"
        mb_txt = f"{mb:,.0f}" if mb == mb else ""
        print(f"{metric:<24} {n:>5} {ours:>8.3f} {mb_txt:>8}  {ref:<32} {ref_txt:>10} {ratio:>9}")
    print(f"\n* extrapolated from a sample. {args.image_size}x{args.image_size} float32 maps; "
          f"peak MB = extra memory during the call (inputs excluded).")


if __name__ == "__main__":
    main()
