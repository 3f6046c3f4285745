"""Thresholds and normalisation: pure functions on numpy arrays.

Convention everywhere: an image is *defective* when its score is **above** the image
threshold, a pixel is a defect pixel when its map value is above the pixel threshold.
Thresholds are placed half-way between two calibration values, so the calibration set
is classified the same way with ``>`` and ``>=``.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from mrkd_core.metrics import f1_max_threshold


def _midpoint_below(values: np.ndarray, t: float) -> float:
    """Half-way between ``t`` and the largest value below it (``t`` itself when none is)."""
    below = values[values < t]
    if below.size == 0:
        return float(np.nextafter(t, -np.inf))
    return float((float(below.max()) + t) / 2.0)


def f1_threshold(scores: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[float, float]:
    """(threshold, F1) maximising F1 on labelled scores (anomalib's adaptive threshold).

    Any shapes (image scores, or maps with their masks, pooled over pixels). The F1 is
    ``metrics.f1_max_threshold``'s; the threshold lies half-way between the smallest
    positive score reaching it and the next lower score. ValueError without a positive.
    """
    values = np.ravel(np.asarray(scores, dtype=np.float64))
    f1, t = f1_max_threshold(values, np.ravel(np.asarray(labels)))
    return _midpoint_below(values, t), f1


def false_alarm_threshold(good_scores: npt.ArrayLike, rate: float) -> float:
    """Threshold for a false-alarm rate ≤ ``rate`` on new defect-free data of the same kind.

    Split-conformal rule: with the n good scores sorted, the threshold is at the
    r-th smallest, r = ⌈(n + 1)(1 − rate)⌉, so that for exchangeable data a new good
    image exceeds it with probability (n + 1 − r)/(n + 1) ≤ rate (and > rate − 1/(n + 1)).
    The threshold is placed half-way to the next score; with too few images for the rate
    (r > n) it is the largest score (``expected_false_alarm_rate`` then says 1/(n + 1)).
    """
    if not 0.0 < rate < 1.0:
        raise ValueError(f"false-alarm rate {rate} must lie in (0, 1)")
    g = np.sort(np.ravel(np.asarray(good_scores, dtype=np.float64)))
    n = g.size
    if n == 0:
        raise ValueError("a false-alarm-rate threshold needs at least one defect-free score")
    r = math.ceil((n + 1) * (1.0 - rate) - 1e-9)  # 1e-9: (n + 1)(1 − rate) integral up to rounding
    if r >= n:
        return float(g[-1])
    return float((g[r - 1] + g[r]) / 2.0)


def expected_false_alarm_rate(n_good: int, rate: float) -> float:
    """The false-alarm rate ``false_alarm_threshold`` guarantees in expectation on new data."""
    r = math.ceil((n_good + 1) * (1.0 - rate) - 1e-9)
    return (n_good + 1 - min(r, n_good)) / (n_good + 1)


def rate_above(values: npt.ArrayLike, threshold: float) -> float:
    """Fraction of ``values`` above ``threshold`` (the false-alarm rate on defect-free data)."""
    v = np.asarray(values)
    return float(np.count_nonzero(v > threshold) / v.size) if v.size else float("nan")


def normalize(values: npt.ArrayLike, threshold: float, low: float, high: float) -> np.ndarray:
    """anomalib's min-max normalisation: ``threshold`` → 0.5, clipped to [0, 1], float32.

    ``(v − threshold) / (high − low) + 0.5``; ``high − low`` is the spread of the
    calibration values (the threshold itself when they are all equal).
    """
    span = high - low
    if not span > 0:
        span = abs(threshold) or 1.0
    v = np.asarray(values, dtype=np.float64)
    return np.clip((v - threshold) / span + 0.5, 0.0, 1.0).astype(np.float32)
