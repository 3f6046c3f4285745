"""Metrics: hand-computed curves, slow reference implementations, sklearn, properties, errors.

The references below are written the obvious way (a loop over thresholds) so that they
can be checked by reading; the library must agree with them to 1e-9.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage
from skimage import measure
from sklearn.metrics import auc, precision_recall_curve, roc_auc_score

from mrkd_core.metrics import (
    METRIC_NAMES,
    MetricWarning,
    au_pro,
    au_pro_per_image,
    compute_all,
    f1_max_image,
    f1_max_pixel,
    image_auroc,
    pixel_auroc,
)

# --------------------------------------------------------------------------- references


def reference_au_pro(maps: np.ndarray, masks: np.ndarray, limit: float) -> float:
    """MVTec AD AU-PRO by its definition: one curve point per distinct score."""
    regions = []
    for i, mask in enumerate(masks):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(i, labelled == r) for r in range(1, count + 1)]
    normal = maps[masks == 0]
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        xs.append(np.count_nonzero(normal >= t) / normal.size)
        ys.append(np.mean([np.mean(maps[i][region] >= t) for i, region in regions]))
    xs.append(1.0)
    ys.append(1.0)
    area = 0.0
    for x0, y0, x1, y1 in zip(xs[:-1], ys[:-1], xs[1:], ys[1:]):
        if x0 >= limit:
            break
        if x1 <= limit:
            area += 0.5 * (y0 + y1) * (x1 - x0)
        else:
            y_limit = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += 0.5 * (y0 + y_limit) * (limit - x0)
            break
    return area / limit


def reference_au_pro_per_image(maps: np.ndarray, masks: np.ndarray, limit: float, num_th: int) -> float:
    """The RD4AD/MRKD research-code convention, one image and one threshold at a time."""
    values = []
    for amap, mask in zip(maps.astype(np.float64), masks.astype(int)):
        if not mask.any():
            continue
        lo, hi = amap.min(), amap.max()
        fprs, pros = [], []
        for th in np.arange(lo, hi, (hi - lo) / num_th):
            binary = amap > th
            overlaps = [binary[r.coords[:, 0], r.coords[:, 1]].sum() / r.area for r in measure.regionprops(measure.label(mask))]
            pros.append(np.mean(overlaps))
            fprs.append(np.logical_and(mask == 0, binary).sum() / (mask == 0).sum())
        fprs, pros = np.array(fprs), np.array(pros)
        keep = fprs < limit
        values.append(auc(fprs[keep] / fprs[keep].max(), pros[keep]))
    return float(np.mean(values))


def reference_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels.ravel(), scores.ravel())
    with np.errstate(invalid="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return float(f1.max())


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def hand_case() -> tuple[np.ndarray, np.ndarray]:
    """Two 2x3 images. Region r1 (image 0, top row, 3 px) scores .9 .6 .3; region r2
    (image 1, 1 px) scores .7. Normal pixels (8): .8, .6 (ties with r1), six .1.

    Curve (FPR, PRO): (0,0) (0,1/6) (1/8,1/6) (1/8,2/3) (1/4,5/6) (1/4,1) (1,1).
    """
    maps = np.array([[[0.9, 0.6, 0.3], [0.8, 0.1, 0.1]], [[0.6, 0.1, 0.1], [0.1, 0.1, 0.7]]])
    masks = np.array([[[1, 1, 1], [0, 0, 0]], [[0, 0, 0], [0, 0, 1]]], dtype=np.uint8)
    return maps, masks


def random_set(seed: int, n: int = 6, size: int = 12, levels: int | None = 6) -> tuple[np.ndarray, np.ndarray]:
    """Maps with many ties (``levels`` distinct values) or none, blob masks, 2 good images."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(2, n):
        for _ in range(rng.integers(1, 4)):
            r, c = rng.integers(0, size - 2, 2)
            h, w = rng.integers(1, 4, 2)
            masks[i, r : r + h, c : c + w] = 1
        masks[i] |= (rng.random((size, size)) < 0.05).astype(np.uint8)
    raw = rng.random((n, size, size)) + 0.6 * masks
    maps = np.floor(raw * levels) / levels if levels else raw
    return maps, masks


# --------------------------------------------------------------------------- AU-PRO (official)


@pytest.mark.parametrize(
    "limit,expected",
    [
        (0.3, 79 / 144),  # (1/48 + 3/32 + 1/20) / 0.3: the last segment is flat at PRO 1
        (0.2, 179 / 480),  # the limit cuts the tie diagonal: PRO interpolated to 23/30
        (0.25, 11 / 24),  # the limit is a curve point: no interpolation
        (1.0, 83 / 96),  # the whole curve
    ],
)
def test_au_pro_hand_computed(hand_case, limit, expected):
    maps, masks = hand_case
    assert au_pro(maps, masks, fpr_limit=limit) == pytest.approx(expected, abs=1e-12)
    assert reference_au_pro(maps, masks, limit) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("levels", [4, 6, None])
def test_au_pro_matches_reference(seed, levels):
    maps, masks = random_set(seed, levels=levels)
    for limit in (0.05, 0.3, 0.77, 1.0):
        assert au_pro(maps, masks, limit) == pytest.approx(reference_au_pro(maps, masks, limit), abs=1e-9)


def test_au_pro_constant_and_perfect_maps(hand_case):
    _, masks = hand_case
    constant = np.full(masks.shape, 0.25)
    # one diagonal segment from (0,0) to (1,1): area 0.3^2/2, divided by 0.3
    assert au_pro(constant, masks) == pytest.approx(0.15, abs=1e-12)
    assert au_pro(constant, masks, fpr_limit=1.0) == pytest.approx(0.5, abs=1e-12)
    perfect = masks + 0.5 * np.random.default_rng(0).random(masks.shape)
    assert au_pro(perfect, masks) == pytest.approx(1.0, abs=1e-12)
    assert pixel_auroc(perfect, masks) == 1.0


def test_au_pro_counts_normal_pixels_of_defect_free_images(hand_case):
    maps, masks = hand_case
    # a good image whose pixels all score .85 adds 6 normal pixels above everything but .9
    good_map = np.full((1, 2, 3), 0.85)
    with_good = au_pro(np.concatenate([maps, good_map]), np.concatenate([masks, np.zeros((1, 2, 3), np.uint8)]))
    assert with_good != pytest.approx(au_pro(maps, masks), abs=1e-3)
    assert with_good == pytest.approx(
        reference_au_pro(np.concatenate([maps, good_map]), np.concatenate([masks, np.zeros((1, 2, 3), np.uint8)]), 0.3),
        abs=1e-12,
    )


def test_regions_are_8_connected_within_an_image_only():
    # two diagonal pixels: one region (8-connectivity) of size 2; the same pixel in the next
    # image is a separate region.
    masks = np.zeros((2, 3, 3), np.uint8)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[1, 1, 1] = 1
    maps = np.zeros((2, 3, 3))
    maps[0, 0, 0] = 1.0  # covers half of region 1 above every normal pixel
    # curve: (0,0) -> (0, 1/4) at t=1, then (1,1) at t=0 (diagonal); area to 0.3 =
    # 0.3 * (1/4 + (1/4 + 0.3 * 3/4)) / 2 -> divided by 0.3
    assert au_pro(maps, masks) == pytest.approx((0.25 + 0.25 + 0.225) / 2, abs=1e-12)


# --------------------------------------------------------------------------- AU-PRO (research code)


@pytest.fixture
def research_case() -> tuple[np.ndarray, np.ndarray]:
    """3x4 image, grid of 4 thresholds 0, 2.25, 4.5, 6.75. r1 = {9, 4}, r2 = {6}; normal:
    8, 5, 3 and six 0. Points with FPR < 0.3: (2/9, 3/4) at 4.5 and (1/9, 1/4) at 6.75;
    FPR rescaled by 2/9 -> (1, 3/4), (1/2, 1/4): area 1/2 * (3/4 + 1/4) / 2 = 1/4."""
    maps = np.array([[[9, 4, 0, 0], [0, 0, 0, 6], [8, 5, 3, 0]]], dtype=np.float64)
    masks = np.array([[[1, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]]], dtype=np.uint8)
    return maps, masks


def test_au_pro_per_image_hand_computed(research_case):
    maps, masks = research_case
    assert au_pro_per_image(maps, masks, num_thresholds=4) == pytest.approx(0.25, abs=1e-12)
    assert reference_au_pro_per_image(maps, masks, 0.3, 4) == pytest.approx(0.25, abs=1e-12)
    # a defect-free image is ignored: thresholds and FPR are per image
    good = np.random.default_rng(1).random((1, 3, 4)) * 9
    both = au_pro_per_image(np.concatenate([maps, good]), np.concatenate([masks, np.zeros_like(masks)]), num_thresholds=4)
    assert both == pytest.approx(0.25, abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("levels,num_th", [(None, 200), (6, 200), (None, 7), (5, 13)])
def test_au_pro_per_image_matches_research_loop(seed, levels, num_th):
    maps, masks = random_set(seed, n=4, size=10, levels=levels)
    masks[:2] = 0
    masks[2:, 0, :] = 1  # every defective image keeps some normal pixels and some regions
    for limit in (0.3, 0.6):
        expected = reference_au_pro_per_image(maps, masks, limit, num_th)
        assert au_pro_per_image(maps, masks, limit, num_th) == pytest.approx(expected, abs=1e-9)


def test_au_pro_per_image_differs_from_official_definition():
    maps, masks = random_set(3, levels=None)
    assert abs(au_pro_per_image(maps, masks) - au_pro(maps, masks)) > 1e-3


# --------------------------------------------------------------------------- AU-ROC and F1


@pytest.mark.parametrize("seed", range(5))
def test_auroc_and_f1_match_sklearn(seed):
    maps, masks = random_set(seed, levels=5 if seed % 2 else None)
    scores = maps.reshape(len(maps), -1).max(axis=1)
    labels = masks.reshape(len(masks), -1).max(axis=1)
    labels[0] = 1  # both classes
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert f1_max_pixel(maps, masks) == pytest.approx(reference_f1_max(masks, maps), abs=1e-12)
    assert f1_max_image(scores, labels) == pytest.approx(reference_f1_max(labels, scores), abs=1e-12)


def test_auroc_and_f1_hand_computed(hand_case):
    maps, masks = hand_case
    # positives .9 .7 .6 .3 beat 8, 7, 6.5 (one tie), 6 of the 8 negatives
    assert pixel_auroc(maps, masks) == 55 / 64
    # thresholds .9/.7/.6/.3 give F1 2/5, 4/7, 2/3, 4/5
    assert f1_max_pixel(maps, masks) == pytest.approx(0.8, abs=1e-15)
    assert image_auroc([0.1, 0.4, 0.4, 0.8], [0, 0, 1, 1]) == 0.875
    assert f1_max_image([0.1, 0.4, 0.4, 0.8], [0, 0, 1, 1]) == pytest.approx(0.8, abs=1e-15)


def test_constant_scores():
    masks = np.zeros((2, 4, 4), np.uint8)
    masks[1, :2, :2] = 1
    constant = np.ones(masks.shape)
    assert pixel_auroc(constant, masks) == 0.5
    assert image_auroc([3.0, 3.0, 3.0], [0, 1, 1]) == 0.5
    # one threshold: everything positive -> F1 = 2*4 / (2*4 + 28)
    assert f1_max_pixel(constant, masks) == pytest.approx(8 / 36, abs=1e-15)


# --------------------------------------------------------------------------- properties


def test_permuting_images_changes_nothing():
    maps, masks = random_set(11, levels=5)
    scores = maps.reshape(len(maps), -1).max(axis=1)
    labels = (masks.reshape(len(masks), -1).max(axis=1) > 0).astype(int)
    order = np.random.default_rng(0).permutation(len(maps))
    before = compute_all(scores, labels, maps, masks)
    after = compute_all(scores[order], labels[order], maps[order], masks[order])
    assert after == pytest.approx(before, abs=1e-12)


def test_monotone_transforms_change_nothing():
    maps, masks = random_set(12, levels=7)
    scores = maps.reshape(len(maps), -1).max(axis=1)
    labels = (masks.reshape(len(masks), -1).max(axis=1) > 0).astype(int)
    base = compute_all(scores, labels, maps, masks)
    for transform in (lambda x: 3.0 * x + 1.0, lambda x: np.exp(4.0 * x), np.sqrt):
        moved = compute_all(transform(scores), labels, transform(maps), masks)
        # the research grid is linear in the score, so only rank-based metrics are invariant
        assert {k: v for k, v in moved.items() if k != "au_pro_per_image"} == pytest.approx(
            {k: v for k, v in base.items() if k != "au_pro_per_image"}, abs=1e-12
        )
    continuous, _ = random_set(12, levels=None)
    assert au_pro_per_image(2.0 * continuous + 5.0, masks) == pytest.approx(au_pro_per_image(continuous, masks), abs=1e-9)


def test_perfect_maps_score_one():
    rng = np.random.default_rng(5)
    masks = np.zeros((4, 8, 8), np.uint8)
    masks[2, 1:4, 1:3] = masks[3, 5:7, 2:8] = 1
    maps = np.where(masks == 1, 2.0 + rng.random(masks.shape), rng.random(masks.shape))
    result = compute_all(maps.max(axis=(1, 2)), [0, 0, 1, 1], maps, masks)
    assert result == pytest.approx(dict.fromkeys(METRIC_NAMES, 1.0), abs=1e-12)


def test_float32_maps_give_the_float64_result():
    maps, masks = random_set(4, levels=None)
    maps32 = maps.astype(np.float32)
    assert au_pro(maps32, masks) == pytest.approx(au_pro(maps32.astype(np.float64), masks), abs=1e-12)
    assert au_pro_per_image(maps32, masks) == pytest.approx(au_pro_per_image(maps32.astype(np.float64), masks), abs=1e-12)


def test_compute_all_equals_the_single_functions():
    maps, masks = random_set(21, levels=None)
    scores = maps.reshape(len(maps), -1).max(axis=1)
    labels = (masks.reshape(len(masks), -1).max(axis=1) > 0).astype(int)
    result = compute_all(scores, labels, maps, masks, fpr_limit=0.2)
    assert list(result) == list(METRIC_NAMES)
    assert result == pytest.approx(
        {
            "image_auroc": image_auroc(scores, labels),
            "pixel_auroc": pixel_auroc(maps, masks),
            "au_pro": au_pro(maps, masks, 0.2),
            "au_pro_per_image": au_pro_per_image(maps, masks, 0.2),
            "f1_max_image": f1_max_image(scores, labels),
            "f1_max_pixel": f1_max_pixel(maps, masks),
        },
        abs=1e-12,
    )


# --------------------------------------------------------------------------- degenerate input


def _nan_with_warning(fn, *args, match: str) -> None:
    with pytest.warns(MetricWarning, match=match):
        assert np.isnan(fn(*args))


def test_undefined_metrics_are_nan_with_a_warning():
    maps = np.random.default_rng(0).random((3, 4, 4))
    none, everything = np.zeros(maps.shape, np.uint8), np.ones(maps.shape, np.uint8)
    _nan_with_warning(image_auroc, [0.1, 0.2, 0.3], [0, 0, 0], match="image_auroc.*no defective image")
    _nan_with_warning(image_auroc, [0.1, 0.2, 0.3], [1, 1, 1], match="image_auroc.*no good image")
    _nan_with_warning(f1_max_image, [0.1, 0.2, 0.3], [0, 0, 0], match="f1_max_image")
    _nan_with_warning(pixel_auroc, maps, none, match="pixel_auroc.*no anomalous pixel")
    _nan_with_warning(pixel_auroc, maps, everything, match="pixel_auroc.*no normal pixel")
    _nan_with_warning(f1_max_pixel, maps, none, match="f1_max_pixel")
    _nan_with_warning(au_pro, maps, none, match="au_pro.*no anomalous region")
    _nan_with_warning(au_pro, maps, everything, match="au_pro.*no normal pixel")
    _nan_with_warning(au_pro_per_image, maps, none, match="au_pro_per_image.*no image")
    constant_defective = maps.copy()
    constant_defective[2] = 0.5
    masks = none.copy()
    masks[2, 0, 0] = 1
    _nan_with_warning(au_pro_per_image, constant_defective, masks, match="image 2: the anomaly map is constant")
    # only one class of images is fine for F1: every threshold gives precision 1
    assert f1_max_image([0.1, 0.2], [1, 1]) == 1.0


def test_compute_all_without_defects_warns_for_each_undefined_metric():
    maps = np.random.default_rng(0).random((3, 4, 4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = compute_all(maps.max(axis=(1, 2)), [0, 0, 0], maps, np.zeros(maps.shape))
    assert all(np.isnan(v) for v in result.values())
    assert sorted(str(w.message).split()[0] for w in caught if issubclass(w.category, MetricWarning)) == sorted(METRIC_NAMES)


@pytest.mark.parametrize(
    "call,argument",
    [
        (lambda m, k: au_pro(m[0], k[0]), "maps"),
        (lambda m, k: au_pro(m, k[:, :1]), "masks"),
        (lambda m, k: pixel_auroc(np.where(k == 1, np.nan, m), k), "maps"),
        (lambda m, k: f1_max_pixel(m, 2 * k), "masks"),
        (lambda m, k: au_pro(m, k, fpr_limit=0.0), "fpr_limit"),
        (lambda m, k: au_pro_per_image(m, k, num_thresholds=0), "num_thresholds"),
        (lambda m, k: image_auroc([0.1, np.nan], [0, 1]), "scores"),
        (lambda m, k: image_auroc([0.1, 0.2], [0, 0.5]), "labels"),
        (lambda m, k: f1_max_image([0.1, 0.2, 0.3], [0, 1]), "labels"),
        (lambda m, k: compute_all([0.1, 0.2, 0.3], [0, 1, 1], m, k), "scores"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(hand_case, call, argument):
    maps, masks = hand_case
    with pytest.raises(ValueError, match=argument):
        call(maps, masks)
