"""Serve the deployments of ``mrkd-benchmark`` from a checkout: what ``deployments/prefect.yaml`` declares.

``deployments/prefect.yaml`` is the one source of the deployments' names, entrypoint,
schedule, parameters, tags and concurrency limits: ``prefect deploy`` reads it for the
work pools, and :func:`deployments` reads the same file for ``serve`` (its process-pool
entries: ``nightly`` and ``on-demand``), so the two routes cannot drift apart.

The nightly run id is ``nightly-{date}``: :func:`flows.settings.resolve_run_id` fills in
the UTC date of the run's *scheduled* time, so each night gets its own report folder
(``reports/nightly-20261129/``) and a late or retried run keeps its night. The nightly
retrains what changed (``force: false``): a key whose config, training or test data or
training revision changed since its last complete result; an unchanged night trains
nothing. Every result is tracked in the model registry (``mvtec-full-mrkd``), a new version
promoted only when it is not worse than the champion, and a regressed category named in
the run's state message and its ``regressions-<spec>`` artifact (the run ends Completed;
``fail_on_regression: true`` makes it Failed). A nightly that overruns is never
overlapped: concurrency limit 1, a new run is cancelled (``CANCEL_NEW``).

On one machine without work pools, serve both deployments from this checkout::

    python -m flows.nightly          # long-running; Ctrl-C to stop
    prefect deployment run 'mrkd-benchmark/on-demand' --param spec=smoke

Serving takes the deployments over from a work pool when they were deployed there before
(``prefect deploy``): their runs then go to this process, and ``prefect deploy`` hands
them back to the pool. Both steps log what they replaced.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

import flows  # noqa: F401 - offline-safe environment defaults
from flows.benchmark import benchmark
from flows.ray_env import CODE_ROOT

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

log = logging.getLogger(__name__)

PREFECT_YAML = Path(CODE_ROOT) / "deployments" / "prefect.yaml"
FLOW_NAME = "mrkd-benchmark"
ENTRYPOINT = f"{benchmark.fn.__module__}.{benchmark.fn.__name__}"  # flows.benchmark.benchmark
PROCESS_POOL = "mrkd-process"
K8S_POOL = "mrkd-k8s"


def declared(path: Path = PREFECT_YAML) -> dict[str, dict[str, Any]]:
    """Every deployment of ``prefect.yaml`` by name, anchors expanded."""
    doc = yaml.safe_load(path.read_text())
    return {d["name"]: d for d in doc["deployments"]}


def served(path: Path = PREFECT_YAML) -> dict[str, dict[str, Any]]:
    """The deployments ``serve`` runs: those of the process pool (the k8s pair is for Kubernetes)."""
    found = {n: d for n, d in declared(path).items() if d["work_pool"]["name"] == PROCESS_POOL}
    for name, d in found.items():
        if d["entrypoint"] != ENTRYPOINT:
            raise ValueError(f"{path}: deployment {name!r} has entrypoint {d['entrypoint']!r}; serve runs "
                             f"{ENTRYPOINT!r} (a module path: Ray workers must be able to import the flow)")
    return found


def deployments(path: Path = PREFECT_YAML) -> list[RunnerDeployment]:
    """The process-pool deployments of ``prefect.yaml`` as runner deployments of this checkout."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.types.entrypoint import EntrypointType

    built = []
    for name, d in served(path).items():
        schedules = [CronSchedule(cron=s["cron"], timezone=s.get("timezone", "UTC")) for s in d.get("schedules") or []]
        limit = d.get("concurrency_limit")
        built.append(benchmark.to_deployment(
            name=name, schedules=schedules or None, parameters=d.get("parameters") or {}, tags=d.get("tags"),
            description=d.get("description"), entrypoint_type=EntrypointType.MODULE_PATH, paused=d.get("paused"),
            concurrency_limit=ConcurrencyLimitConfig(**limit) if isinstance(limit, dict) else limit))
    return built


def release_from_pools(names: list[str]) -> list[tuple[str, str]]:
    """Detach these deployments from any work pool (what ``prefect deploy`` bound them to).

    ``serve`` updates a deployment of the same name but leaves its work pool, whose worker
    would then race this process for every run. Returns (name, pool) of each one released.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate

    released = []
    with get_client(sync_client=True) as client:
        for name in names:
            d = client.read_deployment_by_name(f"{FLOW_NAME}/{name}")
            if d.work_pool_name:
                client.update_deployment(d.id, DeploymentUpdate(work_pool_name=None, work_queue_name=None))
                released.append((name, d.work_pool_name))
    return released


def serve() -> None:
    """Serve the deployments from this process (Prefect's ``serve``: no pool, no worker)."""
    import asyncio

    from prefect.exceptions import TerminationSignal
    from prefect.runner import Runner

    runner = Runner(name="mrkd-nightly")
    built = deployments()
    for deployment in built:
        runner.add_deployment(deployment)
    for name, pool in release_from_pools([d.name for d in built]):
        log.warning("serving %s/%s here from now on: it was deployed to work pool %s, whose workers no "
                    "longer get its runs (`prefect deploy` hands it back)", FLOW_NAME, name, pool)
    log.info("serving %s from %s (Ctrl-C stops): prefect deployment run '%s/on-demand' --param spec=smoke",
             ", ".join(f"{FLOW_NAME}/{d.name}" for d in built), CODE_ROOT, FLOW_NAME)
    try:
        asyncio.run(runner.start())
    except (KeyboardInterrupt, TerminationSignal) as exc:
        log.info("stopped serving (%s)", type(exc).__name__)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Importing Prefect gave the root logger its handler at WARNING, so basicConfig did nothing:
    # without this, the "serving …" line (what to type next) never reached the user.
    log.setLevel(logging.INFO)
    serve()
