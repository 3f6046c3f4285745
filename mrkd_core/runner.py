"""The unit of work the flows fan out: train + evaluate one (dataset, category, config).

Work is keyed by ``<dataset>/<category>/<config_hash>``. A key whose run directory
holds a valid manifest (in any run) is complete: rerunning skips it unless forced.
Checkpoints live under the key, not the run, so a task that died, or a later run of
the same key, resumes where training stopped.

``force`` means "train this key again, from scratch, in this run" (e.g. the nightly
retraining that catches regressions in the code): complete results of *other* runs
and the key's shared checkpoints are ignored. Its checkpoints go to a folder of its
own (``checkpoints/<key>/forced/<run_id>/``), so a forced task that dies still resumes
on retry, and are deleted once the run directory is complete. A complete result of the
*same* run still counts, so retrying a forced flow run does not redo finished keys.

Store layout written here (see docs/storage.md)::

    checkpoints/<dataset>/<category>/<config_hash>/epoch-NNNN.pt (+ .sha256.json)
    checkpoints/<dataset>/<category>/<config_hash>/forced/<run_id>/...  (forced runs, removed when done)
    runs/<run_id>/<dataset>/<category>/<config_hash>/
        config.json model.pt metrics.parquet scores.parquet maps.npz train.json manifest.json (last)
    tables/metrics/dataset=<d>/run_id=<r>/<category>-<variant>-<hash>.parquet
    tables/scores/dataset=<d>/run_id=<r>/<category>-<variant>-<hash>.parquet
"""

from __future__ import annotations

import io
import logging
import platform
from typing import Any

import numpy as np
import pandas as pd
import torch

import mrkd_core
from mrkd_core.claims import KeyClaim
from mrkd_core.data import get_dataset
from mrkd_core.errors import StorageError
from mrkd_core.evaluate import evaluate, scales_key
from mrkd_core.model_io import save_model
from mrkd_core.results import (
    ABSENT_COLUMN,
    MANIFEST,
    METRIC_COLUMNS,
    METRICS_SCHEMA,
    PARTITION_COLUMNS,
    SCORES_SCHEMA,
    cfg_columns,
    git_revision,
    is_complete,
    parquet_bytes,
    partition_bytes,
    partition_path,
    read_parquet_bytes,
    read_partitions,
    utcnow,
    write_manifest,
)
from mrkd_core.revision import TRAINING_REVISION, stored_revision
from mrkd_core.specs import Task
from mrkd_core.storage import ArtifactStore
from mrkd_core.train import train

log = logging.getLogger(__name__)

__all__ = ["PARTITION_COLUMNS", "check_no_collision", "find_complete", "key_path", "read_maps",
           "read_metrics", "read_scores", "run_dir", "train_evaluate"]

MAPS_PER_CATEGORY = 6  # test images whose maps are kept for the report's Fig. 7 grid
# The skip rule checks objects above this size by size only (see results.verify_manifest):
# metrics, scores, maps and configs are hashed; a WRN50 model.pt (~0.5 GB) is not downloaded.
SKIP_CHECK_HASH_BYTES = 64 * 1024 * 1024


def key_path(task: Task) -> str:
    return f"{task.dataset}/{task.category}/{task.config.config_hash()}"


def run_dir(task: Task, run_id: str) -> str:
    return f"runs/{run_id}/{key_path(task)}"


def _table_name(task: Task) -> str:
    return f"{task.category}-{task.variant}-{task.config.config_hash()}.parquet"


def find_complete(store: ArtifactStore, task: Task, run_id: str | None = None) -> str | None:
    """The run directory of a complete result for this key (newest run first), or None.

    ``run_id`` limits the search to that run (what a forced task accepts). A complete
    directory whose ``config.json`` is another config under the same hash raises a
    ``StorageError`` rather than being reused as this task's result.
    """
    runs = [f"runs/{run_id}"] if run_id is not None else sorted(store.list("runs"), reverse=True)
    for run in runs:
        d = f"{run}/{key_path(task)}"
        if store.exists(f"{d}/{MANIFEST}") and is_complete(store, d, SKIP_CHECK_HASH_BYTES):
            check_no_collision(store, task, d)
            revision = stored_revision(store.read_json(f"{d}/{MANIFEST}"))
            if revision != TRAINING_REVISION:
                # Kept as history, never reused: the same config trains differently now.
                log.info("not reusing %s: trained by training revision %d, this code is revision %d",
                         store.uri(d), revision, TRAINING_REVISION)
                continue
            return d
    return None


def check_no_collision(store: ArtifactStore, task: Task, directory: str) -> None:
    """Same hash, different config → refuse, and touch nothing that is stored."""
    rel = f"{directory}/config.json"
    if not store.exists(rel):
        return
    stored = store.read_json(rel)
    stored_h = {k: v for k, v in stored.items() if k in task.config.hashed_dict()}
    if stored_h != task.config.hashed_dict():
        raise StorageError(
            f"config hash collision at {store.uri(rel)}: a different config is stored under hash "
            f"{task.config.config_hash()}; nothing was overwritten — move that folder away"
        )


def _write_tables(store: ArtifactStore, task: Task, run_id: str, metrics: pd.DataFrame, scores: pd.DataFrame,
                  source_run_dir: str) -> None:
    """The hive-partitioned copies that pandas/pyarrow/DuckDB read across runs in one call."""
    for kind, df, schema in (("metrics", metrics, METRICS_SCHEMA), ("scores", scores, SCORES_SCHEMA)):
        df = df.copy()
        df["run_id"] = run_id
        for name in schema.names:  # a column added since a reused run was written is null there
            if name not in df.columns:
                df[name] = None
        rows = df[list(schema.names)].to_dict("records")
        store.write_bytes(partition_path(kind, task.dataset, run_id, _table_name(task)),
                          partition_bytes(rows, schema, source_run_dir))


def _maps_npz(samples, ev, image_size: int) -> bytes:
    """A few test images with their masks and maps, for the report's qualitative figure."""
    from mrkd_core.data.io import load_image

    labels = np.array([s["label"] for s in ev.scores])
    order = list(np.flatnonzero(labels == 1)[: MAPS_PER_CATEGORY - 2]) + list(np.flatnonzero(labels == 0)[:2])
    images = np.stack([load_image(ev.scores[i]["path"], image_size) for i in order]) if order else np.zeros((0,))
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


def train_evaluate(task: Task, store: ArtifactStore, run_id: str, force: bool = False) -> dict[str, Any]:
    """Train, evaluate and store one task; skip it when its key is already complete.

    While it trains, the task holds the key's claim (``mrkd_core.claims``): a concurrent
    call for the same key waits, then skips the key its holder completed.
    """
    done = find_complete(store, task, run_id if force else None)
    if done is not None:
        return _skip(task, store, run_id, done)
    with KeyClaim(store, key_path(task), run_id) as claim:
        done = find_complete(store, task, run_id if force else None)  # the holder we waited for finished it
        if done is not None:
            return _skip(task, store, run_id, done)
        return _train_and_store(task, store, run_id, force, claim)


def _skip(task: Task, store: ArtifactStore, run_id: str, done: str) -> dict[str, Any]:
    metrics = read_parquet_bytes(store.read_bytes(f"{done}/metrics.parquet")).to_pandas()
    scores = read_parquet_bytes(store.read_bytes(f"{done}/scores.parquet")).to_pandas()
    metrics["spec"] = task.spec or metrics["spec"]
    _write_tables(store, task, run_id, metrics, scores, done)
    log.info("skip %s: complete in %s", task.key, store.uri(done))
    return {"key": task.key, "status": "skipped", "run_dir": done, "rows": _rows(metrics, run_id)}


def _train_and_store(task: Task, store: ArtifactStore, run_id: str, force: bool, claim: KeyClaim) -> dict[str, Any]:
    cfg = task.config
    directory = run_dir(task, run_id)
    check_no_collision(store, task, directory)
    ds = get_dataset(task.dataset)
    train_samples = ds.train_samples(task.data_root, task.category)
    test_samples = ds.test_samples(task.data_root, task.category)
    started = utcnow()
    # A manifest here is stale (find_complete rejected it): drop it before rewriting the
    # files it lists, so that no reader takes the directory for complete meanwhile.
    store.remove(f"{directory}/{MANIFEST}")
    store.write_json(f"{directory}/config.json", cfg.to_dict())
    ckpt_dir = f"checkpoints/{key_path(task)}" + (f"/forced/{run_id}" if force else "")
    ckpt = store.sub(ckpt_dir)
    result = train(cfg, train_samples, task.category, checkpoints=ckpt, resume=True)
    ev = evaluate(result.model, cfg, test_samples, keep_maps=True, scale_sets=list(task.scale_sets) or None)
    finished = utcnow()

    common = {
        "spec": task.spec, "narrowed": task.narrowed, "dataset": task.dataset, "category": task.category,
        "config_hash": cfg.config_hash(), "variant": task.variant, **cfg_columns(cfg),
        "teacher_weights": cfg.teacher_weights, "n_train": len(train_samples), "n_test": len(test_samples),
        "n_test_anomalous": int(sum(s.label for s in test_samples)), "train_seconds": result.train_seconds,
        "images_per_second": result.images_per_second, "device": result.device,
        "torch_version": torch.__version__, "mrkd_version": mrkd_core.__version__, "git_revision": git_revision(),
        "started_at": started, "finished_at": finished, "run_id": run_id,
    }
    by_scales = ev.metrics_by_scales or {scales_key(cfg.score_scales): ev.metrics}
    absent = {ABSENT_COLUMN: next(iter(ev.absent.values()), None)}  # results.to_table writes those metrics null
    rows = [{**common, "score_scales": key, **absent, **{m: float(vals.get(m, np.nan)) for m in METRIC_COLUMNS}}
            for key, vals in by_scales.items()]
    score_rows = [{"run_id": run_id, "dataset": task.dataset, "category": task.category,
                   "config_hash": cfg.config_hash(), "variant": task.variant, "path": s["path"],
                   "defect_type": s["defect_type"], "label": int(s["label"]), "score": float(s["score"])}
                  for s in ev.scores]

    files = {
        "model.pt": None,
        "metrics.parquet": parquet_bytes(rows, METRICS_SCHEMA),
        "scores.parquet": parquet_bytes(score_rows, SCORES_SCHEMA),
        "maps.npz": _maps_npz(test_samples, ev, cfg.image_size),
    }
    claim.check()  # a task whose claim was taken over writes nothing
    save_model(result.model, cfg, store, f"{directory}/model.pt",
               extra={"dataset": task.dataset, "category": task.category, "run_id": run_id})
    for name, data in files.items():
        if data is not None:
            store.write_bytes(f"{directory}/{name}", data)
    store.write_json(f"{directory}/train.json", {
        "epoch_losses": result.epoch_losses, "log": result.log, "resumed_from_epoch": result.resumed_from_epoch,
        "eval_seconds": ev.seconds, "host": platform.node(),
    })
    claim.check()
    write_manifest(store, directory, [*files, "config.json", "train.json"],
                   extra={"key": task.key, "run_id": run_id, "variant": task.variant,
                          "training_revision": TRAINING_REVISION})
    _write_tables(store, task, run_id, pd.DataFrame(rows), pd.DataFrame(score_rows), directory)
    if force:
        # Only a crash of this run needed them; the run directory now holds model.pt.
        store.remove(ckpt_dir, recursive=True)
    log.info("done %s: %s", task.key, {k: round(v, 4) for k, v in ev.metrics.items() if v == v})
    return {"key": task.key, "status": "trained", "run_dir": directory, "rows": _rows(pd.DataFrame(rows), run_id),
            "resumed_from_epoch": result.resumed_from_epoch}


def _rows(df: pd.DataFrame, run_id: str) -> list[dict]:
    """JSON-safe summary rows for the flow's logs (not the Parquet source of truth)."""
    keep = ["dataset", "category", "variant", "config_hash", "score_scales", *METRIC_COLUMNS]
    out = []
    for r in df[keep].to_dict("records"):
        r["run_id"] = run_id
        out.append({k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()})
    return out


def read_metrics(store: ArtifactStore, run_id: str | None = None) -> pd.DataFrame:
    """All metrics rows (of one run, or all) from the partitioned tables; complete runs only."""
    return read_partitions(store, "metrics", METRICS_SCHEMA, run_id)


def read_scores(store: ArtifactStore, run_id: str | None = None) -> pd.DataFrame:
    return read_partitions(store, "scores", SCORES_SCHEMA, run_id)


def read_maps(store: ArtifactStore, run_directory: str) -> list[tuple[np.ndarray, np.ndarray | None, np.ndarray]]:
    """(image, mask, map) triples kept for the report (Fig. 7); mask None without pixel ground truth."""
    with np.load(io.BytesIO(store.read_bytes(f"{run_directory}/maps.npz"))) as z:
        if z["images"].ndim != 4:
            return []
        has_masks = bool(z["has_masks"]) if "has_masks" in z.files else True
        return [(z["images"][i], z["masks"][i] if has_masks else None, z["maps"][i])
                for i in range(z["images"].shape[0])]
