"""Every attempt of a training, in the training's own task run: the ones Ray re-ran, the ones that all died.

A training (task ``train-evaluate``) can run several times under one task run id:

- Prefect retries an exception (``flows.train_evaluate.TRAIN_RETRIES``) in the same process and
  records it itself: state *AwaitingRetry*, then *Retrying*, ``run_count`` 2, 3.
- Ray re-runs the task when its worker process died (``flows.ray_runner.RAY_MAX_RETRIES``):
  a SIGKILL, the OOM killer, Ray's memory monitor, a lost node. Prefect knows nothing of
  it: the new worker ran the task again under the same id, and the task run started afresh
  (``run_count`` 1, *Completed*), with the claim takeover warning as the only trace.
  :func:`continue_after_death` runs in the new worker before Prefect's task engine: it
  reads what Ray recorded of the earlier attempts (its state API: worker PID, node, error
  type), puts the task run in state *Crashed* with that cause, logs it as a warning, and
  hands the task run on, so that the engine counts this attempt (``run_count`` 2, 3).
- When every attempt died, no worker is left to say so, and the task run stayed *Running*
  (or did not exist, when Prefect never heard of its first attempt): :func:`settle_task_run`,
  called by the driver when a training's future failed, ends it *Failed* with the error
  and the cause of each attempt, creating it where needed.

Ray does not record how a worker process died: the raylet reports "unexpectedly exits with
a connection error code 2. End of file" for a SIGKILL and a segfault alike (Ray 2.60), and
only the worker's parent could know the signal. So a cause names what Ray knows (the error
type: ``WORKER_DIED``, ``OUT_OF_MEMORY`` for its memory monitor, ``NODE_DIED``), the worker's
PID and node, and what such a death usually is.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

log = logging.getLogger(__name__)

STATE_API_TIMEOUT_S = 10
FLUSH_TIMEOUT_S = 5  # as long as Prefect's own flush of its log worker waits
DEATH_RECORD_WAIT_S = 5  # Ray records a dead attempt about a second after its death

# What Ray's error types of a dead attempt mean, for the task run's message.
DEATHS = {
    "WORKER_DIED": "its worker process died without returning (killed by a signal such as SIGKILL — the OOM "
                   "killer, a preemption, kill -9 — or crashed; Ray does not record which)",
    "OUT_OF_MEMORY": "Ray's memory monitor killed its worker process: the node ran low on memory",
    "NODE_DIED": "its node was lost",
}


@dataclass(frozen=True)
class RayAttempt:
    """One attempt of a Ray task as Ray's state API records it; ``number`` counts from 1."""

    number: int
    state: str
    error_type: str | None = None
    error_message: str = ""
    worker_pid: int | None = None
    node_id: str | None = None

    def where(self) -> str:
        """``Ray worker pid 3719 on node f5b6a6af`` (what is known of it), with Ray's own message when it has one."""
        text = "Ray worker" + (f" pid {self.worker_pid}" if self.worker_pid else "")
        if self.node_id:
            text += f" on node {self.node_id[:8]}"
        return text + (f"; Ray: {first_line(self.error_message)}" if self.error_message.strip() else "")

    def cause(self) -> str:
        """Why it ended, as far as Ray knows (:data:`DEATHS`)."""
        return DEATHS.get(self.error_type or "", self.error_type or "it ended without a result")

    def death(self) -> str:
        """``attempt 1 (Ray worker pid 3719 on node f5b6a6af) died: its worker process died without returning (…)``."""
        return deaths([self])


def deaths(attempts: list[RayAttempt]) -> str:
    """The deaths of ``attempts`` in one sentence, each cause said once:
    ``attempt 1 (Ray worker pid 3719 on node f5b6a6af) and attempt 2 (…) died: its worker process died …``."""
    by_cause: dict[str, list[RayAttempt]] = {}
    for a in attempts:
        by_cause.setdefault(a.cause(), []).append(a)
    parts = []
    for cause, group in by_cause.items():
        names = [f"attempt {a.number} ({a.where()})" for a in group]
        who = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
        parts.append(f"{who} died: {cause}")
    return "; ".join(parts)


def first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def current_attempt() -> int:
    """The Ray attempt of the task running in this process, from 1 (1 outside a Ray task).

    Ray re-runs a task only when its worker process died (``retry_exceptions`` is off), so
    an attempt above 1 means every earlier one died.
    """
    try:
        import ray

        if not ray.is_initialized():
            return 1
        # Ray 2.60 has no public accessor for it; tests/flows/test_ray_worker_kill.py holds it.
        return int(ray._private.worker.global_worker.core_worker.get_current_task_attempt_number()) + 1
    except Exception:  # noqa: BLE001 - not in a Ray task (a driver, the local runner)
        return 1


def ray_attempts(task_id: str | None) -> list[RayAttempt]:
    """Ray's record of each attempt of task ``task_id`` (hex), oldest first; [] when Ray cannot say.

    Reads Ray's state API through the dashboard of the Ray this process is connected to
    (a worker or the driver), with the machine's token; empty when there is no dashboard.
    """
    if not task_id:
        return []
    try:
        import ray
        from ray.util.state import list_tasks

        rows = list_tasks(address=ray.get_runtime_context().gcs_address, filters=[("task_id", "=", task_id)],
                          detail=True, timeout=STATE_API_TIMEOUT_S, raise_on_missing_output=False)
    except Exception as exc:  # noqa: BLE001 - a cause is a view; the training goes on without it
        log.info("Ray's state API did not answer for task %s (%s): attempts are described without it", task_id,
                 error_line(exc))
        return []
    return sorted((RayAttempt(number=int(r.attempt_number) + 1, state=str(r.state), error_type=r.error_type,
                              error_message=r.error_message or "", worker_pid=r.worker_pid, node_id=r.node_id)
                   for r in rows), key=lambda a: a.number)


def dead_attempts(task_id: str | None, count: int, wait_s: float = 0.0) -> list[RayAttempt]:
    """The first ``count`` attempts of task ``task_id``, each as Ray recorded its death.

    Ray records an attempt's end about a second after it (task events are buffered):
    ``wait_s`` is how long to wait for the last ones. An attempt Ray has no record of is
    described by what Ray's re-run (or its final error) implies: its worker died.
    """
    deadline = time.monotonic() + wait_s
    while True:
        known = {a.number: a for a in ray_attempts(task_id) if a.error_type}
        if len(known) >= count or time.monotonic() >= deadline or not task_id:
            break
        time.sleep(0.5)
    return [known.get(n) or RayAttempt(n, "FAILED", "WORKER_DIED") for n in range(1, count + 1)]


def flush_to_api() -> None:
    """Send the log lines and state events this process queued for the Prefect API now (at most 5 s each).

    Prefect sends both from background threads, every 2 s for logs: a worker killed a
    moment after an attempt started would otherwise take the attempt's first line (and
    its *Running* state) with it.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=FLUSH_TIMEOUT_S)
    EventsWorker.drain_all(timeout=FLUSH_TIMEOUT_S)


def continue_after_death(task: Any, task_run_id: UUID, attempt: int, task_id: str | None) -> Any:
    """In a Ray worker running attempt ``attempt`` (> 1) of a task: record why the one before ended.

    Sets the task run's state to *Crashed* with the death of attempt ``attempt - 1`` as Ray
    recorded it (``task_id``: this Ray task, hex; the attempts before it were recorded by
    the re-runs that followed them) and logs it (WARNING) in the task run, then returns the
    task run as the API has it (``run_count`` of the attempts so far) for Prefect's engine
    to continue; None when Prefect never heard of the task run (the engine then creates
    it) or the API did not answer.
    """
    from prefect import get_client
    from prefect.logging.loggers import task_run_logger
    from prefect.states import Crashed

    previous = dead_attempts(task_id, attempt - 1, DEATH_RECORD_WAIT_S)[-1]
    message = f"{previous.death()}; Ray runs the training again (attempt {attempt})"
    try:
        with get_client(sync_client=True) as client:
            client.set_task_run_state(task_run_id, Crashed(message=message), force=True)
            task_run = client.read_task_run(task_run_id)
    except Exception as exc:  # noqa: BLE001 - unknown to the API yet: the engine creates it
        log.warning("task run %s: %s (the API has no record of the earlier attempts: %s)", task_run_id, message,
                    error_line(exc))
        return None
    task_run_logger(task_run, task=task).warning("%s", message)
    return task_run


def worker_died(exc: BaseException) -> bool:
    """Whether a Ray task's error says its worker process died (so Ray re-ran it until its retries ran out)."""
    return type(exc).__name__ in ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError")


def error_line(exc: BaseException) -> str:
    """``Type: first line`` of an error (Ray adds its traceback below the first line)."""
    text = first_line(str(exc))
    return f"{type(exc).__name__}: {text}".rstrip(": ")


def failure_message(exc: BaseException, task_id: str | None, attempts: int) -> str:
    """What a training's failed future says: its error, and when the worker of each of its ``attempts``
    died, each death as Ray recorded it (``task_id``: the Ray task, hex)::

        every attempt died (3): attempt 1 (Ray worker pid 3719 on node f5b6a6af), attempt 2 (…) and
        attempt 3 (…) died: its worker process died without returning (…); last error: WorkerCrashedError: …
    """
    if not worker_died(exc):
        return error_line(exc)
    dead = dead_attempts(task_id, attempts, DEATH_RECORD_WAIT_S)
    return f"every attempt died ({attempts}): {deaths(dead)}; last error: {error_line(exc)}"


def settle_task_run(task: Any, task_run_id: UUID, name: str, message: str) -> bool:
    """After a training's future failed in the driver: make sure its task run ends *Failed* with ``message``.

    A training that raised has ended *Failed* by itself, and is left as it is (returns
    False). One that no attempt could end (every worker died, or it never started in its
    worker) is *Running*, *Crashed*, or unknown to Prefect: it ends *Failed* (created where
    needed: ``task`` and ``name``, the Prefect task and the run's name) and True is returned.
    """
    from prefect import get_client
    from prefect.context import FlowRunContext
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Failed

    try:
        with get_client(sync_client=True) as client:
            try:
                task_run = client.read_task_run(task_run_id)
            except ObjectNotFound:
                context = FlowRunContext.get()
                flow_run_id = context.flow_run.id if context and context.flow_run else None
                client.create_task_run(task, flow_run_id, dynamic_key=str(task_run_id), id=task_run_id, name=name,
                                       state=Failed(message=message))
                return True
            if task_run.state is not None and task_run.state.is_final() and not task_run.state.is_crashed():
                return False
            client.set_task_run_state(task_run_id, Failed(message=message), force=True)
    except Exception as exc:  # noqa: BLE001 - the flow's own state still names the failure
        log.warning("task run %s (%s) could not be marked failed: %s", task_run_id, name, error_line(exc))
    return True


__all__ = ["DEATHS", "RayAttempt", "continue_after_death", "current_attempt", "dead_attempts", "deaths", "error_line",
           "failure_message", "first_line", "flush_to_api", "ray_attempts", "settle_task_run", "worker_died"]
