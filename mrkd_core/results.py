"""What a run directory holds: result tables (explicit pyarrow schemas), the rows that fill
them, the report's qualitative maps (Fig. 7: ``maps_npz`` writes them, ``read_maps`` reads
them back), and run manifests.

The metrics and per-image score rows are built here, next to their schemas
(``metrics_rows``, ``score_rows``), by every path that writes them: the engine's run
directories and tables, and ``mrkd evaluate``'s JSON/CSV. The partitioned copies
(``tables/``) are written and read back by :mod:`mrkd_core.partitioned` (``read_metrics``, ``read_scores``).

A run directory's outputs become visible only when complete: ``manifest.json`` is
written last and lists every object with its size and sha256. Readers ignore run
directories without a valid manifest, so a crash or a storage outage mid-write never
yields a half-written result in a report.
"""


from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import math
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mrkd_core.config import MRKDConfig
from mrkd_core.data.io import load_image
from mrkd_core.errors import StorageError
from mrkd_core.metrics import PIXEL_METRICS, PROTOCOL_METRICS
from mrkd_core.storage import ArtifactStore

if TYPE_CHECKING:
    import pandas as pd

    from mrkd_core.evaluate import EvalResult
    from mrkd_core.lineage import Lineage
    from mrkd_core.specs import Task

log = logging.getLogger(__name__)

METRIC_COLUMNS = ("image_auroc", "pixel_auroc", "au_pro", "au_pro_per_image", "f1_max_image", "f1_max_pixel")
ABSENT_COLUMN = "pixel_metrics_absent"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "mrkd-manifest/1"


def _cfg_type(value: Any) -> pa.DataType:
    if isinstance(value, bool):
        return pa.bool_()
    if isinstance(value, int):
        return pa.int64()
    if isinstance(value, float):
        return pa.float64()
    return pa.string()  # strings, and tuples stored as 'a,b'


def _cfg_fields() -> list[pa.Field]:
    return [pa.field(f"cfg_{f.name}", _cfg_type(f.default)) for f in dataclasses.fields(MRKDConfig)]


_TS = pa.timestamp("us", tz="UTC")

METRICS_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string()),
        pa.field("spec", pa.string()),
        pa.field("narrowed", pa.bool_()),
        pa.field("dataset", pa.string()),
        pa.field("category", pa.string()),
        pa.field("config_hash", pa.string()),
        pa.field("variant", pa.string()),
        pa.field("score_scales", pa.string()),
        *_cfg_fields(),
        pa.field("teacher_weights", pa.string()),
        *[pa.field(m, pa.float64()) for m in METRIC_COLUMNS],
        # null: every metric computed (NaN = undefined); else why the pixel metrics are
        # absent (null) — an image-labelled test set (ELPV, a folder without ground_truth/).
        pa.field(ABSENT_COLUMN, pa.string()),
        # A dataset protocol's own metrics (MVTec AD 2, MVTec LOCO AD; mrkd_core.data.base.EvaluationProtocol):
        # null for every other dataset, for the extra fusions of Table 7 and in rows written before them.
        *[pa.field(m, pa.float64()) for m in PROTOCOL_METRICS],
        pa.field("n_train", pa.int64()),
        pa.field("n_test", pa.int64()),
        pa.field("n_test_anomalous", pa.int64()),
        pa.field("train_seconds", pa.float64()),
        pa.field("images_per_second", pa.float64()),
        pa.field("device", pa.string()),
        pa.field("torch_version", pa.string()),
        pa.field("mrkd_version", pa.string()),
        pa.field("git_revision", pa.string()),
        pa.field("started_at", _TS),
        pa.field("finished_at", _TS),
        # What the row was computed from (mrkd_core.lineage); null in rows written before them.
        pa.field("train_fingerprint", pa.string()),
        pa.field("test_fingerprint", pa.string()),
        pa.field("training_revision", pa.int64()),
    ]
)

# The score columns that come from the model's calibration (null where it has none).
VERDICT_COLUMNS = ("normalized_score", "verdict", "threshold", "on_evaluation_images")

SCORES_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string()),
        pa.field("dataset", pa.string()),
        pa.field("category", pa.string()),
        pa.field("config_hash", pa.string()),
        pa.field("variant", pa.string()),
        pa.field("path", pa.string()),
        pa.field("defect_type", pa.string()),
        pa.field("label", pa.int8()),
        pa.field("score", pa.float64()),
        # From the model's calibration (mrkd_core.inference); null where it is uncalibrated
        # and in rows stored before these columns existed.
        pa.field("normalized_score", pa.float64()),
        pa.field("verdict", pa.string()),
        pa.field("threshold", pa.float64()),  # the image threshold, on the raw score
        # True: the threshold was chosen on this test split (the calibration's
        # on_evaluation_images), so the verdicts are no unbiased test of it; the report says so.
        pa.field("on_evaluation_images", pa.bool_()),
    ]
)


def cfg_columns(cfg: MRKDConfig) -> dict[str, Any]:
    """Every config field as a ``cfg_`` column; tuples as 'a,b' strings."""
    return {f"cfg_{k}": (",".join(str(x) for x in v) if isinstance(v, (list, tuple)) else v)
            for k, v in cfg.to_dict().items()}


def metrics_rows(task: Task, run_id: str, ev: EvalResult, training: dict[str, Any], started_at: datetime,
                 finished_at: datetime, lineage: Lineage) -> list[dict[str, Any]]:
    """``METRICS_SCHEMA`` rows of one evaluated task: one per fused scale set (Table 7), the config's first.

    ``training`` is the training record (``n_train``, ``train_seconds``,
    ``images_per_second``, ``device``; what the run directory's ``train.json`` holds; a
    field it lacks is null). ``lineage``: what the model was trained and evaluated on
    (``mrkd_core.lineage``; its fingerprints and training revision become columns).
    Metrics ``ev`` reports absent (pixel metrics of a test set without masks) are stored
    null with the reason in ``pixel_metrics_absent``; other metrics missing from ``ev`` are NaN.
    """
    import torch

    import mrkd_core
    from mrkd_core.evaluate import scales_key

    cfg = task.config
    common = {
        "run_id": run_id, "spec": task.spec, "narrowed": task.narrowed, "dataset": task.dataset,
        "category": task.category, "config_hash": cfg.config_hash(), "variant": task.variant, **cfg_columns(cfg),
        "teacher_weights": cfg.teacher_weights, "n_train": _maybe(int, training.get("n_train")),
        "n_test": len(ev.scores), "n_test_anomalous": int(sum(s["label"] for s in ev.scores)),
        "train_seconds": _maybe(float, training.get("train_seconds")),
        "images_per_second": _maybe(float, training.get("images_per_second")),
        "device": _maybe(str, training.get("device")), "torch_version": torch.__version__,
        "mrkd_version": mrkd_core.__version__,
        "git_revision": git_revision(), "started_at": started_at, "finished_at": finished_at,
        "test_fingerprint": None, **lineage.record(),  # (record() names the test data when it is known)
    }
    main_key = scales_key(cfg.score_scales)
    by_scales = ev.metrics_by_scales or {main_key: ev.metrics}
    absent = {ABSENT_COLUMN: next(iter(ev.absent.values()), None)}  # to_table writes those metrics null
    return [{**common, "score_scales": key, **absent, **{m: float(vals.get(m, math.nan)) for m in METRIC_COLUMNS},
             **{m: (_maybe(float, ev.protocol_metrics.get(m)) if key == main_key else None) for m in PROTOCOL_METRICS}}
            for key, vals in by_scales.items()]


def reported_metrics(row: dict[str, Any]) -> dict[str, Any]:
    """The metrics of one metrics row as a person reads them: the paper's six, then the dataset protocol's it has."""
    return {**{m: row.get(m) for m in METRIC_COLUMNS},
            **{m: row[m] for m in PROTOCOL_METRICS if row.get(m) is not None}}


def _maybe(kind: type, value: Any) -> Any:
    return None if value is None else kind(value)


def score_rows(task: Task, run_id: str, ev: EvalResult,
               verdicts: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """``SCORES_SCHEMA`` rows: one per test image, its image score (Eq. 6) of the config's fusion.

    ``verdicts``: ``{"normalized_score", "verdict", "threshold", "on_evaluation_images"}`` per
    image from the model's calibration (``mrkd_core.inference.calibration.verdict_columns``);
    None leaves them null.
    """
    config_hash = task.config.config_hash()
    verdicts = verdicts or [dict.fromkeys(VERDICT_COLUMNS)] * len(ev.scores)
    return [{"run_id": run_id, "dataset": task.dataset, "category": task.category, "config_hash": config_hash,
             "variant": task.variant, "path": s["path"], "defect_type": s["defect_type"], "label": int(s["label"]),
             "score": float(s["score"]), **v} for s, v in zip(ev.scores, verdicts)]


def summary_rows(metrics: pd.DataFrame, run_id: str) -> list[dict[str, Any]]:
    """JSON-safe summary of metrics rows (key columns + metrics, NaN → None) for logs and task records.

    Not the source of truth: that is the Parquet written from :func:`metrics_rows`.
    """
    keep = ["dataset", "category", "variant", "config_hash", "score_scales", *METRIC_COLUMNS,
            *(m for m in PROTOCOL_METRICS if m in metrics.columns and metrics[m].notna().any())]
    out = []
    for r in metrics[keep].to_dict("records"):
        r["run_id"] = run_id
        out.append({k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()})
    return out


def git_revision() -> str:
    """The checkout's commit, or '' outside a git checkout (e.g. an installed image)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5, check=False)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def utcnow() -> datetime:
    """Now, timezone-aware UTC (every stored timestamp)."""
    return datetime.now(timezone.utc)


def _stored_values(row: dict, schema: pa.Schema) -> dict:
    """One row as stored: null strings stay null, and absent metrics are null, not NaN.

    pandas reads a null string back as NaN, so rows copied from a stored table (a skipped
    task's) need the first rule. The second keeps "not computed" (null, with the reason in
    ``pixel_metrics_absent``) apart from "undefined" (NaN, e.g. a test set of one class).
    """
    out = {n: row.get(n) for n in schema.names}
    for f in schema:
        value = out[f.name]
        if pa.types.is_string(f.type) and isinstance(value, float) and math.isnan(value):
            out[f.name] = None
    if isinstance(out.get(ABSENT_COLUMN), str):
        out.update({m: None for m in PIXEL_METRICS})
    return out


def to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows → a table with exactly ``schema``'s columns; a missing column is a bug, so it raises."""
    missing = [n for n in schema.names if rows and n not in rows[0]]
    if missing:
        raise ValueError(f"result rows lack columns {missing}")
    return pa.Table.from_pylist([_stored_values(r, schema) for r in rows], schema=schema)


def parquet_bytes(rows: list[dict], schema: pa.Schema) -> bytes:
    """``rows`` as one Parquet file of ``schema`` (missing columns null), in memory."""
    buf = io.BytesIO()
    pq.write_table(to_table(rows, schema), buf)
    return buf.getvalue()


def read_parquet_bytes(data: bytes) -> pa.Table:
    """A Parquet file held in memory as an Arrow table."""
    return pq.read_table(io.BytesIO(data))


# --------------------------------------------------------------------------- manifests
def write_manifest(store: ArtifactStore, run_dir: str, files: list[str], extra: dict | None = None) -> dict:
    """List ``files`` (relative to ``run_dir``) with size and sha256, written last."""
    entries = {}
    for rel in sorted(files):
        data = store.read_bytes(f"{run_dir}/{rel}")
        entries[rel] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest = {"format": MANIFEST_FORMAT, "files": entries, "written_at": utcnow().isoformat(), **(extra or {})}
    store.write_json(f"{run_dir}/{MANIFEST}", manifest)
    return manifest


def verify_manifest(store: ArtifactStore, run_dir: str, max_hash_bytes: int | None = None) -> list[str]:
    """Problems of a run directory ([] = complete and intact).

    Every listed object must exist with the listed size and sha256. ``max_hash_bytes``
    trades depth for cost: objects larger than that are checked by size only (a HEAD
    request, not a download). The skip rule uses it so that planning a 15-category
    WRN50 rerun does not download ~0.5 GB of ``model.pt`` per category from S3; an
    audit calls it without the limit.
    """
    if not store.exists(f"{run_dir}/{MANIFEST}"):
        return [f"{store.uri(run_dir)}: no manifest (incomplete run)"]
    try:
        manifest = store.read_json(f"{run_dir}/{MANIFEST}")
    except (StorageError, FileNotFoundError) as exc:
        return [f"{store.uri(run_dir)}: unreadable manifest ({exc})"]
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files or manifest.get("format") != MANIFEST_FORMAT:
        return [f"{store.uri(run_dir)}: manifest is not an {MANIFEST_FORMAT} file list"]
    problems = []
    for rel, meta in files.items():
        path = f"{run_dir}/{rel}"
        size = meta.get("size") if isinstance(meta, dict) else None
        if max_hash_bytes is not None and isinstance(size, int) and size > max_hash_bytes:
            if not store.exists(path):
                problems.append(f"{store.uri(path)}: listed in the manifest but missing")
            elif store.size(path) != size:
                problems.append(f"{store.uri(path)}: size differs from the manifest")
            continue
        try:
            data = store.read_bytes(path)
        except FileNotFoundError:
            problems.append(f"{store.uri(path)}: listed in the manifest but missing")
            continue
        if len(data) != size or hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            problems.append(f"{store.uri(path)}: size or sha256 differs from the manifest")
    return problems


def is_complete(store: ArtifactStore, run_dir: str, max_hash_bytes: int | None = None) -> bool:
    """Whether ``run_dir`` has a manifest and every object it lists is intact (``verify_manifest`` finds nothing).

    ``max_hash_bytes`` as in :func:`verify_manifest`. Reads the manifest and the listed
    objects; raises ``StorageError`` only when the store itself fails.
    """
    return not verify_manifest(store, run_dir, max_hash_bytes)


# --------------------------------------------------------------------------- the report's maps (Fig. 7)
MAPS_PER_CATEGORY = 6  # test images whose maps are kept for the report's Fig. 7 grid


def maps_npz(ev: EvalResult, image_size: int) -> bytes:
    """``maps.npz`` of a run: the first ``MAPS_PER_CATEGORY - 2`` anomalous and the first 2 normal test
    images of ``ev``, each at ``image_size`` (a tiled model's at their own size, that of its maps),
    with its mask and map (float32); ``has_masks`` False when the masks are zeros standing in for
    no pixel ground truth."""
    labels = np.array([s["label"] for s in ev.scores])
    order = list(np.flatnonzero(labels == 1)[: MAPS_PER_CATEGORY - 2]) + list(np.flatnonzero(labels == 0)[:2])
    size = image_size if ev.maps is None or ev.maps.shape[1:] == (image_size, image_size) else None
    images = np.stack([load_image(ev.scores[i]["path"], size) for i in order]) if order else np.zeros((0,))
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        images=images,
        has_masks=np.array(not ev.absent),  # False: the masks are zeros standing in for no ground truth
        masks=ev.masks[order] if order else np.zeros((0,)),
        maps=ev.maps[order].astype(np.float32) if order else np.zeros((0,)),
        paths=np.array([ev.scores[i]["path"] for i in order]),
        labels=labels[order] if order else np.zeros((0,)),
    )
    return buf.getvalue()


def read_maps(store: ArtifactStore, run_directory: str) -> list[tuple[np.ndarray, np.ndarray | None, np.ndarray]]:
    """(image, mask, map) triples kept for the report (Fig. 7); mask None without pixel ground truth.

    Order: anomalous test images first, then normal ones (as the engine keeps them). Without
    pixel ground truth a figure has no mask to show where the defect is, so there the
    first three are two anomalous images and then a normal one (``IMAGE_LABELLED_ORDER``):
    the heatmaps, on one colour scale, show the contrast. FileNotFoundError without
    ``maps.npz``. Files written before ``has_masks`` existed had masks.
    """
    with np.load(io.BytesIO(store.read_bytes(f"{run_directory}/maps.npz"))) as z:
        if z["images"].ndim != 4:
            return []
        has_masks = bool(z["has_masks"]) if "has_masks" in z.files else True
        order = list(range(z["images"].shape[0]))
        if not has_masks and "labels" in z.files:
            order = image_labelled_order(z["labels"].astype(int).tolist())
        return [(z["images"][i], z["masks"][i] if has_masks else None, z["maps"][i]) for i in order]


#: Labels of the first rows of an image-labelled figure (1 = anomalous): see ``read_maps``.
IMAGE_LABELLED_ORDER = (1, 1, 0)


def image_labelled_order(labels: list[int]) -> list[int]:
    """Indices of ``labels`` with the first rows following ``IMAGE_LABELLED_ORDER`` where the labels allow."""
    pools = {0: [i for i, lab in enumerate(labels) if lab == 0], 1: [i for i, lab in enumerate(labels) if lab == 1]}
    first = []
    for want in IMAGE_LABELLED_ORDER:
        if pools[want]:
            first.append(pools[want].pop(0))
    return first + [i for i in range(len(labels)) if i not in first]
