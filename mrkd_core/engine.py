"""Train, evaluate and store one (dataset, category, config): the one path of the CLI and the flows.

``train_evaluate(task, store, run_id)`` is what ``mrkd train`` runs per category and what
every Prefect task of the flows runs: train (resuming from the key's checkpoints),
evaluate the test split, write the run directory with its manifest last, and copy the
rows into the partitioned tables. Paths and the skip rule are ``mrkd_core.layout``
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
trained again, and the old run directory stays as it is. The key's checkpoints are
keyed the same way: ones trained on other data are discarded (``CheckpointMode.RESUME``,
``mrkd train`` and the flows: the images changed, so a new model is trained on them),
and the training says what changed since the result it replaces (``layout.replaced_result``).
Before anything is trained or stored, the task's images pass the header checks of
``mrkd data check`` (``data.validate.require_trainable``).

Nothing stored is rewritten (docs/storage.md, "Stored results never change"): a result
is recorded under the run id, or under ``<run_id>.<n>`` when that run already holds
another result of the key (``layout.record_run_id``, decided under the key's claim); a
complete run directory and a table file are written once, history rows appended.

A forced mode means "train this key again, from scratch, in this run" (e.g. the nightly
retraining that catches regressions in the code, or ``mrkd train --no-resume``):
complete results of *other* runs and the key's shared checkpoints are ignored. A forced
flow task (``FORCED_RUN``) keeps its checkpoints in a folder of its own
(``checkpoints/<key>/forced/<run_id>/``), so a forced task that dies still resumes on
retry, and deletes them once the run directory is complete; the key's shared checkpoints
are left for later extension. ``mrkd train --no-resume`` (``REPLACE``) replaces the key's
shared checkpoints instead: it trains from scratch into them (discarded once the training
images have decoded), and a later ``mrkd train`` of the same images resumes this training.
A complete result of the *same* run (or its ``<run_id>.<n>``) still counts, so retrying a
forced flow run does not redo finished keys.

``evaluate=False`` (``mrkd train --no-evaluate``: a dataset without a test split) stores
the model and its training record only; such a run directory satisfies later calls that
do not evaluate either, and is trained on (0 epochs, from the checkpoints) and evaluated
by a call that does.

With ``register`` (the flows' model loop, ``mrkd train --register``), every evaluated result,
trained here or reused, is then tracked in the model registry (``mrkd_core.registry``): a
version of the registered model, its promotion decision against the champion, and this
run's ``history`` row; a trained result is registered while the key's claim is still held.
The manifest records whether this run registers (``registering_run``): a result of a run
that did not is never registered by a later one (``registry.tracking.track``).

Written here (the layout of ``mrkd_core.layout``, docs/storage.md): ``checkpoints/<key>/``,
``claims/<key>.json`` while training, ``runs/<run_id>/<key>/`` (``config.json model.pt
metrics.parquet scores.parquet maps.npz train.json`` and ``manifest.json`` last:
``layout.write_run_directory``) and the ``tables/`` partitions. What became of the task
is one :class:`~mrkd_core.specs.TaskOutcome`.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Sequence

import pandas as pd

from mrkd_core.checkpoint import CheckpointMode
from mrkd_core.claims import KeyClaim
from mrkd_core.data.base import evaluation_inputs
from mrkd_core.data.validate import require_trainable
from mrkd_core.evaluate import evaluate
from mrkd_core.inference.calibration import calibrate_after_training, verdict_columns
from mrkd_core.layout import (
    TRAIN_FILES,
    TRAIN_RECORD,
    TaskInputs,
    check_no_collision,
    checkpoint_dir,
    find_complete,
    is_evaluated,
    record_run_id,
    replaced_result,
    run_dir,
    table_name,
    task_inputs,
    write_run_directory,
)
from mrkd_core.lineage import TRAIN_FINGERPRINT
from mrkd_core.model_io import model_bytes
from mrkd_core.partitioned import METRICS_TABLE, SCORES_TABLE, check_run_id, conform
from mrkd_core.progress import EpochReporter
from mrkd_core.registry.tracking import REGISTERING_RUN, RegistryOptions, track
from mrkd_core.results import (
    MANIFEST,
    METRICS_SCHEMA,
    SCORES_SCHEMA,
    maps_npz,
    metrics_rows,
    parquet_bytes,
    read_parquet_bytes,
    score_rows,
    summary_rows,
    utcnow,
)
from mrkd_core.specs import SKIPPED, TRAINED, Task, TaskOutcome
from mrkd_core.storage import ArtifactStore, json_bytes
from mrkd_core.train import train

log = logging.getLogger(__name__)

__all__ = ["train_evaluate"]


# --------------------------------------------------------------------------- the one path
def train_evaluate(task: Task, store: ArtifactStore, run_id: str, mode: CheckpointMode = CheckpointMode.RESUME, *,
                   evaluate: bool = True, reporters: Sequence[EpochReporter] | None = None,
                   register: RegistryOptions | None = None) -> TaskOutcome:
    """Train, evaluate and store one task; skip it when its key is already complete for the same inputs.

    ``mode`` (:class:`~mrkd_core.checkpoint.CheckpointMode`, decided once by the caller: the
    CLI's ``--no-resume``, the flows' ``force``) says what the key's checkpoints and the
    complete results of other runs count for (module docstring). ``reporters`` receive each
    finished epoch (:func:`mrkd_core.train.train`). Before anything is trained or stored, the
    task's images pass the header checks of ``mrkd data check``
    (:func:`~mrkd_core.data.validate.require_trainable`). While it trains, the task holds the
    key's claim (``mrkd_core.claims``): a concurrent call for the same key waits, then
    skips the key its holder completed. The result is recorded under ``run_id``, or under
    ``<run_id>.<n>`` when that run already holds another result of the task
    (:func:`~mrkd_core.layout.record_run_id`; ``TaskOutcome.run_id``). With ``register`` the
    evaluated result, trained or reused, is tracked in the model registry
    (``mrkd_core.registry.tracking.track``: a version, the promotion decision, the run's
    history row), reported in ``TaskOutcome.registry``. Raises ``ConfigError`` for a run id
    that cannot name a folder, ``DataError`` for bad input, ``StorageError`` for a
    config-hash collision or a lost claim; nothing stored before is changed either way.
    """
    check_run_id(run_id)
    inputs = task_inputs(task, evaluate)
    forced_run = run_id if mode.forced else None
    done = find_complete(store, task, forced_run, evaluated=evaluate, lineage=inputs.lineage)
    if done is None:
        samples = inputs.samples
        require_trainable([*samples.trained, *samples.held_out, *evaluation_inputs(samples.test, samples.protocol)],
                          task.dataset, task.data_root, task.category)
        with KeyClaim(store, task.key, run_id) as claim:
            # The holder we waited for may have finished it.
            done = find_complete(store, task, forced_run, evaluated=evaluate, lineage=inputs.lineage)
            if done is None:
                return _train_and_store(task, store, run_id, mode, evaluate, claim, reporters, inputs, register)
    return _skip(task, store, run_id, done, register, inputs)


def _skip(task: Task, store: ArtifactStore, run_id: str, done: str, register: RegistryOptions | None,
          inputs: TaskInputs) -> TaskOutcome:
    manifest = store.read_json(f"{done}/{MANIFEST}")
    rows: list[dict] = []
    tracked = None
    record_id = run_id
    if is_evaluated(manifest):
        record_id = record_run_id(store, task, run_id, done)
        # Conformed: a run directory of an older version lacks the columns added since (null).
        metrics = conform(read_parquet_bytes(store.read_bytes(f"{done}/metrics.parquet")), METRICS_SCHEMA,
                          store.uri(done)).to_pandas()
        scores = conform(read_parquet_bytes(store.read_bytes(f"{done}/scores.parquet")), SCORES_SCHEMA,
                         store.uri(done)).to_pandas()
        metrics["spec"] = task.spec or metrics["spec"]
        _write_tables(store, task, record_id, metrics, scores, done)
        rows = summary_rows(metrics, record_id)
        if register is not None:
            tracked = track(store, task, record_id, done, metrics.iloc[0].to_dict(), inputs.lineage,
                            inputs.samples.test, register, SKIPPED)
    log.info("skip %s: complete in %s", task.key, store.uri(done))
    return TaskOutcome.of(task, SKIPPED, run_id=record_id, run_dir=done, rows=tuple(rows),
                          evaluated=is_evaluated(manifest), registry=tracked)


def _train_and_store(task: Task, store: ArtifactStore, run_id: str, mode: CheckpointMode, evaluate_test: bool,
                     claim: KeyClaim, reporters: Sequence[EpochReporter] | None, inputs: TaskInputs,
                     register: RegistryOptions | None) -> TaskOutcome:
    # The test split was listed, fingerprinted and checked before training (task_inputs,
    # require_trainable), so that a bad test split fails in seconds, not after it.
    cfg, lineage, samples = task.config, inputs.lineage, inputs.samples
    record_id = record_run_id(store, task, run_id)  # under the key's claim: no other trainer picks the same
    directory = run_dir(task, record_id)
    if record_id != run_id:
        log.warning("%s: run %s already holds another result of this key; this one is stored as run %s (%s)",
                    task.category, run_id, record_id, store.uri(directory))
    check_no_collision(store, task, directory)
    replaced = replaced_result(store, task, inputs)
    if replaced is not None:
        log.warning("%s: %s — training a new model on today's images into %s (the old one stays as it is)",
                    task.category, replaced.describe(), store.uri(directory))
    started = utcnow()
    ckpt_dir = checkpoint_dir(task, run_id if mode is CheckpointMode.FORCED_RUN else None)
    result = train(cfg, samples.trained, task.category, checkpoints=store.sub(ckpt_dir), mode=mode,
                   reporters=reporters, train_fingerprint=lineage.train_fingerprint)
    ev = (evaluate(result.model, cfg, samples.test, keep_maps=True, scale_sets=list(task.scale_sets) or None,
                   protocol=samples.protocol)
          if evaluate_test else None)
    # Policy auto (docs/inference.md): the false-alarm rate on the held-out train/good when
    # validation_fraction holds images out, else F1 on the test split reusing these maps
    # (the calibration records that it was chosen there); None, with a warning, when
    # there is nothing to calibrate on.
    calibration = calibrate_after_training(result.model, cfg, samples.held_out, samples.test, task.category,
                                           held_out_from=samples.held_out_from, evaluation=ev)
    cal_dict = calibration.to_dict() if calibration is not None else None
    finished = utcnow()
    training = {"n_train": result.n_train, "train_seconds": result.train_seconds,
                "images_per_second": result.images_per_second, "device": result.device}

    provenance = {"dataset": task.dataset, "category": task.category, "run_id": record_id,
                  "data_root": task.data_root, TRAIN_FINGERPRINT: lineage.train_fingerprint}
    files: dict[str, bytes] = {
        "config.json": json_bytes(cfg.to_dict()),
        "model.pt": model_bytes(result.model, cfg, extra=provenance, calibration=cal_dict),
    }
    rows: list[dict] = []
    scores: list[dict] = []
    if ev is not None:
        rows = metrics_rows(task, record_id, ev, training, started, finished, lineage)
        scores = score_rows(task, record_id, ev, verdict_columns(cal_dict, [s["score"] for s in ev.scores]))
        files["metrics.parquet"] = parquet_bytes(rows, METRICS_SCHEMA)
        files["scores.parquet"] = parquet_bytes(scores, SCORES_SCHEMA)
        files["maps.npz"] = maps_npz(ev, cfg.image_size)
    files[TRAIN_RECORD] = json_bytes({
        **training, "epoch_losses": result.epoch_losses, "log": result.log,
        "resumed_from_epoch": result.resumed_from_epoch, "eval_seconds": ev.seconds if ev is not None else None,
        "host": platform.node(), "data_root": task.data_root, TRAIN_FINGERPRINT: lineage.train_fingerprint,
        # what it was trained on, file by file: what a later training of other images says changed
        TRAIN_FILES: [list(e) for e in inputs.train_files],
        "replaces": replaced.to_dict() if replaced is not None else None,
    })
    claim.check()  # a task whose claim was taken over writes nothing
    write_run_directory(store, directory, files, {"key": task.key, "run_id": record_id, "variant": task.variant,
                                                  REGISTERING_RUN: register is not None, **lineage.record()},
                        before_commit=claim.check)
    tracked = None
    if ev is not None:
        _write_tables(store, task, record_id, pd.DataFrame(rows), pd.DataFrame(scores), directory)
        if register is not None:  # still under the key's claim: a concurrent trainer of it waits, then skips
            tracked = track(store, task, record_id, directory, rows[0], lineage, samples.test, register, TRAINED)
    if mode is CheckpointMode.FORCED_RUN:
        # Only a crash of this run needed them; the run directory now holds model.pt.
        store.remove(ckpt_dir, recursive=True)
    if ev is not None:
        log.info("done %s: %s", task.key, {k: round(v, 4) for k, v in ev.metrics.items() if v == v})
    else:
        log.info("done %s (not evaluated): %s", task.key, store.uri(f"{directory}/model.pt"))
    return TaskOutcome.of(task, TRAINED, run_id=record_id, run_dir=directory,
                          rows=tuple(summary_rows(pd.DataFrame(rows), record_id)) if rows else (),
                          evaluated=ev is not None, resumed_from_epoch=result.resumed_from_epoch,
                          calibration=calibration.summary() if calibration is not None else None, registry=tracked,
                          replaces=replaced.to_dict() if replaced is not None else None)


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
