"""sPRO (MVTec LOCO AD) and the thresholded segmentation F1 (MVTec AD 2) against independent re-statements.

The references below follow the published evaluation code step by step, one threshold at
a time: MVTec LOCO AD's ``get_spro`` (``min(tp_area / saturation_area, 1)`` per ground-truth
channel, a pixel positive when ``score > threshold``, false positives only where no channel
of the image has a defect) and its ``trapz(x, y, x_max)``; the thresholds are every midpoint
between distinct scores plus one above the maximum and one below the minimum, the limit of
the official threshold refinement. ``au_spro`` must agree within 1e-6 on generated maps with
several defects per image, overlapping channels, absolute and relative saturation thresholds,
saturation reached and not.
"""

from __future__ import annotations

import bisect
import warnings

import numpy as np
import pytest
from sklearn.metrics import f1_score

from mrkd_core.metrics import (
    MetricWarning,
    SaturatedRegion,
    au_pro,
    au_spro,
    normal_threshold,
    saturation_area,
    seg_f1,
)


# --------------------------------------------------------------------------- references
def official_saturation(area: int, threshold: float, relative: bool) -> float:
    """``GroundTruthChannel.get_saturation_area``: int(t · area) relative, min(t, area) absolute."""
    return int(threshold * area) if relative else min(threshold, area)


def official_trapz(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """The dataset code's ``trapz`` with an upper limit: interpolate at x_max, cut, trapezoids."""
    correction = 0.0
    if x_max not in x:
        ins = bisect.bisect(x, x_max)
        y_interp = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_interp + y[ins - 1]) * (x_max - x[ins - 1])
    keep = x <= x_max
    x, y = x[keep], y[keep]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


def reference_au_spro(maps: np.ndarray, regions: list[tuple[int, np.ndarray, float]], limit: float) -> float:
    distinct = np.unique(maps)
    midpoints = (distinct[1:] + distinct[:-1]) / 2
    thresholds = np.concatenate([[distinct[-1] + 1.0], midpoints[::-1], [distinct[0] - 1.0]])
    union = np.zeros(maps.shape, dtype=bool)
    for image, mask, _ in regions:
        union[image] |= mask
    fprs, spros = [], []
    for t in thresholds:  # descending: FPR and sPRO grow
        positive = maps > t
        fprs.append(np.count_nonzero(positive & ~union) / np.count_nonzero(~union))
        spros.append(np.mean([min(np.count_nonzero(positive[image] & mask) / sat, 1.0)
                              for image, mask, sat in regions]))
    return official_trapz(np.array(fprs), np.array(spros), limit) / limit


def generated_case(seed: int, n: int = 7, size: int = 14, levels: int | None = 8):
    """Maps with ties (or none) and 0-3 rectangular defects per anomalous image, some overlapping.

    Each defect draws a saturation rule: relative (t in 0.2-1) or absolute (t from 2 pixels,
    reached long before full coverage, up to more than the defect's area, i.e. never).
    """
    rng = np.random.default_rng(seed)
    raw = rng.random((n, size, size))
    regions = []
    for image in range(2, n):
        for _ in range(rng.integers(1, 4)):
            r, c = rng.integers(0, size - 3, 2)
            h, w = rng.integers(2, 6, 2)
            mask = np.zeros((size, size), dtype=bool)
            mask[r:r + h, c:c + w] = True
            raw[image][mask] += rng.uniform(0.0, 0.8)
            area = int(mask.sum())
            if rng.random() < 0.5:
                sat = official_saturation(area, float(rng.uniform(0.2, 1.0)), relative=True)
            else:
                sat = official_saturation(area, int(rng.integers(2, area + 6)), relative=False)
            regions.append((image, mask, max(sat, 1)))
    maps = np.floor(raw * levels) / levels if levels else raw
    return maps, regions


def _saturated(regions):
    return [SaturatedRegion(image, mask, float(sat)) for image, mask, sat in regions]


# --------------------------------------------------------------------------- sPRO
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("levels", [None, 8])
@pytest.mark.parametrize("limit", [0.05, 0.3, 1.0])
def test_au_spro_equals_the_official_procedure(seed, levels, limit):
    maps, regions = generated_case(seed, levels=levels)
    assert abs(au_spro(maps, _saturated(regions), limit) - reference_au_spro(maps, regions, limit)) < 1e-6


def test_the_generated_cases_reach_saturation_and_miss_it():
    """Guard for the test above: some defects saturate before they are covered, others never do."""
    reached = missed = 0
    for seed in range(6):
        _, regions = generated_case(seed)
        for _, mask, sat in regions:
            reached += sat < mask.sum()
            missed += sat == mask.sum()
    assert reached >= 5 and missed >= 5


def test_hand_computed_spro():
    """One image of 2×4; the defect is the top row (4 px), scores .9 .8 .1 .1; normal pixels .7 .2 .2 .2.

    Saturation 2: sPRO reaches 1 at t = .8 with FPR 0, so the area is 1.
    """
    maps = np.array([[[0.9, 0.8, 0.1, 0.1], [0.7, 0.2, 0.2, 0.2]]])
    mask = np.array([[True] * 4, [False] * 4])
    assert au_spro(maps, [SaturatedRegion(0, mask, 2.0)], 0.3) == pytest.approx(1.0)
    # Saturation 4 (plain PRO): half of the region is found at FPR 0 (t = .8) and the rest only
    # at t = .1, where FPR is already 1: the curve is flat at 1/2 up to any limit below 1.
    assert au_spro(maps, [SaturatedRegion(0, mask, 4.0)], 0.3) == pytest.approx(0.5)
    # Saturation 3: 2/3 at FPR 0, flat up to FPR 1.
    assert au_spro(maps, [SaturatedRegion(0, mask, 3.0)], 0.3) == pytest.approx(2 / 3)
    # ... and equals the official AU-PRO there (one region, saturation = its area).
    assert au_spro(maps, [SaturatedRegion(0, mask, 4.0)], 0.3) == pytest.approx(au_pro(maps, mask[None], 0.3))


def test_overlapping_channels_count_separately_and_are_never_false_positives():
    maps = np.array([[[0.9, 0.5, 0.4], [0.3, 0.2, 0.1]]])
    a = np.array([[True, True, False], [False, False, False]])
    b = np.array([[False, True, True], [False, False, False]])
    regions = [(0, a, 2.0), (0, b, 1.0)]
    assert au_spro(maps, _saturated(regions), 1.0) == pytest.approx(reference_au_spro(maps, regions, 1.0))


def test_saturation_area_follows_the_defects_config_rule():
    assert saturation_area(250, 0.5, relative=True) == 125.0
    assert saturation_area(7, 0.5, relative=True) == 3.0  # int(3.5), as the official code floors
    assert saturation_area(1, 0.3, relative=True) == 1.0  # never 0 (the official code would divide by 0)
    assert saturation_area(400, 100, relative=False) == 100.0
    assert saturation_area(40, 100, relative=False) == 40.0  # min(threshold, area)
    assert saturation_area(400, 1000, relative=False, area_scale=0.25) == 250.0  # original pixels → evaluated
    with pytest.raises(ValueError, match="relative"):
        saturation_area(10, 1.5, relative=True)


def test_au_spro_undefined_and_bad_input():
    maps = np.zeros((1, 2, 2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert np.isnan(au_spro(maps, []))
        assert np.isnan(au_spro(maps, [SaturatedRegion(0, np.ones((2, 2), bool), 1.0)]))
    assert [w.category for w in caught] == [MetricWarning, MetricWarning]
    with pytest.raises(ValueError, match="positive saturation"):
        au_spro(maps, [SaturatedRegion(0, np.zeros((2, 2), bool), 1.0)])
    with pytest.raises(ValueError, match=r"regions\[0\].image"):
        au_spro(maps, [SaturatedRegion(3, np.ones((2, 2), bool), 1.0)])


# --------------------------------------------------------------------------- SegF1 and its threshold
@pytest.mark.parametrize("seed", range(5))
def test_seg_f1_equals_sklearn_on_the_binarised_maps(seed):
    maps, regions = generated_case(seed, levels=None)
    masks = np.zeros(maps.shape, dtype=np.uint8)
    for image, mask, _ in regions:
        masks[image][mask] = 1
    validation = np.random.default_rng(seed).random((3, 14, 14))
    for t in (normal_threshold(validation), 0.5, float(np.median(maps))):
        expected = f1_score(masks.ravel(), (maps >= t).ravel().astype(int))
        assert abs(seg_f1(maps, masks, t) - expected) < 1e-6


def test_normal_threshold_is_mean_plus_k_std():
    values = np.array([[[1.0, 2.0], [3.0, 4.0]]])
    assert normal_threshold(values, k=3.0) == pytest.approx(2.5 + 3 * np.sqrt(1.25))
    assert normal_threshold(values, k=0) == pytest.approx(2.5)


def test_seg_f1_undefined_without_defects_or_predictions():
    with pytest.warns(MetricWarning, match="seg_f1 is undefined"):
        assert np.isnan(seg_f1(np.zeros((1, 2, 2)), np.zeros((1, 2, 2)), 1.0))
    assert seg_f1(np.ones((1, 2, 2)), np.zeros((1, 2, 2)), 0.5) == 0.0  # every pixel a false positive
