"""Predictions for new images: score, calibrated verdict, defect mask and overlay per image.

For inspection engineers: any list of image files, no dataset layout. Every output of an
image is a function of that image and the model file only (fixed test-time masks,
calibrated thresholds and colour scale), whatever the other files of the call, the
batch size or the engine (``model.pt`` with PyTorch, ``.onnx`` with ONNX Runtime).

Python::

    from mrkd_core.inference import Predictor
    predictor = Predictor.load("models/bracket/model.pt")        # or "bracket.onnx"
    for p in predictor.predict(["part_001.png", "part_002.png"]):
        print(p.path, p.score, p.normalized_score, p.verdict)    # p.anomaly_map, p.mask: H×W arrays

    predict_images("models/bracket/model.pt", paths, "out/")     # + PNGs and the tables
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from mrkd_core.data.io import file_sha256
from mrkd_core.data.torch_datasets import normalize
from mrkd_core.errors import DataError
from mrkd_core.inference.backends import Backend, open_backend
from mrkd_core.inference.calibration import Calibration
from mrkd_core.inference.images import read_image, to_input_size, to_network_size
from mrkd_core.inference.overlays import write_mask, write_overlay
from mrkd_core.results import utcnow
from mrkd_core.revision import EVALUATION_REVISION, stored_revision
from mrkd_core.storage import absolute_location
from mrkd_core.tiling import Tiling

log = logging.getLogger(__name__)

PREDICTIONS_SCHEMA = pa.schema([
    pa.field("path", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("score", pa.float64()),  # Eq. 6, raw
    pa.field("normalized_score", pa.float64()),  # [0, 1], 0.5 at the threshold; null when uncalibrated
    pa.field("verdict", pa.string()),  # good / defective; null when uncalibrated or skipped
    pa.field("threshold", pa.float64()),  # the image threshold on the raw score
    pa.field("mask_path", pa.string()),
    pa.field("overlay_path", pa.string()),
    pa.field("error", pa.string()),  # null, or why the file was skipped
    # Who decided, on what, when: the audit columns, as in the service's record (tables/inspections).
    pa.field("defect_area_fraction", pa.float64()),  # share of the image's pixels in the mask; null uncalibrated
    pa.field("image_sha256", pa.string()),  # of the file's bytes, as the service hashes the bytes it receives
    pa.field("model_source", pa.string()),  # the model file (path or URI) that scored it
    pa.field("model_version", pa.int64()),  # the registry version when MODEL was a reference; else null
    pa.field("engine", pa.string()),  # pytorch, onnxruntime or openvino
    pa.field("predicted_at", pa.timestamp("us", tz="UTC")),  # when its score was computed
])
TABLE_NAME = "predictions"


@dataclass
class Prediction:
    """One image's result: the table's fields, and ``anomaly_map`` (float32), ``mask`` (uint8
    {0, 1}) and ``image`` (the decoded RGB uint8) at the input's height × width. ``mask`` is
    None without calibration; all three None when skipped. ``image_sha256`` is set for a file
    (:meth:`Predictor.predict`), ``model_version`` by the caller that resolved a registry
    reference (:func:`predict_images`)."""

    path: str
    width: int | None = None
    height: int | None = None
    score: float | None = None
    normalized_score: float | None = None
    verdict: str | None = None
    threshold: float | None = None
    mask_path: str | None = None
    overlay_path: str | None = None
    error: str | None = None
    defect_area_fraction: float | None = None  # share of the pixels in ``mask``, [0, 1]; None without one
    image_sha256: str | None = None
    model_source: str | None = None
    model_version: int | None = None
    engine: str | None = None
    predicted_at: datetime | None = None  # UTC
    anomaly_map: np.ndarray | None = field(default=None, repr=False)
    mask: np.ndarray | None = field(default=None, repr=False)
    image: np.ndarray | None = field(default=None, repr=False)

    def row(self) -> dict:
        return {f.name: getattr(self, f.name) for f in PREDICTIONS_SCHEMA}


class Predictor:
    """Scores images with one model file (``model.pt`` or ``.onnx``) and its calibration.

    Forward passes hold up to ``batch_size`` images (the last one the rest): an image
    costs one image, whatever the batch size. A tiled model (``tile_size``) takes frames of
    any size: passes hold up to ``batch_size`` tiles, and maps, masks and overlays are at
    the frame's size, stitched and smoothed by ``mrkd_core.tiling`` whatever the engine.
    Its outputs depend on the image and the model only (the test-time masks are per-model
    constants, ``MRKD.test_masks``); the number of images in a pass changes them by float32
    rounding at most (PyTorch's CPU convolutions round a pass of one small image differently
    from a pass of several: relative ≤ 5e-7 on maps below 256 px, bitwise the same at 256 px
    here; docs/inference.md).
    """

    def __init__(self, backend: Backend, batch_size: int = 8):
        if batch_size < 1:
            raise ValueError(f"batch_size {batch_size} must be at least 1")
        self.backend = backend
        self.batch_size = int(batch_size)
        info = backend.info
        self.calibration = Calibration.from_dict(info.calibration, info.source) if info.calibration else None
        cfg = info.config
        self._mean, self._std = cfg.normalize_mean, cfg.normalize_std
        self._source = absolute_location(info.source)  # each prediction's model_source: names the file from anywhere
        self.tiling = Tiling.of(cfg)  # None: whole images resized to image_size
        if self.calibration is None:
            log.warning("%s has no calibration: scores only (no verdict, mask or overlay) — run "
                        "`mrkd calibrate %s DATA_ROOT`", info.source, info.source)
        elif stored_revision(info.calibration, "evaluation_revision") != EVALUATION_REVISION:
            log.warning("%s was calibrated with scores of evaluation revision %d (this code: %d); its thresholds "
                        "may be off — run `mrkd calibrate %s DATA_ROOT`", info.source,
                        stored_revision(info.calibration, "evaluation_revision"), EVALUATION_REVISION, info.source)

    @classmethod
    def load(cls, location: str | os.PathLike[str], device: str = "auto", batch_size: int = 8,
             engine: str = "auto") -> "Predictor":
        """``engine`` for an .onnx export: auto/onnxruntime or openvino (``backends.open_backend``)."""
        return cls(open_backend(str(location), device, engine), batch_size)

    @property
    def image_size(self) -> int:
        return self.backend.info.image_size

    def predict(self, paths: Iterable[str | os.PathLike[str]],
                skip_unreadable: bool = False) -> Iterator[Prediction]:
        """One ``Prediction`` per path, in order, with maps (and masks when calibrated).

        An unreadable file raises its one-line ``DataError``; with ``skip_unreadable`` it
        yields a Prediction whose ``error`` says why, and the others are scored.
        """
        pending: list[tuple[str, np.ndarray, np.ndarray | None]] = []
        digests: dict[str, str] = {}
        inputs = 0  # network inputs pending: one per image, or its tiles for a tiled model
        for path in paths:
            p = os.fspath(path)
            try:
                original, net = read_image(p, None if self.tiling else self.image_size)
                digests[p] = _sha256(p)
            except DataError as exc:
                if not skip_unreadable:
                    raise
                yield from self._hashed(self._run(pending), digests)
                pending, inputs = [], 0
                yield Prediction(path=p, error=str(exc))
                continue
            pending.append((p, original, net))
            inputs += self._inputs(original)
            if inputs >= self.batch_size:  # a large frame is scored alone, whatever its tile count
                yield from self._hashed(self._run(pending), digests)
                pending, inputs = [], 0
        yield from self._hashed(self._run(pending), digests)

    @staticmethod
    def _hashed(predictions: Iterator[Prediction], digests: dict[str, str]) -> Iterator[Prediction]:
        for pred in predictions:
            pred.image_sha256 = digests.get(pred.path)
            yield pred

    def predict_array(self, image: np.ndarray, path: str = "<array>") -> Prediction:
        """A Prediction for an H×W×3 (or H×W grey) uint8 image already in memory."""
        arr = np.asarray(image)
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"expected an H×W×3 uint8 RGB image, got {arr.dtype} {arr.shape}")
        return self.predict_decoded([(path, arr)])[0]

    def predict_decoded(self, images: Sequence[tuple[str, np.ndarray]]) -> list[Prediction]:
        """One Prediction per (name, H×W×3 uint8 RGB image) already decoded, in order.

        The decoded image is what ``data.io.load_image(path, None)`` (or ``load_image_bytes``
        for bytes in memory, the HTTP service's door) returns, so the result equals
        :meth:`predict` on the same file. Forward passes of up to ``batch_size`` network inputs
        (images, or a tiled model's tiles, any frame size).
        """
        out: list[Prediction] = []
        pending: list[tuple[str, np.ndarray, np.ndarray | None]] = []
        inputs = 0
        for name, arr in images:
            pending.append((name, arr, None if self.tiling else to_network_size(arr, self.image_size)))
            inputs += self._inputs(arr)
            if inputs >= self.batch_size:
                out.extend(self._run(pending))
                pending, inputs = [], 0
        out.extend(self._run(pending))
        return out

    def _inputs(self, image: np.ndarray) -> int:
        """Network inputs ``image`` takes: one, or a tiled model's tile count for its size."""
        return len(self.tiling.grid(*image.shape[:2])) if self.tiling else 1

    def _run(self, items: Sequence[tuple[str, np.ndarray, np.ndarray | None]]) -> Iterator[Prediction]:
        """Predictions of (path, decoded image, its network input; None for a tiled model) in order."""
        if not items:
            return
        for path, original, full, score in (self._tiled(items) if self.tiling else self._resized(items)):
            h, w = original.shape[:2]
            pred = Prediction(path=path, width=w, height=h, score=score, anomaly_map=full, image=original,
                              model_source=self._source, engine=self.backend.info.engine, predicted_at=utcnow())
            cal = self.calibration
            if cal is not None:
                pred.normalized_score = float(cal.normalize_score(score))
                pred.verdict = cal.verdict(score)
                pred.threshold = cal.image_threshold
                pred.mask = cal.defect_mask(full)
                pred.defect_area_fraction = float(np.count_nonzero(pred.mask)) / pred.mask.size
            yield pred

    def _resized(self, items: Sequence[tuple[str, np.ndarray, np.ndarray | None]]
                 ) -> Iterator[tuple[str, np.ndarray, np.ndarray, float]]:
        """Whole images in one pass: the S×S map resized to the image, the score of the S×S map (Eq. 6)."""
        batch = np.stack([normalize(net, self._mean, self._std).numpy() for _, _, net in items])
        maps, scores = self.backend.run(batch)
        for (path, original, _), amap, score in zip(items, maps, scores):
            h, w = original.shape[:2]
            yield path, original, to_input_size(amap, w, h), float(score)

    def _tiled(self, items: Sequence[tuple[str, np.ndarray, np.ndarray | None]]
               ) -> Iterator[tuple[str, np.ndarray, np.ndarray, float]]:
        """Tiled frames (``mrkd_core.tiling``): stitched and smoothed at the image's size; score its maximum."""
        frames = (((path, original), original) for path, original, _ in items)
        for (path, original), stitched, grid in self.tiling.stitched_maps(frames, self._tile_maps, self.batch_size):
            amap = self.tiling.anomaly_map(stitched, grid).numpy()
            yield path, original, amap, float(amap.max())

    def _tile_maps(self, tiles: np.ndarray) -> np.ndarray:
        """B×1×S×S fused, unsmoothed maps of a B×S×S×3 uint8 batch of tiles, by this predictor's engine."""
        batch = np.stack([normalize(tile, self._mean, self._std).numpy() for tile in tiles])
        return self.backend.run(batch)[0][:, None]


def _sha256(path: str) -> str:
    """The file's sha256 (the record's image_sha256); a file gone since it was decoded is a DataError."""
    try:
        return file_sha256(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc})") from None


@dataclass
class PredictionReport:
    """What ``predict_images`` wrote."""

    predictions: list[Prediction]
    csv_path: Path
    parquet_path: Path

    @property
    def n_skipped(self) -> int:
        return sum(1 for p in self.predictions if p.error)


def _unique_stem(path: str, used: set[str]) -> str:
    stem = Path(path).stem
    name, i = stem, 1
    while name in used:  # the same stem in different folders
        name = f"{stem}_{i}"
        i += 1
    used.add(name)
    return name


def predict_images(model: str | os.PathLike[str] | Predictor, images: Sequence[str | os.PathLike[str]],
                   out_dir: str | os.PathLike[str], device: str = "auto", batch_size: int = 8,
                   skip_unreadable: bool = False, engine: str = "auto",
                   model_version: int | None = None) -> PredictionReport:
    """Predict every image (``batch_size`` per forward pass, ``engine`` for an .onnx file;
    both ignored when ``model`` is a Predictor) and write ``<stem>_mask.png``, ``<stem>_overlay.png`` (input size),
    ``predictions.csv`` and ``predictions.parquet`` (``PREDICTIONS_SCHEMA``) into ``out_dir``.
    ``model_version``: the registry version ``model`` is (its rows' ``model_version``), when
    the caller resolved a reference to it.

    Without calibration: scores only (no masks, overlays, normalised scores or verdicts).
    Maps are not kept in the returned predictions (a folder of 10,000 images would not fit).
    """
    predictor = model if isinstance(model, Predictor) else Predictor.load(model, device, batch_size, engine)
    out = Path(out_dir)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    cal = predictor.calibration
    used: set[str] = set()
    rows: list[Prediction] = []
    written: list[Path] = []
    try:
        for pred in predictor.predict(images, skip_unreadable=skip_unreadable):
            if pred.error is None and cal is not None:
                stem = _unique_stem(pred.path, used)
                pred.mask_path = str(out / f"{stem}_mask.png")
                pred.overlay_path = str(out / f"{stem}_overlay.png")
                written += [Path(pred.mask_path), Path(pred.overlay_path)]
                write_mask(written[-2], pred.mask)
                write_overlay(written[-1], pred.image, cal.normalize_map(pred.anomaly_map))
            pred.anomaly_map = pred.mask = pred.image = None
            pred.model_version = model_version
            rows.append(pred)
    except BaseException:
        # A call that stops (an unreadable file without skip_unreadable) leaves no partial
        # output behind: what it wrote goes, and the folder too when it made it.
        for path in written:
            path.unlink(missing_ok=True)
        if created and not any(out.iterdir()):
            out.rmdir()
        raise
    report = PredictionReport(rows, out / f"{TABLE_NAME}.csv", out / f"{TABLE_NAME}.parquet")
    table = pa.Table.from_pylist([p.row() for p in rows], schema=PREDICTIONS_SCHEMA)
    pq.write_table(table, report.parquet_path)
    pacsv.write_csv(table, report.csv_path, pacsv.WriteOptions(quoting_style="needed"))
    scored = len(rows) - report.n_skipped
    log.info("%d image%s scored, %d skipped; %s", scored, "" if scored == 1 else "s", report.n_skipped,
             report.csv_path)
    return report
