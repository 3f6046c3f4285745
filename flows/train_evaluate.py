"""The unit of work of the fan-out, as Prefect tasks, and a flow that runs one of them.

``train_one`` (task ``train-evaluate``, run ``train-<dataset>-<category>-<variant>``) is
what ``mrkd-benchmark`` submits once per (dataset, category, config) that is not complete
yet: it makes sure the dataset is on this node, then calls
:func:`mrkd_core.engine.train_evaluate`, which resumes from its last checkpoint and writes
the manifest last. ``record_complete`` (task ``record-complete``, run
``skip-<dataset>-<category>-<variant>``, final state *Skipped*) is the same call for a key
that is already complete: it copies the stored rows into this run's tables, in the driver,
and is never shown as a training. Inputs are ``Task.to_dict()``, outputs small records
(status, run directory, where and when it ran): never tensors.

While a training runs, each finished epoch writes a line to the task run's log (epoch/total,
percent, loss, images/s, ETA: console, worker log, Ray dashboard, Prefect UI) and updates
the task run's progress artifact ``progress-<dataset>-<category>-<variant>``, on Ray
workers too (:class:`TrainingProgress`, one of the training's epoch reporters,
:mod:`mrkd_core.progress`). The artifact is the training's, not an attempt's: every attempt
updates the same one, and it ends at 100 % or at the percent reached with the error. Each
attempt starts with a line naming it and where it runs (``attempt 2: Ray worker pid 4242 on
node f5b6a6af, host vm1``); a resumed one says where it resumed. Outcomes travel as
``TaskOutcome.to_dict()``.

Retries are declared here, not in the library. Prefect retries an exception twice, 5 s
apart, inside the same Ray task (the GPU stays reserved), except errors of the input
(``DataError``, ``ConfigError``, ``WeightsError``, ``DeviceError``: a corrupt image stays
corrupt) and a diverged training (``TrainingDiverged``: it would diverge again); Ray re-runs
the task when its worker process dies (see
``flows.ray_runner.RAY_MAX_RETRIES``; the death and the new attempt are recorded in the same
task run, :mod:`flows.attempts`). Either way the engine resumes from the newest checkpoint
stored.

``mrkd-train-evaluate`` runs one category in the current process (no Ray): for
debugging a single training with the same code path the benchmark uses::

    python -m flows.train_evaluate --spec smoke --category obj_disc
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from datetime import timedelta
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State

import flows  # noqa: F401 - offline-safe environment defaults
from flows.artifacts import artifact_key
from flows.attempts import error_line, flush_to_api
from flows.download import dataset_records, ensure_dataset
from flows.ray_runner import assigned_gpu, node_info
from flows.settings import data_root as default_data_root
from flows.settings import open_store, resolve_run_id, run_flow_command, spec_path
from mrkd_core.checkpoint import CheckpointMode
from mrkd_core.engine import train_evaluate
from mrkd_core.errors import ConfigError, DataError, DeviceError, TrainingDiverged, WeightsError
from mrkd_core.progress import EpochProgress, EpochReporter
from mrkd_core.registry.tracking import RegistryOptions
from mrkd_core.specs import SKIPPED, Task, load_spec

log = logging.getLogger(__name__)

TRAIN_RETRIES = 2
TRAIN_RETRY_DELAY_S = 5
# Errors of the input: retrying cannot help, the user must fix the file or field named.
# A diverged training is not retried either: a retry resumes from the last checkpoint with the
# same seeds and diverges again (bit for bit on CPU); the config (lr, precision) must change.
NOT_RETRIED = (DataError, ConfigError, WeightsError, DeviceError, TrainingDiverged)


def run_name(prefix: str, task: dict[str, Any]) -> str:
    """``<prefix>-<dataset>-<category>-<variant>``: the name of a task run of ``task`` (a ``Task.to_dict`` record)."""
    return f"{prefix}-{task.get('dataset')}-{task.get('category')}-{task.get('variant')}"


def _train_run_name() -> str:
    from prefect.runtime import task_run

    return run_name("train", task_run.parameters.get("task", {}))


def _skip_run_name() -> str:
    from prefect.runtime import task_run

    return run_name("skip", task_run.parameters.get("task", {}))


def retry_unless_bad_input(_task: Any, _task_run: Any, state: State) -> bool:
    """Prefect's retry condition: retry anything but an error of the input (see ``NOT_RETRIED``)."""
    try:
        exc = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - no result to inspect: keep the retry policy
        return True
    return not isinstance(exc, NOT_RETRIED)


def progress_key(task: dict[str, Any]) -> str:
    """The progress artifact's key: lowercase letters, digits and dashes (Prefect's rule)."""
    return artifact_key("progress", task["dataset"], task["category"], task["variant"])


def progress_artifact(task_run_id: Any, key: str) -> Any:
    """The progress artifact ``key`` of the task run ``task_run_id`` (the newest, if an older version made
    several), or None."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        ArtifactFilterTaskRunId,
        ArtifactFilterType,
    )
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(task_run_id=ArtifactFilterTaskRunId(any_=[task_run_id]),
                                           key=ArtifactFilterKey(any_=[key]), type=ArtifactFilterType(any_=["progress"])),
            sort=ArtifactSort.CREATED_DESC, limit=1)
    return found[0] if found else None


def _epoch_at(percent: float, epochs: int) -> int:
    """The finished epoch a progress percent stands for (percents are stored to 0.01)."""
    return round(percent * epochs / 100.0)


def failure_text(percent: float, epochs: int, error: str) -> str:
    """``failed at 33.3 % (epoch 2/6): DataError: …``: what a failed training's progress artifact ends with."""
    return f"failed at {percent:.1f} % (epoch {_epoch_at(percent, epochs)}/{epochs}): {error}"


def resume_text(resumed: int, epochs: int, earlier: int, checkpoint_every: int) -> str:
    """Where an attempt resumed (``resumed`` epochs done), and the epochs an earlier attempt had finished
    beyond it (``earlier``), which are trained again::

        resumed from epoch 2/15: the newest checkpoint stored; an earlier attempt had finished epoch 4,
        so epochs 3-4 are trained again (a checkpoint is stored every 1 epoch(s), …)

    Checkpoints are stored every ``checkpoint_every`` epochs by a background thread while
    training goes on (``mrkd_core.checkpoint.CheckpointWriter``), and a save first waits for
    the write before it: when epoch e is logged, the newest stored checkpoint can be as old
    as epoch e − 2 × ``checkpoint_every``.
    """
    text = f"resumed from epoch {resumed}/{epochs}: the newest checkpoint stored"
    if earlier > resumed:
        again = f"epoch {earlier} is" if earlier == resumed + 1 else f"epochs {resumed + 1}-{earlier} are"
        text += (f"; an earlier attempt had finished epoch {earlier}, so {again} trained again (a checkpoint is "
                 f"stored every {checkpoint_every} epoch(s), written in the background while training goes on: "
                 f"the newest stored one can be up to {2 * checkpoint_every} epochs behind the last epoch logged)")
    return text


def fail_progress(task: dict[str, Any], task_run_id: Any, error: str) -> None:
    """End the training's progress artifact at *failed* when no attempt could (every one died): the driver's.

    Creates the artifact, at 0 %, for a training that died before it made one. An API error is logged.
    """
    from prefect import get_client
    from prefect.client.schemas.actions import ArtifactCreate, ArtifactUpdate

    key, epochs = progress_key(task), int(task["config"]["epochs"])
    label = _label(task)
    try:
        found = progress_artifact(task_run_id, key)
        with get_client(sync_client=True) as client:
            if found is None:
                client.create_artifact(ArtifactCreate(key=key, type="progress", data=0.0, task_run_id=task_run_id,
                                                      description=f"{label}: {failure_text(0.0, epochs, error)}"))
            else:
                percent = float(found.data or 0.0)
                client.update_artifact(found.id, ArtifactUpdate(
                    data=percent, description=f"{label}: {failure_text(percent, epochs, error)}"))
    except Exception as exc:  # noqa: BLE001 - a view; the task run's state names the failure
        log.warning("progress artifact %s: %s: %s", key, type(exc).__name__, exc)


def _label(task: dict[str, Any]) -> str:
    return f"{task['category']} ({task['dataset']}, {task['variant']})"


class TrainingProgress:
    """A training's epoch reporter in a flow (:class:`mrkd_core.progress.EpochReporter`): a line in the
    task run's log per epoch and the training's one progress artifact; it takes the place of the library's
    own log line.

    After every epoch: ``epoch 3/200 (1.5 %), loss 0.12345, 41.2 img/s, ETA 1:23:45`` through
    the task run's logger (console, worker log, Ray dashboard's task logs and the task run in
    the Prefect API, which names the training), and the task run's progress artifact
    ``progress-<dataset>-<category>-<variant>`` is set to the percent done with the same
    text. The artifact belongs to the task run: every attempt of the training (a Prefect
    retry, a Ray re-run after its worker died) updates the same one, and it ends at the
    training's final state: 100 % (:meth:`finished`) or the percent reached with the error
    (:meth:`failed`; :func:`fail_progress` when every attempt died). A resumed attempt says,
    at its first epoch, where it resumed and which epochs an earlier attempt had finished
    beyond that. Reporting must never cost the training: a failed API call is logged once,
    and the artifact is not updated again.
    """

    def __init__(self, task: dict[str, Any]):
        self.key = progress_key(task)
        self.label = _label(task)
        self.epochs = int(task["config"]["epochs"])
        self.checkpoint_every = int(task["config"].get("checkpoint_every", 1))
        self.artifact_id = None
        self.reached = 0.0  # percent an earlier attempt of this task run reached
        self.percent = 0.0
        self.first = True
        self.broken = False
        self._call(self._open)

    def _open(self) -> None:
        from prefect.artifacts import create_progress_artifact
        from prefect.context import TaskRunContext

        context = TaskRunContext.get()
        found = progress_artifact(context.task_run.id, self.key) if context is not None else None
        if found is not None:  # an earlier attempt's: this one goes on from there
            self.artifact_id, self.reached = found.id, float(found.data or 0.0)
            self.percent = self.reached
            return
        self.artifact_id = create_progress_artifact(0.0, key=self.key, description=f"{self.label}: starting")

    def _call(self, fn, *args: Any) -> None:
        if self.broken:
            return
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - progress is a view; the training goes on
            self.broken = True
            log.warning("progress artifact %s: %s: %s (no more progress updates for this task)",
                        self.key, type(exc).__name__, exc)

    def report(self, p: EpochProgress) -> None:
        if self.first:
            self.first = False
            if p.epoch > 1:
                earlier = _epoch_at(self.reached, self.epochs)
                get_run_logger().info("%s", resume_text(p.epoch - 1, self.epochs, earlier, self.checkpoint_every))
        text = (f"epoch {p.epoch}/{p.epochs} ({100.0 * p.fraction:.1f} %), loss {p.loss:.5f}, "
                f"{p.rate}, ETA {timedelta(seconds=round(p.eta_seconds))}")
        get_run_logger().info("%s", text)
        self.percent = round(100.0 * p.fraction, 2)
        self._call(self._update, self.percent, text)

    def _update(self, percent: float, text: str) -> None:
        from prefect.artifacts import update_progress_artifact

        if self.artifact_id is not None:
            update_progress_artifact(self.artifact_id, percent, description=f"{self.label}: {text}")

    def finished(self, summary: dict[str, Any]) -> None:
        """The training ended well: 100 %, and how (trained, or skipped: complete already)."""
        if summary["status"] == SKIPPED:
            text = f"skipped: complete in {summary['run_dir']}"
        else:
            resumed = summary.get("resumed_from_epoch") or 0
            text = f"done in {summary['seconds']:.1f} s" + (f", resumed from epoch {resumed}" if resumed else "")
        self._call(self._update, 100.0, text)

    def failed(self, exc: BaseException) -> None:
        """This attempt failed: the artifact keeps the percent reached and names the error (a retry goes on from it)."""
        self._call(self._update, self.percent, failure_text(self.percent, self.epochs, error_line(exc)))

    def close(self) -> None:
        pass


def attempt_text() -> str:
    """``attempt 2: Ray worker pid 4242 on node f5b6a6af, host vm1``: the first line of each attempt of a training."""
    from prefect.runtime import task_run

    where = node_info()
    place = f"Ray worker pid {where['pid']}" if where["node_id"] else f"process {where['pid']}"
    if where["node_id"]:
        place += f" on node {where['node_id'][:8]}"
    return f"attempt {task_run.run_count}: {place}, host {where['host']}"


def _train_evaluate(task: dict[str, Any], run_id: str, force: bool,
                    reporters: list[EpochReporter] | None = None,
                    registry: dict[str, Any] | None = None) -> dict[str, Any]:
    """:func:`mrkd_core.engine.train_evaluate` of a task record: where a record becomes a ``Task`` again,
    and the outcome a record, stamped with where and when it ran.

    ``registry``: ``RegistryOptions.to_dict()`` when the run registers its results (the model loop).
    """
    started = time.time()
    where = node_info()
    register = RegistryOptions.from_dict(registry) if registry is not None else None
    mode = CheckpointMode.FORCED_RUN if force else CheckpointMode.RESUME
    outcome = train_evaluate(Task.from_dict(task), open_store(), run_id, mode, reporters=reporters,
                             register=register)
    finished = time.time()
    return outcome.replace(started=started, finished=finished, seconds=round(finished - started, 3),
                           node=where).to_dict()


@task(
    name="train-evaluate",
    task_run_name=_train_run_name,
    retries=TRAIN_RETRIES,
    retry_delay_seconds=TRAIN_RETRY_DELAY_S,
    retry_condition_fn=retry_unless_bad_input,
    # The skip rule is the engine's (a valid manifest for the key); Prefect's own caching
    # and result persistence would be a second, disagreeing one.
    cache_policy=NO_CACHE,
    persist_result=False,
)
def train_one(task: dict[str, Any], run_id: str, force: bool = False,
              dataset: dict[str, Any] | None = None, registry: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train + evaluate one task (or skip it when complete); returns a small summary record.

    Each attempt starts with a line naming it and where it runs; the progress artifact ends
    at 100 % or at the percent reached with the error.
    """
    logger = get_run_logger()
    logger.info("%s", attempt_text())
    flush_to_api()  # on record before the training starts, however soon this attempt dies
    progress = TrainingProgress(task)
    try:
        if dataset is not None:
            ensure_dataset(dataset)
        with assigned_gpu():  # Ray's GPU for this task, freed for the next task of a reused worker
            summary = _train_evaluate(task, run_id, force, [progress], registry)
    except Exception as exc:
        progress.failed(exc)
        raise
    progress.finished(summary)
    resumed = summary.get("resumed_from_epoch") or 0
    logger.info("%s %s in %.1f s%s", summary["status"], summary["key"], summary["seconds"],
                f", resumed from epoch {resumed}" if resumed else "")
    return summary


@task(name="record-complete", task_run_name=_skip_run_name, cache_policy=NO_CACHE, persist_result=False)
def record_complete(task: dict[str, Any], run_id: str, force: bool = False,
                    registry: dict[str, Any] | None = None) -> State:
    """A key that is complete already: its stored rows join this run's tables; state *Skipped*."""
    summary = _train_evaluate(task, run_id, force, registry=registry)
    if summary["status"] == SKIPPED:
        return Completed(name="Skipped", message=f"complete in {summary['run_dir']}: not trained again",
                         data=summary)
    return Completed(data=summary)  # it was not complete after all (removed meanwhile): trained here


@flow(name="mrkd-train-evaluate")
def train_evaluate_flow(spec: str = "smoke", category: str | None = None, dataset: str | None = None,
                        variant: str | None = None, run_id: str | None = None, force: bool = False,
                        epochs: int | None = None, image_size: int | None = None) -> list[dict[str, Any]]:
    """Run the tasks of ``spec`` that match ``dataset``/``category``/``variant``, here, one by one."""
    loaded = load_spec(spec, spec_path()).narrow(categories=[category] if category else None, epochs=epochs,
                                    image_size=image_size)
    rid = resolve_run_id(run_id, loaded.name)
    root = default_data_root(open_store())
    records = {r["name"]: r for r in dataset_records(loaded, root)}
    for record in records.values():
        ensure_dataset(record)
    selected = [t for t in loaded.tasks(root)
                if (dataset is None or t.dataset == dataset) and (variant is None or t.variant == variant)]
    if not selected:
        raise ConfigError(f"spec {spec!r} has no task for dataset={dataset} category={category} variant={variant}")
    return [train_one(t.to_dict(), rid, force, records[t.dataset]) for t in selected]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.train_evaluate", description=train_evaluate_flow.__doc__)
    parser.add_argument("--spec", default="smoke")
    parser.add_argument("--category")
    parser.add_argument("--dataset")
    parser.add_argument("--variant")
    parser.add_argument("--run-id")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def run() -> int:
        results = train_evaluate_flow(spec=args.spec, category=args.category, dataset=args.dataset,
                                      variant=args.variant, run_id=args.run_id, force=args.force, epochs=args.epochs,
                                      image_size=args.image_size)
        for r in results:
            print(json.dumps({k: r[k] for k in ("key", "status", "run_dir", "seconds")}))
        return 0

    return run_flow_command("python -m flows.train_evaluate", run,
                            check=lambda: load_spec(args.spec, spec_path()).narrow(epochs=args.epochs,
                                                                                     image_size=args.image_size))


if __name__ == "__main__":
    raise SystemExit(main())
