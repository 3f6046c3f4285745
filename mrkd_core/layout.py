"""The store layout: where a task's files live, which run directory is complete, how runs are named.

Every path of the engine, the CLI and the flows is derived here from ``Task.key`` =
``<dataset>/<category>/<config_hash>`` and a run id (docs/storage.md)::

    runs/<run_id>/<key>/          config.json model.pt metrics.parquet scores.parquet maps.npz
                                  train.json manifest.json (written last; then never written again)
    runs/<run_id>.<n>/<key>/      run <run_id>'s result when <run_id> already held another (record_run_id)
    checkpoints/<key>/            epoch-NNNN.pt (+ .sha256.json), shared by the key's runs
    checkpoints/<key>/forced/<run_id>/   a forced run's own checkpoints (removed when done)
                                  (which folder a task uses: checkpoint.CheckpointMode)
    claims/<key>.json             while a process trains the key (mrkd_core.claims)
    evaluations/<run_id>/<key>/   metrics.json scores.csv of ``mrkd evaluate``
    tables/{metrics,scores}/<d>/<r>/<table_name>   (mrkd_core.partitioned; older stores: dataset=<d>/run_id=<r>/)

A run directory is *complete* when its manifest lists intact objects and was written by
this training revision; complete ones are what ``mrkd evaluate`` loads models from. A
rerun skips to a complete one only when it was computed from the same inputs
(``mrkd_core.lineage``: config, training and test data fingerprints, training and
evaluation revisions; ``task_inputs``); otherwise the key is trained again and the old run
directory stays as it is (:func:`replaced_result` says what changed). Nothing here trains
or imports torch.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from mrkd_core.data import Sample, get_dataset
from mrkd_core.data.base import EvaluationProtocol, evaluation_inputs
from mrkd_core.data.fingerprint import (
    FileChanges,
    FileEntry,
    HashCache,
    file_changes,
    fingerprint_samples,
)
from mrkd_core.data.selection import holdout_split, subsample_test, subsample_train
from mrkd_core.errors import ConfigError, StorageError
from mrkd_core.lineage import TRAIN_FINGERPRINT, Lineage
from mrkd_core.partitioned import METRICS_TABLE, check_run_id
from mrkd_core.results import MANIFEST, is_complete, write_manifest
from mrkd_core.revision import EVALUATION_REVISION, TRAINING_REVISION, stored_revision
from mrkd_core.specs import Task
from mrkd_core.storage import ArtifactStore

log = logging.getLogger(__name__)

RUNS = "runs"
TRAIN_RECORD = "train.json"  # the training's record in a run directory
TRAIN_FILES = "train_files"  # train.json: [[path relative to the dataset root, size, sha256], ...] trained on
EVALUATIONS = "evaluations"
# The skip rule checks objects above this size by size only (see results.verify_manifest):
# metrics, scores, maps and configs are hashed; a WRN50 model.pt (~0.5 GB) is not downloaded.
SKIP_CHECK_HASH_BYTES = 64 * 1024 * 1024


def resolve_run_id(run_id: str | None, prefix: str, when: datetime | None = None) -> str:
    """``<prefix>-<UTC yyyymmdd-HHMMSS>`` by default; ``{date}``, ``{time}``, ``{spec}`` are filled in.

    ``prefix`` is the spec's name for the flows (``{spec}``), the command for the CLI
    (``train``, ``evaluate``). Placeholders let a deployment keep a static parameter
    (``nightly-{date}``) while each scheduled run gets its own id; ``when`` is the run's
    scheduled time so that a late or retried nightly keeps the date it was scheduled for.
    Raises ``ConfigError`` for an unknown placeholder or an id that cannot name a folder.
    """
    when = (when or datetime.now(timezone.utc)).astimezone(timezone.utc)
    if not run_id:
        run_id = "{spec}-{date}-{time}"
    try:
        resolved = run_id.format(spec=prefix, date=when.strftime("%Y%m%d"), time=when.strftime("%H%M%S"))
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(f"run id {run_id!r}: unknown placeholder ({exc}); use {{date}}, {{time}}, {{spec}}") from None
    # Any text that can name a folder (digits only, dates, spaces, Unicode): partition
    # values are percent-encoded and read back as strings (mrkd_core.partitioned).
    return check_run_id(resolved)


def run_dir(task: Task, run_id: str) -> str:
    """``runs/<run_id>/<key>``: where run ``run_id`` stores the result of ``task``."""
    return f"{RUNS}/{run_id}/{task.key}"


def evaluation_dir(task: Task, run_id: str) -> str:
    """``evaluations/<run_id>/<key>``: where ``mrkd evaluate`` run ``run_id`` writes the evaluation of ``task``."""
    return f"{EVALUATIONS}/{run_id}/{task.key}"


def checkpoint_dir(task: Task, forced_run: str | None = None) -> str:
    """``checkpoints/<key>``, shared by every run of the key; a forced run's own ``…/forced/<forced_run>``."""
    return f"checkpoints/{task.key}" + (f"/forced/{forced_run}" if forced_run is not None else "")


def table_name(task: Task) -> str:
    """``<category>-<variant>-<config_hash>.parquet``: the task's file in a ``tables/`` partition."""
    return f"{task.category}-{task.variant}-{task.config.config_hash()}.parquet"


def complete_manifest(store: ArtifactStore, directory: str) -> dict | None:
    """The manifest of a complete, intact run directory (objects above 64 MiB checked by size), else None."""
    if not store.exists(f"{directory}/{MANIFEST}") or not is_complete(store, directory, SKIP_CHECK_HASH_BYTES):
        return None
    return store.read_json(f"{directory}/{MANIFEST}")


def is_current(store: ArtifactStore, directory: str, manifest: dict) -> bool:
    """Whether this training revision wrote the run directory; older ones are kept as history, never reused."""
    revision = stored_revision(manifest)
    if revision != TRAINING_REVISION:
        log.info("not reusing %s: trained by training revision %d, this code is revision %d",
                 store.uri(directory), revision, TRAINING_REVISION)
        return False
    return True


def is_evaluated(manifest: dict) -> bool:
    """Whether a run directory's manifest lists metrics (``mrkd train --no-evaluate`` stores none)."""
    return "metrics.parquet" in manifest.get("files", {})


@dataclass(frozen=True)
class TaskSamples:
    """The images one task sees, decided in one place (:func:`task_samples`).

    ``trained``: train/good (subsampled when the config says so) less the
    ``validation_fraction`` kept for calibration (``data.selection``); ``held_out``: those
    kept images and the dataset's published validation split, if it has one (MVTec AD 2:
    ``DatasetLayout.validation_samples``), which ``held_out_from`` names; ``test``: the test
    split (subsampled likewise; empty for a task that does not evaluate); ``protocol``: the
    benchmark's own metrics on it (``DatasetLayout.evaluation_protocol``: MVTec AD 2, MVTec
    LOCO AD; None for the paper's metrics only, and for a task that does not evaluate).
    """

    trained: tuple[Sample, ...]
    held_out: tuple[Sample, ...]
    test: tuple[Sample, ...]
    protocol: EvaluationProtocol | None = None
    held_out_from: str = ""


@dataclass(frozen=True)
class TaskInputs:
    """:class:`TaskSamples` and the :class:`Lineage` they make with the task's config (:func:`task_inputs`).

    ``train_files``: the files trained on as (path relative to the dataset root, size,
    sha256), what ``train.json`` records so that a later training says what changed.
    """

    lineage: Lineage
    samples: TaskSamples
    train_files: tuple[FileEntry, ...] = ()


def task_samples(task: Task, evaluated: bool = True, train: bool = True) -> TaskSamples:
    """What ``task`` trains on, holds out and is tested on: the one rule (training, calibration,
    ``mrkd evaluate`` and ``mrkd calibrate`` take what it decides and split nothing).

    A declared subsample (config ``train_subsample``/``test_subsample``, ``data.selection``)
    is the data of the task. ``evaluated=False`` (a run that does not evaluate; its dataset
    may have no test split) lists no test split; ``train=False`` (evaluating a stored model)
    no training split. Raises ``DataError`` for unreadable data.
    """
    cfg = task.config
    ds = get_dataset(task.dataset)
    trained: list[Sample] = []
    held_out: list[Sample] = []
    sources: list[str] = []
    if train:
        train_good = subsample_train(ds.train_samples(task.data_root, task.category), cfg.train_subsample)
        trained, held_out = holdout_split(train_good, cfg.validation_fraction, cfg.seed)
        if held_out:
            sources.append(f"validation_fraction {cfg.validation_fraction:g} of train/good, seed {cfg.seed}")
        validation = ds.validation_samples(task.data_root, task.category)
        if validation:
            held_out = [*held_out, *validation]
            sources.append(f"the {ds.name} validation split ({len(validation)} images)")
    test = (subsample_test(ds.test_samples(task.data_root, task.category), cfg.test_subsample)
            if evaluated else [])
    protocol = ds.evaluation_protocol(task.data_root, task.category) if evaluated else None
    return TaskSamples(tuple(trained), tuple(held_out), tuple(test), protocol, "; ".join(sources))


def task_inputs(task: Task, evaluated: bool = True) -> TaskInputs:
    """The task's samples (:func:`task_samples`) and their :class:`Lineage`.

    The training fingerprint covers the images trained on, the test fingerprint the test
    split; the lineage names this code's evaluation revision (every stored result is
    scored or calibrated by it). Both are fingerprinted with one hash cache of the dataset
    root (only files whose size or mtime changed are read). Without a test split
    (``evaluated=False``) the lineage names no test data.
    """
    samples = task_samples(task, evaluated)
    cache = HashCache(task.data_root)
    trained = fingerprint_samples(samples.trained, task.data_root, cache)
    # The test data is the test split and what the dataset's protocol also reads (MVTec AD 2's validation images).
    lineage = Lineage(task.config.config_hash(), trained.digest,
                      fingerprint_samples(evaluation_inputs(samples.test, samples.protocol), task.data_root,
                                          cache).digest if evaluated else None,
                      evaluation_revision=EVALUATION_REVISION)
    cache.save()
    return TaskInputs(lineage, samples, trained.entries)


def find_complete(store: ArtifactStore, task: Task, run_id: str | None = None, evaluated: bool = True,
                  lineage: Lineage | None = None) -> str | None:
    """The run directory of a complete result for this key and these inputs (newest run first), or None.

    ``run_id`` limits the search to that run and the run ids it recorded results under
    (``<run_id>.<n>``, :func:`record_run_id`: what a forced task accepts); ``evaluated``
    asks for a result with metrics (what every caller but ``mrkd train --no-evaluate``
    needs). ``lineage`` (default: :func:`task_inputs` of ``task``, computed only when a
    complete directory is found) must match what the manifest recorded
    (``Lineage.stale_reason``, the one skip rule): a result trained by another training
    revision or on other training data, evaluated on other test data or scored by
    another evaluation revision (e.g. the test-time masks before revision 2) is kept as
    history, never reused. A complete directory whose
    ``config.json`` is another config under the same hash raises a ``StorageError``
    rather than being reused as this task's result.
    """
    runs = (run_family(store, run_id) if run_id is not None
            else sorted(store.list(RUNS), reverse=True))
    for run in runs:
        d = f"{run}/{task.key}"
        manifest = complete_manifest(store, d)
        if manifest is None:
            continue
        check_no_collision(store, task, d)
        if evaluated and not is_evaluated(manifest):
            continue
        lineage = lineage or task_inputs(task, evaluated).lineage
        stale = lineage.stale_reason(manifest)
        if stale is not None:
            log.info("not reusing %s: %s", store.uri(d), stale)
            continue
        return d
    return None


def write_run_directory(store: ArtifactStore, directory: str, files: Mapping[str, bytes], manifest: Mapping[str, Any],
                        before_commit: Callable[[], None] = lambda: None) -> None:
    """The run-directory contract: a result becomes visible only complete, and then never changes.

    A directory that has a manifest is never written into (``StorageError``): the engine
    writes each result into a directory of its own (:func:`record_run_id`). Every file of
    ``files`` (name → bytes, in order) is written (over the parts an interrupted attempt
    may have left), then ``before_commit`` runs (the engine checks that it still holds the
    key's claim), then ``manifest.json``, listing every file with its size and sha256 plus
    ``manifest``'s entries, last.
    """
    if store.exists(f"{directory}/{MANIFEST}"):
        raise StorageError(f"{store.uri(directory)}: holds a complete result, which is never rewritten — "
                           "store the new one under another run id")
    for name, data in files.items():
        store.write_bytes(f"{directory}/{name}", data)
    before_commit()
    write_manifest(store, directory, list(files), extra=dict(manifest))


def run_family(store: ArtifactStore, run_id: str) -> list[str]:
    """``runs/<run_id>`` and ``runs/<run_id>.<n>`` (where run ``run_id`` recorded results of other inputs),
    the newest first: the run directories of one run id."""
    pattern = re.compile(re.escape(run_id) + r"\.(\d+)")
    found = [(0, run_id)]
    for name in store.list(RUNS):
        m = pattern.fullmatch(name.rsplit("/", 1)[-1])
        if m:
            found.append((int(m.group(1)), m.group(0)))
    return [f"{RUNS}/{rid}" for _, rid in sorted(found, reverse=True)]


def record_run_id(store: ArtifactStore, task: Task, run_id: str, result_dir: str | None = None) -> str:
    """The run id under which run ``run_id`` records ``task``'s result: ``run_id``, or ``<run_id>.<n>``.

    A result is recorded in ``runs/<id>/<key>/`` (trained) and in the tables' partition
    ``<id>`` (trained or reused). Nothing recorded is ever replaced, so when run
    ``run_id`` already holds *another* result of the task — its run directory is complete
    (a re-run of the run id after the inputs changed: other images, another revision), or
    its table partition holds rows of another result (a re-run that reuses another
    earlier result) — the result goes to the first free ``<run_id>.2``, ``<run_id>.3``, …
    (docs/storage.md). ``result_dir``: the result to record when it is stored already (a
    reused one); None for a training, which needs an empty directory.
    """
    check_run_id(run_id)
    for n in itertools.count(1):
        candidate = run_id if n == 1 else f"{run_id}.{n}"
        directory = run_dir(task, candidate)
        own = result_dir is not None and directory == result_dir
        if store.exists(f"{directory}/{MANIFEST}") and not own:
            continue
        held = METRICS_TABLE.held_by(store, {"dataset": task.dataset, "run_id": check_run_id(candidate)},
                                     table_name(task))
        if held is None or (result_dir is not None and held == result_dir):
            return candidate
    raise AssertionError("unreachable")  # itertools.count never ends


@dataclass(frozen=True)
class Replacement:
    """The newest complete result of a task's key that a training replaces, and why it could not stand.

    ``why``: :meth:`Lineage.stale_reason` of its manifest against today's inputs;
    ``changes``: what differs between the images it was trained on and today's, when both
    are recorded (``train.json``'s ``train_files``; None for a result of before them, or
    when only the test data, the code or nothing changed).
    """

    run_dir: str
    why: str
    changes: FileChanges | None

    def describe(self) -> str:
        """``runs/v1/…/<hash> was trained on other images: since then 20 of 40 training images modified (…), …``."""
        if self.changes is not None:
            return f"{self.run_dir} was trained on other images: since then {self.changes.describe()}"
        return f"{self.run_dir} was {self.why}"

    def to_dict(self) -> dict[str, Any]:
        return {"run_dir": self.run_dir, "why": self.why,
                "changes": self.changes.to_dict() if self.changes is not None else None, "text": self.describe()}


def replaced_result(store: ArtifactStore, task: Task, inputs: TaskInputs) -> Replacement | None:
    """The model a training of ``task`` replaces: its key's newest complete result of other inputs, or None.

    None when the key has no complete result, or when its newest one was computed from the
    same inputs (a forced retraining). The old result stays as it is; this says what the
    new one is trained on instead (``mrkd train`` prints it, the engine logs it).
    """
    found = [m for m in find_models(store, task.dataset, task.category) if m.config_hash == task.config.config_hash()]
    if not found:
        return None
    newest = found[0]
    why = inputs.lineage.stale_reason(newest.manifest)
    if why is None:
        return None
    changes = None
    if newest.manifest.get(TRAIN_FINGERPRINT) != inputs.lineage.train_fingerprint:
        recorded = store.read_json(f"{newest.run_dir}/{TRAIN_RECORD}").get(TRAIN_FILES)
        if recorded is not None and inputs.train_files:
            changes = file_changes(recorded, inputs.train_files)
    return Replacement(newest.run_dir, why, changes)


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


@dataclass(frozen=True)
class StoredModel:
    """A complete run directory with a ``model.pt``, as ``find_models`` lists them.

    ``run_dir`` is relative to the store; ``manifest`` is its parsed manifest (``key``,
    ``run_id``, ``variant``, ``written_at``, ``files``, ...).
    """

    dataset: str
    category: str
    config_hash: str
    run_id: str
    run_dir: str
    manifest: dict

    @property
    def model(self) -> str:
        """``<run_dir>/model.pt`` (relative to the store)."""
        return f"{self.run_dir}/model.pt"


def find_models(store: ArtifactStore, dataset: str, category: str | None = None,
                run_id: str | None = None) -> list[StoredModel]:
    """Complete models of ``dataset`` in the store (optionally one category or one run), newest first.

    Newest by the manifest's ``written_at``. Each (category, config) appears once, from
    its newest run. A run directory that is incomplete, damaged or of another training
    revision is left out (see ``find_complete``).
    """
    runs = [f"{RUNS}/{run_id}"] if run_id is not None else store.list(RUNS)
    found: dict[tuple[str, str], StoredModel] = {}
    for run in runs:
        cats = [f"{run}/{dataset}/{category}"] if category else store.list(f"{run}/{dataset}")
        for cat_dir in cats:
            for d in store.list(cat_dir):
                manifest = complete_manifest(store, d)
                if manifest is None or not is_current(store, d, manifest) or "model.pt" not in manifest["files"]:
                    continue
                _, rid, _, cat, config_hash = d.split("/")
                m = StoredModel(dataset, cat, config_hash, rid, d, manifest)
                seen = found.get((cat, config_hash))
                if seen is None or m.manifest.get("written_at", "") > seen.manifest.get("written_at", ""):
                    found[(cat, config_hash)] = m
    return sorted(found.values(), key=lambda m: m.manifest.get("written_at", ""), reverse=True)
