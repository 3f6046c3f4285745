"""Calibration: image and pixel thresholds, score normalisation and the heatmap colour scale.

A ``Calibration`` is stored inside the model file (``model_io``) with how it was
obtained, so that a model file alone gives verdicts and masks at the line. Two policies:

- ``f1``: the F1-optimal image threshold (anomalib's adaptive threshold) on labelled
  images (good and defective), and the F1-optimal pixel threshold on their masks (an
  image-labelled dataset has none: its pixel threshold comes from the false-alarm rate
  on the good images' pixels);
- ``false_alarm_rate``: thresholds that give at most the target rate of false alarms
  on defect-free images the model did not train on (``false_alarm_threshold``), for
  images and for pixels. The engineer's usual case: no defect images yet.

Where the calibration images come from (``calibration_set``): the held-out
``validation_fraction`` of train/good (which images, ``layout.task_samples`` decides), an
explicit folder of defect-free images, or the test split. A calibration chosen on the test split is flagged
``on_evaluation_images``, because ``mrkd evaluate`` and the flows report on those
images too: its thresholds are then not tested on images they were not chosen on.

Normalisation (anomalib's min-max): ``normalized = clip((x − threshold) / (max − min) +
0.5, 0, 1)`` with min/max of the calibration scores (images) or map values (pixels), so
the image threshold maps to 0.5. The pixel normalisation fixes the heatmap's colour
scale: an overlay depends on the image and the model only.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mrkd_core.config import MRKDConfig
from mrkd_core.data.base import IMAGE_EXTENSIONS, Sample, find_images
from mrkd_core.errors import ConfigError, DataError
from mrkd_core.evaluate import EvalResult, evaluate
from mrkd_core.metrics import f1_max_threshold
from mrkd_core.model import MRKD
from mrkd_core.results import VERDICT_COLUMNS
from mrkd_core.revision import EVALUATION_REVISION

log = logging.getLogger(__name__)

CALIBRATION_FORMAT = "mrkd-calibration/1"
POLICIES = ("auto", "f1", "false_alarm_rate")
DEFAULT_FALSE_ALARM_RATE = 0.01
MIN_IMAGES = 2  # a spread (max − min) needs two scores

# Where calibration images come from (Calibration.source).
SOURCE_HELD_OUT = "held-out train/good"
SOURCE_VALIDATION = "dataset's validation split"  # a published defect-free validation set (MVTec AD 2)
SOURCE_TEST = "test split"
SOURCE_FOLDER = "folder"


# --------------------------------------------------------------------------- thresholds (pure functions)
# Convention everywhere: an image is *defective* when its score is **above** the image
# threshold, a pixel is a defect pixel when its map value is above the pixel threshold.
# Thresholds are placed half-way between two calibration values, so the calibration set
# is classified the same way with ``>`` and ``>=``.

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


# --------------------------------------------------------------------------- calibration
@dataclass(frozen=True)
class Calibration:
    """Thresholds on raw scores and map values, their normalisation, and their provenance.

    Verdict: ``defective`` when ``score > image_threshold``; defect pixel when
    ``map > pixel_threshold``. ``normalize_score`` maps ``image_threshold`` to 0.5.
    """

    policy: str  # "f1" or "false_alarm_rate": how image_threshold was chosen
    pixel_policy: str  # how pixel_threshold was chosen (f1 needs masks with defects)
    image_threshold: float
    pixel_threshold: float
    image_min: float  # min / max of the calibration images' scores
    image_max: float
    pixel_min: float  # min / max of the calibration maps' values: the colour scale
    pixel_max: float
    target_false_alarm_rate: float | None  # the requested rate (false_alarm_rate policy)
    achieved_false_alarm_rate: float | None  # good calibration images above image_threshold
    expected_false_alarm_rate: float | None  # what the rule guarantees on new good images
    achieved_pixel_false_alarm_rate: float | None  # good calibration pixels above pixel_threshold
    image_f1: float | None  # on the calibration images (f1 policy)
    pixel_f1: float | None
    source: str  # SOURCE_HELD_OUT, SOURCE_VALIDATION, SOURCE_TEST or SOURCE_FOLDER
    source_detail: str
    on_evaluation_images: bool  # chosen on the images the evaluation reports on
    n_good: int
    n_defective: int
    images: tuple[str, ...]
    evaluation_revision: int = EVALUATION_REVISION
    calibrated_at: str = ""
    notes: tuple[str, ...] = ()
    format: str = CALIBRATION_FORMAT

    # ------------------------------------------------------------------ use
    def normalize_score(self, score: Any) -> np.ndarray:
        """Image scores → [0, 1], ``image_threshold`` → 0.5 (float32 array of the input's shape)."""
        return normalize(score, self.image_threshold, self.image_min, self.image_max)

    def normalize_map(self, amap: Any) -> np.ndarray:
        """Map values → [0, 1], ``pixel_threshold`` → 0.5: the heatmap's fixed colour scale."""
        return normalize(amap, self.pixel_threshold, self.pixel_min, self.pixel_max)

    def verdict(self, score: float) -> str:
        return "defective" if score > self.image_threshold else "good"

    def defect_mask(self, amap: np.ndarray) -> np.ndarray:
        """uint8 {0, 1} mask of the map's values above ``pixel_threshold``."""
        return (np.asarray(amap) > self.pixel_threshold).astype(np.uint8)

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["images"] = list(self.images)
        d["notes"] = list(self.notes)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "calibration") -> "Calibration":
        if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
            raise ConfigError(f"{source}: not an {CALIBRATION_FORMAT} record; recalibrate with `mrkd calibrate`")
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["images"] = tuple(kwargs.get("images", ()))
        kwargs["notes"] = tuple(kwargs.get("notes", ()))
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"{source}: incomplete calibration record ({exc}); recalibrate with `mrkd calibrate`") from None

    def summary(self) -> str:
        """One line for logs and the CLI."""
        how = (f"F1-optimal (F1 {self.image_f1:.3f})" if self.policy == "f1"
               else f"false-alarm rate {self.target_false_alarm_rate:g}")
        where = " — chosen on the test split, which evaluation also reports on" if self.on_evaluation_images else ""
        return (f"image threshold {self.image_threshold:.6g} ({how}), pixel threshold {self.pixel_threshold:.6g} "
                f"({self.pixel_policy}), from {self.n_good} good + {self.n_defective} defective images of the "
                f"{self.source}{where}")


@dataclass(frozen=True)
class CalibrationSet:
    """Images to calibrate on and where they come from."""

    samples: list[Sample]
    source: str
    detail: str
    on_evaluation_images: bool = False

    @property
    def n_defective(self) -> int:
        return sum(s.label for s in self.samples)


@dataclass
class CalibrationData:
    """What the model gave on a calibration set: per-image scores and S×S maps (float32)."""

    scores: np.ndarray  # N
    labels: np.ndarray  # N, 0/1
    maps: np.ndarray  # N×S×S
    masks: np.ndarray  # N×S×S uint8 (zeros for good images, and for all without pixel ground truth)
    paths: list[str] = field(default_factory=list)
    # False: the defective images are labelled per image only (ELPV, a folder without
    # ground_truth/); their all-zero masks say nothing about their pixels.
    pixel_ground_truth: bool = True


def folder_samples(folder: str | Path, category: str = "") -> list[Sample]:
    """Every image under ``folder`` (recursively) as a defect-free sample."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: folder not found — pass a folder of defect-free images")
    paths = find_images(root)
    if not paths:
        raise DataError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) found — pass a folder of defect-free images")
    return [Sample(str(p), None, 0, "good", category) for p in paths]


def calibration_set(cfg: MRKDConfig, policy: str, *, held_out: Sequence[Sample] = (), held_out_from: str = "",
                    test_samples: Sequence[Sample] = (), good_folder: str | Path | None = None,
                    category: str = "") -> tuple[str, CalibrationSet]:
    """(resolved policy, images) for ``policy`` in POLICIES.

    ``held_out``: defect-free images held out of training, as ``layout.task_samples`` chose
    them (``cfg.validation_fraction`` of train/good, a dataset's validation split), and
    ``held_out_from`` where they come from. ``auto``: the held-out images or a good folder
    when given (false-alarm rate); else ``f1`` on the test split when it has defective images;
    else the false-alarm rate on the test split's good images. ``f1`` needs the test split
    with defective images; ``false_alarm_rate`` takes the good folder, else the held-out
    images, else the test split's good images. A missing source is a ``DataError`` saying
    what to provide.
    """
    if policy not in POLICIES:
        raise ConfigError(f"calibration policy {policy!r}: choose one of {', '.join(POLICIES)}")
    held = list(held_out)
    has_defects = any(s.label == 1 for s in test_samples)
    test_good = [s for s in test_samples if s.label == 0]
    if policy == "auto":
        policy = "false_alarm_rate" if (held or good_folder) else "f1" if has_defects else "false_alarm_rate"
    if policy == "f1":
        if not has_defects:
            raise DataError("calibration policy f1 needs labelled defective images (test/<defect> folders); "
                            "use --policy false_alarm_rate with defect-free images instead")
        return policy, CalibrationSet(list(test_samples), SOURCE_TEST, "all test images (good and defective)",
                                      on_evaluation_images=True)
    if good_folder is not None:
        return policy, CalibrationSet(folder_samples(good_folder, category), SOURCE_FOLDER, str(good_folder))
    if held:
        source = SOURCE_HELD_OUT if cfg.validation_fraction > 0 else SOURCE_VALIDATION
        return policy, CalibrationSet(held, source, held_out_from or "held out of training")
    if test_good:
        return policy, CalibrationSet(test_good, SOURCE_TEST, "the test split's good images",
                                      on_evaluation_images=True)
    raise DataError("no defect-free images to calibrate on: train with --validation-fraction (e.g. 0.2), "
                    "add test/good images, or pass --good-dir FOLDER")


def calibrate(data: CalibrationData, policy: str, cset: CalibrationSet,
              false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE) -> Calibration:
    """Thresholds and normalisation from the model's scores and maps on ``cset``.

    ``policy`` is ``f1`` or ``false_alarm_rate`` (``calibration_set`` resolves ``auto``).
    The pixel threshold follows the policy; under ``f1`` without pixel ground truth (an
    image-labelled dataset) or without any defect pixel in the masks it falls back to
    the false-alarm rate on the good images' pixels (noted).
    """
    if policy not in ("f1", "false_alarm_rate"):
        raise ConfigError(f"calibration policy {policy!r}: choose f1 or false_alarm_rate")
    if not 0.0 < false_alarm_rate < 1.0:
        raise ConfigError(f"--false-alarm-rate {false_alarm_rate}: must lie in (0, 1), e.g. 0.01")
    n = len(data.scores)
    if n < MIN_IMAGES:
        raise DataError(f"calibration needs at least {MIN_IMAGES} images, got {n} ({cset.source}: {cset.detail})")
    good = data.labels == 0
    if not good.any():
        raise DataError(f"calibration needs defect-free images; {cset.source} has only defective ones")
    notes: list[str] = []
    good_scores = data.scores[good]
    good_pixels = data.maps[good]
    image_f1 = pixel_f1 = None
    target = None
    if policy == "f1":
        image_threshold, image_f1 = f1_threshold(data.scores, data.labels)
        if data.pixel_ground_truth and data.masks.any():
            pixel_policy = "f1"
            pixel_threshold, pixel_f1 = f1_threshold(data.maps, data.masks)
        else:
            # Without masks a defective image's pixels are unlabelled (most of them are
            # good): only the good images' pixels can place the pixel threshold.
            pixel_policy = "false_alarm_rate"
            target = false_alarm_rate
            pixel_threshold = false_alarm_threshold(good_pixels, false_alarm_rate)
            why = ("no pixel ground truth (image labels only)" if not data.pixel_ground_truth
                   else "no defect pixel in the masks")
            notes.append(f"{why}: pixel threshold from the false-alarm rate {false_alarm_rate:g} on the good "
                         "images' pixels")
    else:
        target = false_alarm_rate
        pixel_policy = "false_alarm_rate"
        image_threshold = false_alarm_threshold(good_scores, false_alarm_rate)
        pixel_threshold = false_alarm_threshold(good_pixels, false_alarm_rate)
        if expected_false_alarm_rate(len(good_scores), false_alarm_rate) > false_alarm_rate:
            notes.append(f"{len(good_scores)} defect-free images cannot resolve a false-alarm rate of "
                         f"{false_alarm_rate:g} (needs ≥ {int(np.ceil(1 / false_alarm_rate)) - 1}): the image "
                         "threshold is the largest of their scores")
    if cset.on_evaluation_images:
        notes.append("thresholds were chosen on the test split; metrics reported on it are not an unbiased "
                     "test of them")
    cal = Calibration(
        policy=policy, pixel_policy=pixel_policy,
        image_threshold=float(image_threshold), pixel_threshold=float(pixel_threshold),
        image_min=float(data.scores.min()), image_max=float(data.scores.max()),
        pixel_min=float(data.maps.min()), pixel_max=float(data.maps.max()),
        target_false_alarm_rate=target,
        achieved_false_alarm_rate=rate_above(good_scores, image_threshold),
        expected_false_alarm_rate=(expected_false_alarm_rate(len(good_scores), false_alarm_rate)
                                   if policy == "false_alarm_rate" else None),
        achieved_pixel_false_alarm_rate=rate_above(good_pixels, pixel_threshold),
        image_f1=image_f1, pixel_f1=pixel_f1,
        source=cset.source, source_detail=cset.detail, on_evaluation_images=cset.on_evaluation_images,
        n_good=int(good.sum()), n_defective=int(n - good.sum()),
        images=tuple(data.paths),
        calibrated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        notes=tuple(notes),
    )
    for note in notes:
        log.warning("calibration: %s", note)
    log.info("calibrated: %s", cal.summary())
    return cal


def measure(model: MRKD, cfg: MRKDConfig, samples: Sequence[Sample]) -> CalibrationData:
    """The model's scores and S×S maps on ``samples`` (one evaluation pass, no metrics)."""
    result = evaluate(model, cfg, samples, keep_maps=True, metrics=False)
    return from_evaluation(result)


def from_evaluation(result: EvalResult, labels: Sequence[int] | None = None) -> CalibrationData:
    """CalibrationData of an ``evaluate(..., keep_maps=True)`` result; ``labels`` (0/1 per
    image) keeps only the images of those labels."""
    if result.maps is None or result.masks is None:
        raise ValueError("calibration needs the maps: evaluate(..., keep_maps=True)")
    y = np.array([int(s["label"]) for s in result.scores])
    keep = np.isin(y, list(labels)) if labels is not None else np.ones(len(y), dtype=bool)
    return CalibrationData(
        scores=np.array([float(s["score"]) for s in result.scores])[keep],
        labels=y[keep],
        maps=np.asarray(result.maps, dtype=np.float32)[keep],
        masks=np.asarray(result.masks)[keep],
        paths=[s["path"] for s, k in zip(result.scores, keep) if k],
        pixel_ground_truth=not result.absent,
    )


def calibrate_model(model: MRKD, cfg: MRKDConfig, *, policy: str = "auto",
                    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
                    held_out: Sequence[Sample] = (), held_out_from: str = "", test_samples: Sequence[Sample] = (),
                    good_folder: str | Path | None = None, category: str = "",
                    evaluation: EvalResult | None = None) -> Calibration:
    """Choose the calibration images (``calibration_set``), score them, calibrate.

    ``evaluation``: an ``evaluate(..., keep_maps=True)`` result of ``test_samples`` with
    ``cfg.score_scales`` (the flows have one); calibrating on the test split then reuses
    its maps instead of a second pass.
    """
    resolved, cset = calibration_set(cfg, policy, held_out=held_out, held_out_from=held_out_from,
                                     test_samples=test_samples,
                                     good_folder=good_folder, category=category)
    if evaluation is not None and cset.source == SOURCE_TEST:
        data = from_evaluation(evaluation, labels=(0, 1) if resolved == "f1" else (0,))
    else:
        data = measure(model, cfg, cset.samples)
    return calibrate(data, resolved, cset, false_alarm_rate)


def calibrate_after_training(model: MRKD, cfg: MRKDConfig, held_out: Sequence[Sample],
                             test_samples: Sequence[Sample], category: str = "", held_out_from: str = "",
                             evaluation: EvalResult | None = None) -> Calibration | None:
    """The default calibration at the end of ``mrkd train`` and the flows (policy ``auto``).

    None, with a warning naming ``mrkd calibrate``, when there is nothing to calibrate on.
    """
    try:
        return calibrate_model(model, cfg, held_out=held_out, held_out_from=held_out_from, test_samples=test_samples,
                               category=category, evaluation=evaluation)
    except DataError as exc:
        log.warning("%s: not calibrated (%s); the model predicts scores only until `mrkd calibrate` runs",
                    category or "model", exc)
        return None


def verdict_columns(calibration: dict[str, Any] | None, scores: Sequence[float]) -> list[dict[str, Any]]:
    """``results.VERDICT_COLUMNS`` per raw score: ``normalized_score``, ``verdict``, the image
    ``threshold`` and whether it was chosen on the evaluation images (``on_evaluation_images``);
    None values without calibration.

    For result tables (``mrkd evaluate``'s scores.csv, the flows' ``scores`` table).
    """
    if calibration is None:
        return [dict.fromkeys(VERDICT_COLUMNS) for _ in scores]
    cal = Calibration.from_dict(calibration)
    return [{"normalized_score": float(cal.normalize_score(float(s))), "verdict": cal.verdict(float(s)),
             "threshold": cal.image_threshold, "on_evaluation_images": cal.on_evaluation_images}
            for s in scores]
