"""prefect-ray's ``RayTaskRunner`` as the fan-out uses it (imports Ray: load it only for runner=ray).

Four additions, each for something users saw go wrong:

- **A Ray on this machine is locked down.** Before a local Ray starts, or the local head is
  joined, the machine's Ray token is made to exist and Ray's single-machine switch is on
  (:mod:`flows.local_ray`): every port on 127.0.0.1, every client asked for the token.
- **The dashboard URL is in the flow run's log** once Ray is up (a cluster's included).
- **A task run's logs reach the Prefect API.** A Ray worker sends Prefect logs from a
  background thread every 2 s; the driver shuts Ray down (and the workers with it) as soon
  as the last training returns, which lost the last seconds of each task run's log. Each
  task's logs (and its state events) are therefore sent from the worker before its result
  goes back (:func:`flows.attempts.flush_to_api`).
- **A task Ray re-ran is the same task run, one attempt further.** Ray re-runs a task whose
  worker process died; the new attempt records the death of the earlier ones in the task
  run (state *Crashed* with the cause, a warning in its log) and continues it, so that
  ``run_count`` counts every attempt (:mod:`flows.attempts`). Before, the re-run started
  the task run afresh (*Completed*, ``run_count`` 1).
"""

from __future__ import annotations

import contextlib
from typing import Any

from prefect_ray import RayTaskRunner

from flows.attempts import continue_after_death, current_attempt, flush_to_api
from flows.local_ray import ensure_token, loopback_only



def _run_logger(fallback: Any) -> Any:
    """The flow run's logger (its lines reach the Prefect API), else the task runner's own."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return fallback


class LoggedRayTaskRunner(RayTaskRunner):
    """``RayTaskRunner(address, init_kwargs)``; ``loopback``: the Ray lives on this machine only."""

    def __init__(self, address: str | None = None, init_kwargs: dict[str, Any] | None = None,
                 loopback: bool = False):
        super().__init__(address=address, init_kwargs=init_kwargs)
        self.loopback = loopback

    def duplicate(self) -> LoggedRayTaskRunner:
        return type(self)(address=self.address, init_kwargs=self.init_kwargs, loopback=self.loopback)

    def __enter__(self) -> LoggedRayTaskRunner:
        ensure_token()
        with loopback_only() if self.loopback else contextlib.nullcontext():
            super().__enter__()
        url = getattr(getattr(self, "_ray_context", None), "dashboard_url", None)
        if url:
            _run_logger(self.logger).info("Ray dashboard: %s", url if "://" in url else f"http://{url}")
        return self

    @staticmethod
    def _run_prefect_task(*upstream: Any, task: Any, task_run_id: Any, context: dict[str, Any],
                          parameters: dict[str, Any], wait_for: Any = None, dependencies: Any = None) -> Any:
        """What runs in the Ray worker: the Prefect task (continuing its task run when Ray re-ran it),
        then its logs and state events sent to the API."""
        try:
            attempt = current_attempt()
            if attempt == 1 or task.isasync:  # (no training task is async)
                return RayTaskRunner._run_prefect_task(*upstream, task=task, task_run_id=task_run_id, context=context,
                                                       parameters=parameters, wait_for=wait_for,
                                                       dependencies=dependencies)
            return _rerun_prefect_task(task, task_run_id, context, parameters, wait_for, dependencies, attempt)
        finally:
            flush_to_api()


def _rerun_prefect_task(task: Any, task_run_id: Any, context: dict[str, Any], parameters: dict[str, Any],
                        wait_for: Any, dependencies: Any, attempt: int) -> Any:
    """Attempt ``attempt`` (> 1) of a task Ray re-ran because its worker died: prefect-ray's
    ``_run_prefect_task`` with the task run continued (:func:`flows.attempts.continue_after_death`)."""
    import ray
    from prefect.task_engine import run_task_sync
    from prefect.utilities.collections import visit_collection

    def resolve(expr: Any) -> Any:
        return ray.get(expr) if isinstance(expr, ray.ObjectRef) else expr

    parameters = visit_collection(parameters, visit_fn=resolve, return_data=True)
    task_run = continue_after_death(task, task_run_id, attempt, ray.get_runtime_context().get_task_id())
    # A training task is synchronous (prefect-ray runs async tasks through run_task_async).
    return run_task_sync(task=task, task_run_id=task_run_id, task_run=task_run, parameters=parameters,
                         wait_for=wait_for, dependencies=dependencies, context=context, return_type="state")
