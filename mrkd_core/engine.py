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

A complete result is reused only if it was computed from the same inputs
(:mod:`mrkd_core.lineage`): the same config, training data (fingerprint of the images
trained on, after the ``validation_fraction`` hold-out), test data (fingerprint), training
revision and evaluation revision (``layout.task_inputs``). Otherwise the key is
trained again, and the old run directory stays as history. The key's checkpoints are
keyed the same way: ones trained on other data are discarded (``on_other_data=
"restart"``, the flows: the data changed, retrain) or refused with one line naming
``--no-resume`` (``"refuse"``, ``mrkd train``: the user may have pointed at the wrong
folder, and the checkpoints are still good for their own data).

``force`` means "train this key again, from scratch, in this run" (e.g. the nightly
retraining that catches regressions in the code, or ``mrkd train --no-resume``):
complete results of *other* runs and the key's shared checkpoints are ignored. A forced
flow task's checkpoints go to a folder of its own (``checkpoints/<key>/forced/<run_id>/``),
so a forced task that dies still resumes on retry, and are deleted once the run
directory is complete; the key's shared checkpoints are left for later extension.
``mrkd train --no-resume`` (force with ``on_other_data="refuse"``) is the way out of the
refusal above, so it replaces the key's shared checkpoints instead: it trains from
scratch into them (discarded once the training images have decoded), and a later
``mrkd train`` resumes this training, not the refused one. A complete result of the
*same* run still counts, so retrying a forced flow run does not redo finished keys.

``evaluate=False`` (``mrkd train --no-evaluate``: a dataset without a test split) stores
the model and its training record only; such a run directory satisfies later calls that
do not evaluate either, and is trained on (0 epochs, from the checkpoints) and evaluated
by a call that does.

With ``register`` (the flows' model loop, ``mrkd train --register``), every evaluated result,
trained here or reused, is then tracked in the model registry (``mrkd_core.registry``): a
version of the registered model, its promotion decision against the champion, and this
run's ``history`` row; a trained result is registered while the key's claim is still held.

Written here (the layout of ``mrkd_core.layout``, docs/storage.md): ``checkpoints/<key>/``,
``claims/<key>.json`` while training, ``runs/<run_id>/<key>/`` (``config.json model.pt
metrics.parquet scores.parquet maps.npz train.json`` and ``manifest.json`` last) and the
``tables/`` partitions.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable
from typing import Any

import pandas as pd

from mrkd_core.claims import KeyClaim
from mrkd_core.data import Sample, get_dataset
from mrkd_core.evaluate import evaluate
from mrkd_core.inference.calibration import calibrate_after_training, verdict_columns
from mrkd_core.layout import (
    check_no_collision,
    checkpoint_dir,
    find_complete,
    is_evaluated,
    run_dir,
    table_name,
    task_inputs,
)
from mrkd_core.lineage import TRAIN_FINGERPRINT, Lineage
from mrkd_core.model_io import save_model
from mrkd_core.partitioned import METRICS_TABLE, SCORES_TABLE, check_run_id, conform
from mrkd_core.registry.tracking import RegistryOptions, track
from mrkd_core.report_maps import maps_npz
from mrkd_core.results import (
    MANIFEST,
    METRICS_SCHEMA,
    SCORES_SCHEMA,
    metrics_rows,
    parquet_bytes,
    read_parquet_bytes,
    score_rows,
    summary_rows,
    utcnow,
    write_manifest,
)
from mrkd_core.specs import Task
from mrkd_core.storage import ArtifactStore
from mrkd_core.train import EpochProgress, train

log = logging.getLogger(__name__)

__all__ = ["train_evaluate"]

# --------------------------------------------------------------------------- the one path
def train_evaluate(task: Task, store: ArtifactStore, run_id: str, force: bool = False, *, evaluate: bool = True,
                   on_epoch: Callable[[EpochProgress], None] | None = None,
                   on_other_data: str = "restart", register: RegistryOptions | None = None) -> dict[str, Any]:
    """Train, evaluate and store one task; skip it when its key is already complete for the same inputs.

    Returns a JSON-safe record: ``{"key", "status": "trained"|"skipped", "run_dir",
    "rows": [summary rows per fused scale set], "evaluated": bool}`` plus
    ``"resumed_from_epoch"`` when it trained. ``on_epoch`` is passed to :func:`train`
    (progress reports). ``on_other_data``: ``"restart"`` or ``"refuse"`` for checkpoints
    of the key trained on other data (module docstring). While it trains, the task holds
    the key's claim (``mrkd_core.claims``): a concurrent call for the same key waits,
    then skips the key its holder completed. With ``register`` the evaluated result,
    trained or reused, is tracked in the model registry (``mrkd_core.registry.tracking.
    track``: a version, the promotion decision, the run's history row), reported under
    ``"registry"``. Raises ``ConfigError`` for a run id that
    cannot name a folder, ``DataError`` for bad input, ``StorageError`` for a config-hash
    collision, a lost claim or a refused checkpoint; nothing stored before is changed
    either way.
    """
    check_run_id(run_id)
    lineage, train_samples, test_samples = task_inputs(task, evaluate)
    forced_run = run_id if force else None
    done = find_complete(store, task, forced_run, evaluated=evaluate, lineage=lineage)
    if done is not None:
        return _skip(task, store, run_id, done, register, lineage, test_samples)
    with KeyClaim(store, task.key, run_id) as claim:
        # The holder we waited for may have finished it.
        done = find_complete(store, task, forced_run, evaluated=evaluate, lineage=lineage)
        if done is not None:
            return _skip(task, store, run_id, done, register, lineage, test_samples)
        return _train_and_store(task, store, run_id, force, evaluate, claim, on_epoch, on_other_data,
                                lineage, train_samples, test_samples, register)


def _skip(task: Task, store: ArtifactStore, run_id: str, done: str, register: RegistryOptions | None,
          lineage: Lineage, test_samples: list[Sample]) -> dict[str, Any]:
    manifest = store.read_json(f"{done}/{MANIFEST}")
    rows: list[dict] = []
    tracked = None
    if is_evaluated(manifest):
        # Conformed: a run directory of an older version lacks the columns added since (null).
        metrics = conform(read_parquet_bytes(store.read_bytes(f"{done}/metrics.parquet")), METRICS_SCHEMA,
                          store.uri(done)).to_pandas()
        scores = conform(read_parquet_bytes(store.read_bytes(f"{done}/scores.parquet")), SCORES_SCHEMA,
                         store.uri(done)).to_pandas()
        metrics["spec"] = task.spec or metrics["spec"]
        _write_tables(store, task, run_id, metrics, scores, done)
        rows = summary_rows(metrics, run_id)
        if register is not None:
            tracked = track(store, task, run_id, done, metrics.iloc[0].to_dict(), lineage, test_samples, register,
                            "skipped")
    log.info("skip %s: complete in %s", task.key, store.uri(done))
    return {"key": task.key, "status": "skipped", "run_dir": done, "rows": rows, "evaluated": is_evaluated(manifest),
            **({"registry": tracked} if tracked else {})}


def _train_and_store(task: Task, store: ArtifactStore, run_id: str, force: bool, evaluate_test: bool,
                     claim: KeyClaim, on_epoch: Callable[[EpochProgress], None] | None, on_other_data: str,
                     lineage: Lineage, train_samples: list[Sample], test_samples: list[Sample],
                     register: RegistryOptions | None = None) -> dict[str, Any]:
    # The test split was listed (and fingerprinted) before training by task_inputs, so
    # that a bad test split fails in seconds, not after it.
    cfg = task.config
    directory = run_dir(task, run_id)
    check_no_collision(store, task, directory)
    started = utcnow()
    # `mrkd train --no-resume` replaces the key's own checkpoints; a forced flow task uses its own folder.
    replace_checkpoints = force and on_other_data == "refuse"
    ckpt_dir = checkpoint_dir(task, run_id, force and not replace_checkpoints)
    result = train(cfg, train_samples, task.category, checkpoints=store.sub(ckpt_dir),
                   resume=not replace_checkpoints, on_epoch=on_epoch,
                   train_fingerprint=lineage.train_fingerprint, on_other_data=on_other_data)
    ev = (evaluate(result.model, cfg, test_samples, keep_maps=True, scale_sets=list(task.scale_sets) or None,
                   protocol=get_dataset(task.dataset).evaluation_protocol(task.data_root, task.category))
          if evaluate_test else None)
    # Policy auto (docs/inference.md): the false-alarm rate on held-out train/good when
    # validation_fraction holds images out, else F1 on the test split reusing these maps
    # (the calibration records that it was chosen there); None, with a warning, when
    # there is nothing to calibrate on.
    calibration = calibrate_after_training(result.model, cfg, train_samples, test_samples, task.category,
                                           evaluation=ev)
    cal_dict = calibration.to_dict() if calibration is not None else None
    finished = utcnow()
    training = {"n_train": result.n_train, "train_seconds": result.train_seconds,
                "images_per_second": result.images_per_second, "device": result.device}

    files: dict[str, bytes] = {}
    rows: list[dict] = []
    scores: list[dict] = []
    if ev is not None:
        rows = metrics_rows(task, run_id, ev, training, started, finished, lineage)
        scores = score_rows(task, run_id, ev, verdict_columns(cal_dict, [s["score"] for s in ev.scores]))
        files = {"metrics.parquet": parquet_bytes(rows, METRICS_SCHEMA),
                 "scores.parquet": parquet_bytes(scores, SCORES_SCHEMA),
                 "maps.npz": maps_npz(ev, cfg.image_size)}
    claim.check()  # a task whose claim was taken over writes nothing
    # A manifest here is stale (find_complete rejected it): drop it before rewriting the
    # files it lists, so that no reader takes the directory for complete meanwhile.
    store.remove(f"{directory}/{MANIFEST}")
    store.write_json(f"{directory}/config.json", cfg.to_dict())
    save_model(result.model, cfg, store, f"{directory}/model.pt",
               extra={"dataset": task.dataset, "category": task.category, "run_id": run_id,
                      "data_root": task.data_root, TRAIN_FINGERPRINT: lineage.train_fingerprint},
               calibration=cal_dict)
    for name, data in files.items():
        store.write_bytes(f"{directory}/{name}", data)
    store.write_json(f"{directory}/train.json", {
        **training, "epoch_losses": result.epoch_losses, "log": result.log,
        "resumed_from_epoch": result.resumed_from_epoch, "eval_seconds": ev.seconds if ev is not None else None,
        "host": platform.node(), "data_root": task.data_root, TRAIN_FINGERPRINT: lineage.train_fingerprint,
    })
    claim.check()
    write_manifest(store, directory, ["model.pt", *files, "config.json", "train.json"],
                   extra={"key": task.key, "run_id": run_id, "variant": task.variant, **lineage.record()})
    tracked = None
    if ev is not None:
        _write_tables(store, task, run_id, pd.DataFrame(rows), pd.DataFrame(scores), directory)
        if register is not None:  # still under the key's claim: a concurrent trainer of it waits, then skips
            tracked = track(store, task, run_id, directory, rows[0], lineage, test_samples, register, "trained")
    if force and not replace_checkpoints:
        # Only a crash of this run needed them; the run directory now holds model.pt.
        store.remove(ckpt_dir, recursive=True)
    if ev is not None:
        log.info("done %s: %s", task.key, {k: round(v, 4) for k, v in ev.metrics.items() if v == v})
    else:
        log.info("done %s (not evaluated): %s", task.key, store.uri(f"{directory}/model.pt"))
    return {"key": task.key, "status": "trained", "run_dir": directory,
            "rows": summary_rows(pd.DataFrame(rows), run_id) if rows else [], "evaluated": ev is not None,
            "resumed_from_epoch": result.resumed_from_epoch,
            "calibration": calibration.summary() if calibration is not None else None,
            **({"registry": tracked} if tracked else {})}


def _write_tables(store: ArtifactStore, task: Task, run_id: str, metrics: pd.DataFrame, scores: pd.DataFrame,
                  source_run_dir: str) -> None:
    """The hive-partitioned copies that pandas/pyarrow/DuckDB read across runs in one call."""
    for table, df in ((METRICS_TABLE, metrics), (SCORES_TABLE, scores)):
        df = df.copy()
        df["run_id"] = run_id
        for name in table.schema.names:  # a column added since a reused run was written is null there
            if name not in df.columns:
                df[name] = None
        table.write(store, df[list(table.schema.names)].to_dict("records"), table_name(task), source_run_dir)
