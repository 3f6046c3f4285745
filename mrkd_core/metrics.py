"""Detection and localisation metrics of the paper (Sec. 4.1), as pure functions on numpy arrays.

The paper reports image AU-ROC, pixel AU-ROC and AU-PRO (FPR limit 0.3); F1-max is
added because anomalib reports it. Two AU-PRO conventions are computed because they
differ by several points and both appear in the literature (see ``docs/metrics.md``):

- ``au_pro``: the official MVTec AD definition (Bergmann et al., IJCV 2021, and the
  evaluation code shipped with the dataset): one PRO curve over the whole test set,
  every distinct score a threshold, exact integration up to the FPR limit.
- ``au_pro_per_image``: the convention of the RD4AD / MRKD research code, whose numbers
  the paper's tables report: a 200-step threshold grid, one curve per defective image,
  the FPR axis rescaled to [0, 1] after truncation, then the mean over images.

The newer benchmarks add their own localisation metrics (``PROTOCOL_METRICS``, computed
by the datasets' evaluation protocols in ``mrkd_core.data``): :func:`au_spro`, the
saturated PRO of MVTec LOCO AD (Bergmann et al., IJCV 2022, and the evaluation code shipped
with the dataset), and :func:`seg_f1`, the thresholded segmentation F1 of MVTec AD 2
(Heckler-Kram et al., arXiv:2503.21622), at a threshold from defect-free images
(:func:`normal_threshold`). Both are exact: every distinct score is a threshold.

Every metric is exact (ties included) and vectorised: sorted scores, searchsorted
counts and cumulative sums replace the loop over thresholds of the reference code (for
``au_pro`` only the top ``fpr_limit`` share of the normal scores is sorted), so a whole
MVTec category is scored in well under a second. All accumulation is in float64
(float32 maps are sorted as float32, which orders them exactly as float64 would).

Undefined metrics (one class only, no defect region, no normal pixel...) are returned
as NaN with a :class:`MetricWarning` saying why; malformed input raises ``ValueError``
naming the argument. A test set without pixel ground truth (ELPV, a folder without
``ground_truth/``) is not an undefined case but an absent one: ``compute_all`` with
``masks=None`` computes the image metrics only, and :func:`absent_metrics` names the
pixel metrics with the reason, for the results to report them as absent.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_METRICS",
    "METRIC_NAMES",
    "MetricWarning",
    "NO_PIXEL_GROUND_TRUTH",
    "PIXEL_METRICS",
    "PROTOCOL_METRICS",
    "SaturatedRegion",
    "absent_metrics",
    "au_pro",
    "au_pro_per_image",
    "au_spro",
    "compute_all",
    "f1_max_image",
    "f1_max_pixel",
    "image_auroc",
    "normal_threshold",
    "pixel_auroc",
    "saturation_area",
    "seg_f1",
]

METRIC_NAMES = ("image_auroc", "pixel_auroc", "au_pro", "au_pro_per_image", "f1_max_image", "f1_max_pixel")
IMAGE_METRICS = ("image_auroc", "f1_max_image")
#: The metrics that need a defect mask per defective image.
PIXEL_METRICS = ("pixel_auroc", "au_pro", "au_pro_per_image", "f1_max_pixel")
NO_PIXEL_GROUND_TRUTH = "no pixel ground truth: the defective test images have image labels only, no masks"
#: The metrics of the newer benchmarks' protocols, computed only for their datasets (null elsewhere):
#: MVTec AD 2 (AU-PRO up to FPR 0.05, segmentation F1 and the threshold it used, in map units) and
#: MVTec LOCO AD (image AU-ROC and AU-sPRO up to FPR 0.05 per anomaly type, and their means).
PROTOCOL_METRICS = ("au_pro_005", "seg_f1", "seg_threshold", "image_auroc_logical", "image_auroc_structural",
                    "image_auroc_mean_types", "au_spro_logical", "au_spro_structural", "au_spro_mean_types")

# 8-connected regions inside each image and none across images: labelling the (N, H, W)
# stack with this structure equals labelling every mask alone with a 3x3 of ones, as the
# MVTec AD evaluation code does (and as skimage.measure.label does by default in 2-D).
_REGION_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_REGION_STRUCTURE[1] = True


class MetricWarning(RuntimeWarning):
    """A metric is undefined for the given input and was returned as NaN."""


def _undefined(metric: str, reason: str) -> float:
    warnings.warn(f"{metric} is undefined: {reason}; returning NaN", MetricWarning, stacklevel=3)
    return float("nan")


# --------------------------------------------------------------------------- validation


def _check_finite(values: np.ndarray, name: str) -> None:
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise ValueError(f"{name} contains NaN or infinite values; every score must be a finite number")


def _as_scores(scores: npt.ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(scores)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of per-image scores, got shape {arr.shape}")
    return _as_numbers(arr, name)


def _as_binary(values: npt.ArrayLike, name: str, shape: tuple[int, ...], like: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.shape != shape:
        raise ValueError(f"{name} has shape {arr.shape} but {like} has shape {shape}; they must match")
    if arr.dtype == np.bool_:
        return arr
    if arr.dtype.kind in "iu":
        ok = arr.size == 0 or (arr.min() >= 0 and arr.max() <= 1)
    elif arr.dtype.kind == "f":
        ok = bool(np.all((arr == 0) | (arr == 1)))
    else:
        ok = False
    if not ok:
        raise ValueError(f"{name} must contain only 0 and 1 (or booleans); binarise it first (e.g. {name} > 0.5)")
    return arr.astype(bool)


def _as_maps(maps: npt.ArrayLike, name: str = "maps") -> np.ndarray:
    arr = np.asarray(maps)
    if arr.ndim != 3:
        raise ValueError(f"{name} must have shape (N, H, W), got shape {arr.shape}")
    return _as_numbers(arr, name)


def _as_numbers(arr: np.ndarray, name: str) -> np.ndarray:
    """A non-empty, finite numeric array as float32 or float64 (ValueError naming ``name`` otherwise)."""
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold numbers, got dtype {arr.dtype}")
    # float32 stays float32 (sorted as is: exact, and twice as fast); the rest becomes float64.
    arr = arr if arr.dtype in (np.float32, np.float64) else arr.astype(np.float64)
    _check_finite(arr, name)
    return arr


def _check_fpr_limit(fpr_limit: float) -> float:
    limit = float(fpr_limit)
    if not 0.0 < limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    return limit


# --------------------------------------------------------------------------- shared pieces


@dataclass(frozen=True)
class _Split:
    """Scores of the negative and positive class, each sorted ascending, in float64."""

    negative: np.ndarray
    positive: np.ndarray


def _sorted64(values: np.ndarray) -> np.ndarray:
    # Sorting in the input dtype first: float32 -> float64 is exact and monotone.
    values.sort()
    return values.astype(np.float64, copy=False)


def _split(scores: np.ndarray, positive: np.ndarray) -> _Split:
    return _Split(negative=_sorted64(scores[~positive]), positive=_sorted64(scores[positive]))


def _auroc(split: _Split) -> float:
    """Mann-Whitney U / (n_neg n_pos) with ties counted 1/2 — identical to the trapezoidal
    ROC AUC of sklearn. Counted in integers (2U), so it is exact until the final division."""
    neg, pos = split.negative, split.positive
    below = np.searchsorted(neg, pos, side="left")
    below_or_tied = np.searchsorted(neg, pos, side="right")
    twice_u = int(below.sum(dtype=np.int64)) + int(below_or_tied.sum(dtype=np.int64))
    return twice_u / (2 * neg.size * pos.size)


def _f1_max_at(split: _Split) -> tuple[float, float]:
    """(max over thresholds t of 2 TP / (2 TP + FP + FN), the smallest t reaching it), with
    'score >= t' predicted positive.

    Only positive scores need to be tried: lowering the threshold past negatives alone
    never raises F1. anomalib's F1Max adds 1e-10 to the denominator; this does not.
    """
    neg, pos = split.negative, split.positive
    first = np.flatnonzero(np.r_[True, np.diff(pos) != 0])  # first index of each distinct score
    tp = pos.size - first
    fp = neg.size - np.searchsorted(neg, pos[first], side="left")
    f1 = 2.0 * tp / (tp + fp + pos.size)
    best = int(np.argmax(f1))
    return float(f1[best]), float(pos[first[best]])


def _f1_max(split: _Split) -> float:
    return _f1_max_at(split)[0]


# What a positive / negative is called in warnings, per kind of metric.
_CLASSES = {"image": ("defective image (label 1)", "good image (label 0)"),
            "pixel": ("anomalous pixel (mask 1)", "normal pixel (mask 0)")}


def _auroc_or_nan(split: _Split, metric: str, unit: str) -> float:
    positive, negative = _CLASSES[unit]
    if split.positive.size == 0:
        return _undefined(metric, f"there is no {positive}")
    if split.negative.size == 0:
        return _undefined(metric, f"there is no {negative}")
    return _auroc(split)


def _f1_or_nan(split: _Split, metric: str, unit: str) -> float:
    if split.positive.size == 0:
        return _undefined(metric, f"there is no {_CLASSES[unit][0]}")
    return _f1_max(split)


def _max_count_within(limit: float, n: int) -> int:
    """Largest k in [0, n] with k / n <= limit in float64 — the FPR values are k / n exactly."""
    k = min(n, math.floor(limit * n))
    while k < n and (k + 1) / n <= limit:
        k += 1
    while k > 0 and k / n > limit:
        k -= 1
    return k


@dataclass(frozen=True)
class _Regions:
    """Anomalous pixels sorted by score, with the weight each adds to PRO (1 / region size)."""

    scores: np.ndarray  # ascending, float64
    weights: np.ndarray  # 1 / size of the pixel's region, aligned with scores
    count: int  # number of regions over the whole set


def _regions(maps: np.ndarray, masks: np.ndarray) -> tuple[_Regions, np.ndarray]:
    """Ground-truth regions (8-connected components of every mask) and the label image."""
    labels, count = ndimage.label(masks, structure=_REGION_STRUCTURE)
    ids = labels[masks]
    sizes = np.bincount(ids)
    scores = maps[masks]
    order = np.argsort(scores, kind="stable")
    inv_size = np.zeros(sizes.size)
    inv_size[1:] = 1.0 / sizes[1:]
    return _Regions(scores=scores[order].astype(np.float64), weights=inv_size[ids[order]], count=int(count)), labels


def _official_au_pro(normal: np.ndarray, normal_sorted: bool, regions: _Regions, limit: float) -> float:
    """Area under the MVTec AD PRO curve up to ``limit``, divided by ``limit``.

    The curve has one point per distinct score s: (FPR(>= s), PRO(>= s)), plus (0, 0) and
    (1, 1). Only segments where FPR grows carry area, and a tie group of normal pixels at
    score s is the segment from (FPR(> s), PRO(> s)) to (FPR(>= s), PRO(>= s)), so

        area = 1/n_normal * sum over normal pixels v of (PRO(> v) + PRO(>= v)) / 2
             = 1/(n_normal R) * sum over anomalous pixels a of w_a (#{v < a} + #{v <= a}) / 2,

    summed over the normal pixels of the complete segments below the limit, plus the
    segment that crosses the limit, cut by linear interpolation as the official
    ``trapezoid(..., x_max)`` does. Only those top ~limit * n_normal normal scores are
    sorted (after an O(n) partition), which is what makes it fast.
    """
    n = normal.size
    k_max = _max_count_within(limit, n)
    if k_max == n:  # the limit is 1: every normal pixel is below it, nothing to cut
        full = normal if normal_sorted else np.sort(normal)
        crossing = None
    else:
        # s* = score of the (k_max + 1)-th highest normal pixel: its tie group is the first
        # segment whose end lies beyond the limit.
        pos = n - 1 - k_max
        s_star = normal[pos] if normal_sorted else np.partition(normal, pos)[pos]
        if normal_sorted:
            full = normal[np.searchsorted(normal, s_star, side="right"):]
            k_after = n - int(np.searchsorted(normal, s_star, side="left"))
        else:
            full = np.sort(normal[normal > s_star])
            k_after = int(np.count_nonzero(normal >= s_star))
        crossing = (float(s_star), full.size, k_after)
    full = full.astype(np.float64, copy=False)
    count_sum = np.searchsorted(full, regions.scores, side="left") + np.searchsorted(full, regions.scores, side="right")
    area = float(np.dot(regions.weights, count_sum)) / (2.0 * n * regions.count)
    if crossing is not None:
        s_star, k_before, k_after = crossing
        x0, x1 = k_before / n, k_after / n
        if x0 < limit:  # the official code adds no correction when the limit is a curve point
            above = np.searchsorted(regions.scores, s_star, side="right")
            at_or_above = np.searchsorted(regions.scores, s_star, side="left")
            y0 = min(1.0, float(regions.weights[above:].sum()) / regions.count)
            y1 = min(1.0, float(regions.weights[at_or_above:].sum()) / regions.count)
            y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += 0.5 * (y0 + y_limit) * (limit - x0)
    return min(1.0, max(0.0, area / limit))


def _research_au_pro_one(
    amap: np.ndarray, mask: np.ndarray, region_ids: np.ndarray, limit: float, num_thresholds: int
) -> tuple[float, str | None]:
    """AU-PRO of one defective image as the RD4AD / MRKD ``compute_pro`` defines it.

    The threshold grid is ``np.arange(min, max, (max - min) / num_thresholds)`` (numpy's
    float steps, so sometimes one more point); a pixel is positive when ``map > th``.
    Counting, for every pixel, the thresholds below its score (one searchsorted) turns all
    thresholds' FP counts and region overlaps into two bincounts and reverse cumsums.
    """
    lo, hi = float(amap.min()), float(amap.max())
    if hi == lo:
        return float("nan"), "the anomaly map is constant (the threshold grid is empty)"
    normal = ~mask
    n_normal = int(np.count_nonzero(normal))
    if n_normal == 0:
        return float("nan"), "the mask covers the whole image (no normal pixel)"
    thresholds = np.arange(lo, hi, (hi - lo) / num_thresholds)
    slots = thresholds.size + 1
    above = np.searchsorted(thresholds, amap.astype(np.float64, copy=False), side="left")  # #{th < score}
    # FP(j) = #{normal pixels with more than j thresholds below them}; same for PRO, weighted.
    fp = np.cumsum(np.bincount(above[normal], minlength=slots)[::-1])[::-1][1:]
    _, region_of, size = np.unique(region_ids, return_inverse=True, return_counts=True)
    weights = 1.0 / (size.size * size[region_of])  # mean over regions of (covered / area)
    pro = np.cumsum(np.bincount(above[mask], weights=weights, minlength=slots)[::-1])[::-1][1:]
    fpr = fp / n_normal
    keep = fpr < limit  # a suffix of the grid: FPR never grows with the threshold
    if np.count_nonzero(keep) < 2:
        return float("nan"), f"fewer than 2 grid thresholds give FPR < {limit}"
    x, y = fpr[keep], pro[keep]
    if x.max() == 0:
        return float("nan"), f"every grid threshold with FPR < {limit} has FPR 0 (the rescaling divides by 0)"
    x = x / x.max()
    # sklearn.metrics.auc of a decreasing x: the trapezoid area taken positive.
    return float(np.sum((x[:-1] - x[1:]) * (y[:-1] + y[1:]) / 2.0)), None


# --------------------------------------------------------------------------- public API


def image_auroc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Image-level ROC AUC (ties count 1/2; equals ``sklearn.metrics.roc_auc_score``).

    ``scores``: (N,) anomaly scores (Eq. 6: the map maximum); ``labels``: (N,) 0 = good,
    1 = defective. NaN with a MetricWarning when only one class is present.
    """
    s = _as_scores(scores, "scores")
    y = _as_binary(labels, "labels", s.shape, "scores")
    return _auroc_or_nan(_split(s, y), "image_auroc", "image")


def pixel_auroc(maps: npt.ArrayLike, masks: npt.ArrayLike) -> float:
    """Pixel-level ROC AUC over all pixels of all images (equals ``roc_auc_score`` on the
    flattened arrays). ``maps``: (N, H, W) scores; ``masks``: (N, H, W) in {0, 1}."""
    m = _as_maps(maps)
    gt = _as_binary(masks, "masks", m.shape, "maps")
    return _auroc_or_nan(_split(m, gt), "pixel_auroc", "pixel")


def au_pro(maps: npt.ArrayLike, masks: npt.ArrayLike, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit``: the official MVTec AD definition.

    Regions are the 8-connected components of every mask; every distinct score is a
    threshold (ties form one point); FPR is pooled over the normal pixels of all images,
    defect-free ones included; PRO(t) is the mean over all regions of the fraction of the
    region with score >= t. The curve runs from (0, 0) to (1, 1) and is integrated with
    the trapezoid rule up to ``fpr_limit`` (interpolated there), then divided by it — so a
    constant map scores ``fpr_limit / 2`` and a perfect map 1.
    """
    limit = _check_fpr_limit(fpr_limit)
    m = _as_maps(maps)
    gt = _as_binary(masks, "masks", m.shape, "maps")
    return _au_pro_checked(m, gt, limit)[0]


def _au_pro_checked(
    m: np.ndarray, gt: np.ndarray, limit: float, normal_sorted: np.ndarray | None = None
) -> tuple[float, np.ndarray | None]:
    if not gt.any():
        return _undefined("au_pro", "masks contain no anomalous region"), None
    if gt.all():
        return _undefined("au_pro", "masks contain no normal pixel (FPR is 0/0)"), None
    regions, labels = _regions(m, gt)
    normal = normal_sorted if normal_sorted is not None else m[~gt]
    value = _official_au_pro(normal, normal_sorted is not None, regions, limit)
    log.debug("au_pro=%.6f over %d regions and %d normal pixels", value, regions.count, normal.size)
    return value, labels


def au_pro_per_image(
    maps: npt.ArrayLike, masks: npt.ArrayLike, fpr_limit: float = 0.3, num_thresholds: int = 200
) -> float:
    """AU-PRO as the RD4AD / MRKD research code computes it (the paper's reported numbers).

    For every image whose mask has a defect pixel (the research code's ``label != 0``):
    thresholds ``np.arange(min, max, (max - min) / num_thresholds)`` of that image's map,
    positive = ``map > th``; PRO = mean over the image's 8-connected regions of the
    covered fraction; FPR = false positives / normal pixels of that image; keep the grid
    points with FPR < ``fpr_limit``, divide their FPR by its maximum, take the trapezoid
    area (``sklearn.metrics.auc``). The result is the mean over those images. Defect-free
    images are not used. NaN (with a MetricWarning) when there is no defective image or
    when an image's value is undefined (the research code would crash: constant map, no
    normal pixel, fewer than 2 kept grid points, or all kept FPR 0).
    """
    limit = _check_fpr_limit(fpr_limit)
    if isinstance(num_thresholds, bool) or not isinstance(num_thresholds, (int, np.integer)) or num_thresholds < 1:
        raise ValueError(f"num_thresholds must be a positive integer, got {num_thresholds!r}")
    m = _as_maps(maps)
    gt = _as_binary(masks, "masks", m.shape, "maps")
    return _au_pro_per_image_checked(m, gt, limit, int(num_thresholds), None)


def _au_pro_per_image_checked(
    m: np.ndarray, gt: np.ndarray, limit: float, num_thresholds: int, labels: np.ndarray | None
) -> float:
    defective = np.flatnonzero(gt.reshape(gt.shape[0], -1).any(axis=1))
    if defective.size == 0:
        return _undefined("au_pro_per_image", "no image has an anomalous pixel in its mask")
    if labels is None:
        labels = ndimage.label(gt, structure=_REGION_STRUCTURE)[0]
    values = np.empty(defective.size)
    problems: list[str] = []
    for j, i in enumerate(defective):
        mask_i = gt[i].ravel()
        values[j], why = _research_au_pro_one(m[i].ravel(), mask_i, labels[i].ravel()[mask_i], limit, num_thresholds)
        if why is not None:
            problems.append(f"image {i}: {why}")
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        return _undefined("au_pro_per_image", f"{len(problems)} of {defective.size} defective images have no value ({shown})")
    return float(values.mean())


def f1_max_image(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Best image-level F1 over all thresholds (anomalib's F1Max, exact with ties)."""
    s = _as_scores(scores, "scores")
    y = _as_binary(labels, "labels", s.shape, "scores")
    return _f1_or_nan(_split(s, y), "f1_max_image", "image")


def f1_max_pixel(maps: npt.ArrayLike, masks: npt.ArrayLike) -> float:
    """Best pixel-level F1 over all thresholds, pooled over all pixels of all images."""
    m = _as_maps(maps)
    gt = _as_binary(masks, "masks", m.shape, "maps")
    return _f1_or_nan(_split(m, gt), "f1_max_pixel", "pixel")


def f1_max_threshold(scores: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[float, float]:
    """(best F1, threshold t reaching it) over all thresholds, 'score >= t' predicted positive.

    ``scores`` and ``labels`` of any equal shape (image scores, or maps and masks pooled
    over pixels). t is the smallest such positive score (anomalib's adaptive threshold
    picks the same F1). Needs at least one positive: otherwise a ValueError.
    """
    s = _as_scores(np.ravel(np.asarray(scores)), "scores")
    y = _as_binary(np.ravel(np.asarray(labels)), "labels", s.shape, "scores")
    split = _split(s, y)
    if split.positive.size == 0:
        raise ValueError("an F1-optimal threshold needs at least one positive (defective image or pixel)")
    return _f1_max_at(split)


def absent_metrics(has_pixel_ground_truth: bool) -> dict[str, str]:
    """Metric → why it is absent: the pixel metrics when there are no masks, else nothing."""
    return {} if has_pixel_ground_truth else {name: NO_PIXEL_GROUND_TRUTH for name in PIXEL_METRICS}


def compute_all(
    scores: npt.ArrayLike,
    labels: npt.ArrayLike,
    maps: npt.ArrayLike,
    masks: npt.ArrayLike | None,
    fpr_limit: float = 0.3,
) -> dict[str, float]:
    """All metrics of one evaluation, keyed as in the ``metrics`` table (``METRIC_NAMES``).

    Validates once and sorts the pixel scores once for all pixel metrics. ``scores`` and
    ``labels`` are per image, ``maps`` and ``masks`` (N, H, W) with the same N.
    ``masks=None``: the test set has no pixel ground truth; the pixel metrics
    (``PIXEL_METRICS``) are NaN without a warning, absent rather than undefined (see
    :func:`absent_metrics`).
    """
    limit = _check_fpr_limit(fpr_limit)
    s = _as_scores(scores, "scores")
    y = _as_binary(labels, "labels", s.shape, "scores")
    m = _as_maps(maps)
    if m.shape[0] != s.shape[0]:
        raise ValueError(f"maps holds {m.shape[0]} images but scores holds {s.shape[0]}; they must match")

    image = _split(s, y)
    result = {
        "image_auroc": _auroc_or_nan(image, "image_auroc", "image"),
        "f1_max_image": _f1_or_nan(image, "f1_max_image", "image"),
    }
    if masks is None:
        return {name: result.get(name, math.nan) for name in METRIC_NAMES}
    gt = _as_binary(masks, "masks", m.shape, "maps")
    pixels = _split(m, gt)
    result["pixel_auroc"] = _auroc_or_nan(pixels, "pixel_auroc", "pixel")
    result["f1_max_pixel"] = _f1_or_nan(pixels, "f1_max_pixel", "pixel")
    result["au_pro"], region_labels = _au_pro_checked(m, gt, limit, normal_sorted=pixels.negative)
    del pixels
    result["au_pro_per_image"] = _au_pro_per_image_checked(m, gt, limit, 200, region_labels)
    return {name: result[name] for name in METRIC_NAMES}


# --------------------------------------------------------------------------- newer benchmarks


@dataclass(frozen=True)
class SaturatedRegion:
    """One ground-truth defect of sPRO: its pixels in one image and its saturation area.

    ``image``: index into the maps; ``mask``: (H, W) bool, the defect's pixels (MVTec LOCO AD:
    one PNG of the image's ground-truth folder, a "channel"; channels may overlap);
    ``saturation``: the overlap, in pixels, at which the defect counts as wholly found
    (> 0; :func:`saturation_area` gives LOCO's rule).
    """

    image: int
    mask: np.ndarray
    saturation: float


def saturation_area(defect_area: int, threshold: float, relative: bool, area_scale: float = 1.0) -> float:
    """The saturation area of one defect by MVTec LOCO AD's ``defects_config.json`` rule, in pixels.

    As the dataset's evaluation code (``GroundTruthChannel.get_saturation_area``): a relative
    threshold t gives ``int(t * area)``, an absolute one ``min(t, area)``. ``area_scale``
    (pixels evaluated per pixel of the original image, < 1 when the maps are smaller) scales
    an absolute threshold, which counts original pixels; ``defect_area`` is at the evaluated
    size. At least 1 pixel: the official code would divide by zero for a relative threshold
    on a defect smaller than 1 / t pixels, which only happens after downscaling.
    """
    if defect_area <= 0:
        raise ValueError(f"defect_area must be positive, got {defect_area}")
    if relative:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"a relative saturation threshold must be in (0, 1], got {threshold}")
        return float(max(int(threshold * defect_area), 1))
    if threshold <= 0 or area_scale <= 0:
        raise ValueError(f"an absolute saturation threshold and area_scale must be positive, got {threshold}, "
                         f"{area_scale}")
    return float(max(min(threshold * area_scale, defect_area), 1.0))


def au_spro(maps: npt.ArrayLike, regions: list[SaturatedRegion], fpr_limit: float = 0.05) -> float:
    """Normalised area under the sPRO curve up to ``fpr_limit`` (MVTec LOCO AD; its headline limit 0.05).

    sPRO(t) = mean over all ``regions`` of min(#{region pixels with score >= t} / saturation, 1);
    FPR(t) = #{normal pixels with score >= t} / #{normal pixels}, normal = in no region of
    its image, pooled over all images (defect-free ones included). Every distinct score is a
    threshold; the curve runs from (0, 0) to (1, 1) and is integrated with the trapezoid rule
    up to ``fpr_limit`` (interpolated there), then divided by it, as the dataset's code does
    (``get_auc_for_max_fpr``). That code approximates the curve by refining a threshold grid
    until neighbouring points are 0.001 apart; this is the curve it converges to.

    Computed like :func:`au_pro`: sPRO is a sum over region pixels of increments (the r-th
    highest pixel of a region adds min(r/s, 1) - min((r-1)/s, 1)), so the same sorted-count
    integration applies. NaN with a MetricWarning without regions or without a normal pixel.
    """
    limit = _check_fpr_limit(fpr_limit)
    m = _as_maps(maps)
    union = np.zeros(m.shape, dtype=bool)
    scores: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    for k, region in enumerate(regions):
        mask = np.asarray(region.mask)
        if mask.dtype != np.bool_ or mask.shape != m.shape[1:]:
            raise ValueError(f"regions[{k}].mask must be a bool array of shape {m.shape[1:]}, "
                             f"got {mask.dtype} {mask.shape}")
        if not 0 <= region.image < m.shape[0]:
            raise ValueError(f"regions[{k}].image is {region.image}, outside the {m.shape[0]} maps")
        area = int(np.count_nonzero(mask))
        if area == 0 or not region.saturation > 0:
            raise ValueError(f"regions[{k}] must have at least one pixel and a positive saturation area, "
                             f"got {area} pixels and saturation {region.saturation}")
        union[region.image] |= mask
        inside = np.sort(m[region.image][mask].astype(np.float64))[::-1]
        rank = np.arange(1, area + 1, dtype=np.float64)
        weights.append(np.minimum(rank / region.saturation, 1.0) - np.minimum((rank - 1) / region.saturation, 1.0))
        scores.append(inside)
    if not regions:
        return _undefined("au_spro", "there is no ground-truth defect")
    normal = m[~union]
    if normal.size == 0:
        return _undefined("au_spro", "there is no normal pixel (FPR is 0/0)")
    flat_scores = np.concatenate(scores)
    order = np.argsort(flat_scores, kind="stable")
    pieces = _Regions(scores=flat_scores[order], weights=np.concatenate(weights)[order], count=len(regions))
    return _official_au_pro(normal, False, pieces, limit)


def seg_f1(maps: npt.ArrayLike, masks: npt.ArrayLike, threshold: float) -> float:
    """Segmentation F1 at one threshold: 2 TP / (2 TP + FP + FN), pixels pooled over all images.

    A pixel is predicted defective when its score is >= ``threshold`` (MVTec AD 2's SegF1 is
    this F1 of the binarised maps over its test set). NaN with a MetricWarning when there is
    neither a defect pixel nor a predicted one.
    """
    m = _as_maps(maps)
    gt = _as_binary(masks, "masks", m.shape, "maps")
    t = float(threshold)
    if not math.isfinite(t):
        raise ValueError(f"threshold must be a finite number, got {threshold}")
    predicted = m >= t
    tp = int(np.count_nonzero(predicted & gt))
    fp = int(np.count_nonzero(predicted)) - tp
    fn = int(np.count_nonzero(gt)) - tp
    if 2 * tp + fp + fn == 0:
        return _undefined("seg_f1", "there is no defect pixel and none is predicted")
    return 2.0 * tp / (2 * tp + fp + fn)


def normal_threshold(maps: npt.ArrayLike, k: float = 3.0) -> float:
    """mean + ``k`` · std of every pixel score of defect-free images (population std, float64).

    The threshold of :func:`seg_f1` when only defect-free images may choose it (MVTec AD 2's
    validation set); ``maps`` (N, H, W) of those images.
    """
    m = _as_maps(maps)
    if k < 0 or not math.isfinite(k):
        raise ValueError(f"k must be a finite number >= 0, got {k}")
    values = m.astype(np.float64, copy=False)
    return float(values.mean() + k * values.std())
