"""The deployments of ``mrkd-benchmark``: names, schedule and parameters, in one place.

``deployments/prefect.yaml`` declares the same deployments for the work pools
(``prefect deploy``); ``tests/flows/test_deployments.py`` checks that the two agree.

The nightly run id is ``nightly-{date}``: :func:`flows.settings.resolve_run_id` fills in
the UTC date of the run's *scheduled* time, so each night gets its own report folder
(``reports/nightly-20261129/``) and a late or retried run keeps its night. The nightly
retrains (``force``): each night is a fresh model on the current data; a retry of the same
night still skips the keys that night already finished.

On one machine without work pools, serve both deployments from this checkout::

    python -m flows.nightly          # long-running; Ctrl-C to stop
    prefect deployment run 'mrkd-benchmark/on-demand' --param spec=smoke
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import flows  # noqa: F401 - offline-safe environment defaults
from flows.benchmark import benchmark

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

log = logging.getLogger(__name__)

FLOW_NAME = "mrkd-benchmark"
NIGHTLY = "nightly"
ON_DEMAND = "on-demand"
NIGHTLY_CRON = "0 2 * * *"
NIGHTLY_TIMEZONE = "UTC"
NIGHTLY_PARAMETERS: dict[str, Any] = {"spec": "mvtec-full", "run_id": "nightly-{date}", "force": True}
ON_DEMAND_PARAMETERS: dict[str, Any] = {"spec": "smoke"}
PROCESS_POOL = "mrkd-process"
K8S_POOL = "mrkd-k8s"


def deployments() -> list[RunnerDeployment]:
    """``nightly`` and ``on-demand`` as Prefect runner deployments of this checkout."""
    from prefect.client.schemas.schedules import CronSchedule

    nightly = benchmark.to_deployment(
        name=NIGHTLY, schedule=CronSchedule(cron=NIGHTLY_CRON, timezone=NIGHTLY_TIMEZONE),
        parameters=NIGHTLY_PARAMETERS, tags=["mrkd", "nightly"],
        description="The paper's MVTec AD benchmark, every night at 02:00 UTC.")
    on_demand = benchmark.to_deployment(
        name=ON_DEMAND, parameters=ON_DEMAND_PARAMETERS, tags=["mrkd"],
        description="Any spec, when asked: prefect deployment run 'mrkd-benchmark/on-demand' --param spec=NAME")
    return [nightly, on_demand]


def serve() -> None:
    """Serve both deployments from this process (Prefect's ``serve``: no pool, no worker)."""
    from prefect import serve as prefect_serve

    prefect_serve(*deployments())


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve()
