"""The store layout: where a task's files live, which run directory is complete, how runs are named.

Every path of the engine, the CLI and the flows is derived here from ``Task.key`` =
``<dataset>/<category>/<config_hash>`` and a run id (docs/storage.md)::

    runs/<run_id>/<key>/          config.json model.pt metrics.parquet scores.parquet maps.npz
                                  train.json manifest.json (written last)
    checkpoints/<key>/            epoch-NNNN.pt (+ .sha256.json), shared by the key's runs
    checkpoints/<key>/forced/<run_id>/   a forced run's own checkpoints (removed when done)
                                  (which folder a task uses: checkpoint.CheckpointMode)
    claims/<key>.json             while a process trains the key (mrkd_core.claims)
    evaluations/<run_id>/<key>/   metrics.json scores.csv of ``mrkd evaluate``
    tables/{metrics,scores}/dataset=<d>/run_id=<r>/<table_name>   (mrkd_core.results)

A run directory is *complete* when its manifest lists intact objects and was written by
this training revision; complete ones are what ``mrkd evaluate`` loads models from. A
rerun skips to a complete one only when it was computed from the same inputs
(``mrkd_core.lineage``: config, training and test data fingerprints, training and
evaluation revisions; ``task_inputs``); otherwise the key is trained again and the old run
directory stays as history. Nothing here trains or imports torch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from mrkd_core.data import Sample, get_dataset
from mrkd_core.data.fingerprint import HashCache, fingerprint_samples
from mrkd_core.data.selection import holdout_split, subsample_test, subsample_train
from mrkd_core.errors import ConfigError, StorageError
from mrkd_core.lineage import Lineage
from mrkd_core.partitioned import check_run_id
from mrkd_core.results import MANIFEST, is_complete, write_manifest
from mrkd_core.revision import EVALUATION_REVISION, TRAINING_REVISION, stored_revision
from mrkd_core.specs import Task
from mrkd_core.storage import ArtifactStore

log = logging.getLogger(__name__)

RUNS = "runs"
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

    ``trained``: train/good (subsampled when the config says so) less ``held_out``, the
    ``validation_fraction`` kept for calibration (``data.selection``); ``test``: the test
    split (subsampled likewise; empty for a task that does not evaluate).
    """

    trained: tuple[Sample, ...]
    held_out: tuple[Sample, ...]
    test: tuple[Sample, ...]


@dataclass(frozen=True)
class TaskInputs:
    """:class:`TaskSamples` and the :class:`Lineage` they make with the task's config (:func:`task_inputs`)."""

    lineage: Lineage
    samples: TaskSamples


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
    if train:
        train_good = subsample_train(ds.train_samples(task.data_root, task.category), cfg.train_subsample)
        trained, held_out = holdout_split(train_good, cfg.validation_fraction, cfg.seed)
    test = (subsample_test(ds.test_samples(task.data_root, task.category), cfg.test_subsample)
            if evaluated else [])
    return TaskSamples(tuple(trained), tuple(held_out), tuple(test))


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
    lineage = Lineage(task.config.config_hash(), fingerprint_samples(samples.trained, task.data_root, cache).digest,
                      fingerprint_samples(samples.test, task.data_root, cache).digest if evaluated else None,
                      evaluation_revision=EVALUATION_REVISION)
    cache.save()
    return TaskInputs(lineage, samples)


def find_complete(store: ArtifactStore, task: Task, run_id: str | None = None, evaluated: bool = True,
                  lineage: Lineage | None = None) -> str | None:
    """The run directory of a complete result for this key and these inputs (newest run first), or None.

    ``run_id`` limits the search to that run (what a forced task accepts); ``evaluated``
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
    runs = [f"{RUNS}/{run_id}"] if run_id is not None else sorted(store.list(RUNS), reverse=True)
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
    """The run-directory contract: a result becomes visible only complete.

    A manifest already there is stale (``find_complete`` rejected it) and goes first, so
    that no reader takes the directory for complete while its files are rewritten; then
    every file of ``files`` (name → bytes, in order); then ``before_commit`` (the engine
    checks that it still holds the key's claim); then ``manifest.json``, listing every file
    with its size and sha256 plus ``manifest``'s entries, last.
    """
    store.remove(f"{directory}/{MANIFEST}")
    for name, data in files.items():
        store.write_bytes(f"{directory}/{name}", data)
    before_commit()
    write_manifest(store, directory, list(files), extra=dict(manifest))


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
