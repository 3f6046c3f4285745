"""Train, evaluate and store one (dataset, category, config): the one path of the CLI and the flows.

``train_evaluate(task, store, run_id)`` is what ``mrkd train`` runs per category and what
every Prefect task of the flows runs: train (resuming from the key's checkpoints),
evaluate the test split, write the run directory with its manifest last, and copy the
rows into the hive-partitioned tables. Paths and the skip rule are ``mrkd_core.layout``
(where ``mrkd evaluate`` also finds the models it scores, ``find_models``); rows are
built by ``mrkd_core.results`` next to their schemas.

Work is keyed by ``Task.key`` = ``<dataset>/<category>/<config_hash>``. A key whose run
directory holds a valid manifest (in any run) is complete: calling again skips it
unless forced. Checkpoints live under the key, not the run, so a task that died, or a
later run of the same key, resumes where training stopped.

``force`` means "train this key again, from scratch, in this run" (e.g. the nightly
retraining that catches regressions in the code, or ``mrkd train --no-resume``):
complete results of *other* runs and the key's shared checkpoints are ignored. Its
checkpoints go to a folder of its own (``checkpoints/<key>/forced/<run_id>/``), so a
forced task that dies still resumes on retry, and are deleted once the run directory is
complete. A complete result of the *same* run still counts, so retrying a forced flow
run does not redo finished keys.

``evaluate=False`` (``mrkd train --no-evaluate``: a dataset without a test split) stores
the model and its training record only; such a run directory satisfies later calls that
do not evaluate either, and is trained on (0 epochs, from the checkpoints) and evaluated
by a call that does.

Written here (the layout of ``mrkd_core.layout``, docs/storage.md): ``checkpoints/<key>/``,
``claims/<key>.json`` while training, ``runs/<run_id>/<key>/`` (``config.json model.pt
metrics.parquet scores.parquet maps.npz train.json`` and ``manifest.json`` last) and the
``tables/`` partitions.
"""

from __future__ import annotations

import io
import logging
import platform
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from mrkd_core.claims import KeyClaim
from mrkd_core.data import get_dataset
from mrkd_core.data.subsample import subsample_test, subsample_train
from mrkd_core.evaluate import EvalResult, evaluate
from mrkd_core.layout import check_no_collision, checkpoint_dir, find_complete, is_evaluated, run_dir, table_name
from mrkd_core.model_io import save_model
from mrkd_core.results import (
    MANIFEST,
    METRICS_SCHEMA,
    SCORES_SCHEMA,
    metrics_rows,
    parquet_bytes,
    partition_bytes,
    partition_path,
    read_parquet_bytes,
    score_rows,
    summary_rows,
    utcnow,
    write_manifest,
)
from mrkd_core.revision import TRAINING_REVISION
from mrkd_core.specs import Task
from mrkd_core.storage import ArtifactStore
from mrkd_core.train import EpochProgress, train

log = logging.getLogger(__name__)

__all__ = ["train_evaluate"]

MAPS_PER_CATEGORY = 6  # test images whose maps are kept for the report's Fig. 7 grid


# --------------------------------------------------------------------------- the one path
def train_evaluate(task: Task, store: ArtifactStore, run_id: str, force: bool = False, *, evaluate: bool = True,
                   on_epoch: Callable[[EpochProgress], None] | None = None) -> dict[str, Any]:
    """Train, evaluate and store one task; skip it when its key is already complete.

    Returns a JSON-safe record: ``{"key", "status": "trained"|"skipped", "run_dir",
    "rows": [summary rows per fused scale set], "evaluated": bool}`` plus
    ``"resumed_from_epoch"`` when it trained. ``on_epoch`` is passed to :func:`train`
    (progress reports). While it trains, the task holds the key's claim
    (``mrkd_core.claims``): a concurrent call for the same key waits, then skips the key
    its holder completed. Raises ``DataError`` for bad input, ``StorageError`` for a
    config-hash collision or a lost claim; nothing stored before is changed either way.
    """
    forced_run = run_id if force else None
    done = find_complete(store, task, forced_run, evaluated=evaluate)
    if done is not None:
        return _skip(task, store, run_id, done)
    with KeyClaim(store, task.key, run_id) as claim:
        done = find_complete(store, task, forced_run, evaluated=evaluate)  # the holder we waited for finished it
        if done is not None:
            return _skip(task, store, run_id, done)
        return _train_and_store(task, store, run_id, force, evaluate, claim, on_epoch)


def _skip(task: Task, store: ArtifactStore, run_id: str, done: str) -> dict[str, Any]:
    manifest = store.read_json(f"{done}/{MANIFEST}")
    rows: list[dict] = []
    if is_evaluated(manifest):
        metrics = read_parquet_bytes(store.read_bytes(f"{done}/metrics.parquet")).to_pandas()
        scores = read_parquet_bytes(store.read_bytes(f"{done}/scores.parquet")).to_pandas()
        metrics["spec"] = task.spec or metrics["spec"]
        _write_tables(store, task, run_id, metrics, scores, done)
        rows = summary_rows(metrics, run_id)
    log.info("skip %s: complete in %s", task.key, store.uri(done))
    return {"key": task.key, "status": "skipped", "run_dir": done, "rows": rows, "evaluated": is_evaluated(manifest)}


def _train_and_store(task: Task, store: ArtifactStore, run_id: str, force: bool, evaluate_test: bool,
                     claim: KeyClaim, on_epoch: Callable[[EpochProgress], None] | None) -> dict[str, Any]:
    cfg = task.config
    directory = run_dir(task, run_id)
    check_no_collision(store, task, directory)
    ds = get_dataset(task.dataset)
    train_samples = subsample_train(ds.train_samples(task.data_root, task.category), cfg.train_subsample)
    # Listed before training, so that a bad test split fails in seconds, not after it.
    test_samples = (subsample_test(ds.test_samples(task.data_root, task.category), cfg.test_subsample)
                    if evaluate_test else [])
    started = utcnow()
    ckpt_dir = checkpoint_dir(task, run_id, force)
    result = train(cfg, train_samples, task.category, checkpoints=store.sub(ckpt_dir), resume=True,
                   on_epoch=on_epoch)
    ev = (evaluate(result.model, cfg, test_samples, keep_maps=True, scale_sets=list(task.scale_sets) or None)
          if evaluate_test else None)
    finished = utcnow()
    training = {"n_train": len(train_samples), "train_seconds": result.train_seconds,
                "images_per_second": result.images_per_second, "device": result.device}

    files: dict[str, bytes] = {}
    rows: list[dict] = []
    scores: list[dict] = []
    if ev is not None:
        rows = metrics_rows(task, run_id, ev, training, started, finished)
        scores = score_rows(task, run_id, ev)
        files = {"metrics.parquet": parquet_bytes(rows, METRICS_SCHEMA),
                 "scores.parquet": parquet_bytes(scores, SCORES_SCHEMA),
                 "maps.npz": _maps_npz(ev, cfg.image_size)}
    claim.check()  # a task whose claim was taken over writes nothing
    # A manifest here is stale (find_complete rejected it): drop it before rewriting the
    # files it lists, so that no reader takes the directory for complete meanwhile.
    store.remove(f"{directory}/{MANIFEST}")
    store.write_json(f"{directory}/config.json", cfg.to_dict())
    save_model(result.model, cfg, store, f"{directory}/model.pt",
               extra={"dataset": task.dataset, "category": task.category, "run_id": run_id,
                      "data_root": task.data_root})
    for name, data in files.items():
        store.write_bytes(f"{directory}/{name}", data)
    store.write_json(f"{directory}/train.json", {
        **training, "epoch_losses": result.epoch_losses, "log": result.log,
        "resumed_from_epoch": result.resumed_from_epoch, "eval_seconds": ev.seconds if ev is not None else None,
        "host": platform.node(), "data_root": task.data_root,
    })
    claim.check()
    write_manifest(store, directory, ["model.pt", *files, "config.json", "train.json"],
                   extra={"key": task.key, "run_id": run_id, "variant": task.variant,
                          "training_revision": TRAINING_REVISION})
    if ev is not None:
        _write_tables(store, task, run_id, pd.DataFrame(rows), pd.DataFrame(scores), directory)
    if force:
        # Only a crash of this run needed them; the run directory now holds model.pt.
        store.remove(ckpt_dir, recursive=True)
    if ev is not None:
        log.info("done %s: %s", task.key, {k: round(v, 4) for k, v in ev.metrics.items() if v == v})
    else:
        log.info("done %s (not evaluated): %s", task.key, store.uri(f"{directory}/model.pt"))
    return {"key": task.key, "status": "trained", "run_dir": directory,
            "rows": summary_rows(pd.DataFrame(rows), run_id) if rows else [], "evaluated": ev is not None,
            "resumed_from_epoch": result.resumed_from_epoch}


def _write_tables(store: ArtifactStore, task: Task, run_id: str, metrics: pd.DataFrame, scores: pd.DataFrame,
                  source_run_dir: str) -> None:
    """The hive-partitioned copies that pandas/pyarrow/DuckDB read across runs in one call."""
    for kind, df, schema in (("metrics", metrics, METRICS_SCHEMA), ("scores", scores, SCORES_SCHEMA)):
        df = df.copy()
        df["run_id"] = run_id
        for name in schema.names:  # a column added since a reused run was written is null there
            if name not in df.columns:
                df[name] = None
        table_rows = df[list(schema.names)].to_dict("records")
        store.write_bytes(partition_path(kind, task.dataset, run_id, table_name(task)),
                          partition_bytes(table_rows, schema, source_run_dir))


# --------------------------------------------------------------------------- maps (Fig. 7)
def _maps_npz(ev: EvalResult, image_size: int) -> bytes:
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
