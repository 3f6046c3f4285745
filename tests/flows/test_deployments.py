"""deployments/prefect.yaml deployed to a real Prefect server, run by a real process worker.

What an operator types: create the pool, ``prefect deploy`` from the YAML, start a
worker, ``prefect deployment run 'mrkd-benchmark/on-demand' --param spec=smoke``. The
YAML's pull step points at the image's /opt/mrkd; the test deploys a copy whose pull
step points at this checkout, and nothing else changes.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
import uuid
from datetime import timezone
from pathlib import Path

import pytest
import yaml

from flows import nightly
from tests.flows.servers import BIN, ROOT, clean_env, stop_process

pytestmark = pytest.mark.slow

PREFECT_YAML = ROOT / "deployments" / "prefect.yaml"
CLI_TIMEOUT = 120
RUN_TIMEOUT = 240


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "prefect"), "--no-prompt", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=CLI_TIMEOUT)
    assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def _deployments() -> dict[str, dict]:
    doc = yaml.safe_load(PREFECT_YAML.read_text())
    return {d["name"]: d for d in doc["deployments"]}


def test_yaml_agrees_with_flows_nightly():
    """One contract, two places (prefect.yaml for pools, flows/nightly.py for `serve`)."""
    deps = _deployments()
    assert set(deps) == {"nightly", "on-demand", "nightly-k8s", "on-demand-k8s"}
    for name in ("nightly", "nightly-k8s"):
        (schedule,) = deps[name]["schedules"]
        assert (schedule["cron"], schedule["timezone"]) == (nightly.NIGHTLY_CRON, nightly.NIGHTLY_TIMEZONE)
        assert deps[name]["parameters"] == nightly.NIGHTLY_PARAMETERS
    for name in ("on-demand", "on-demand-k8s"):
        assert deps[name]["parameters"] == nightly.ON_DEMAND_PARAMETERS and not deps[name].get("schedules")
    for d in deps.values():
        assert d["entrypoint"] == "flows/benchmark.py:benchmark"
        pool = nightly.K8S_POOL if d["name"].endswith("-k8s") else nightly.PROCESS_POOL
        assert d["work_pool"]["name"] == pool
    assert deps["nightly-k8s"]["work_pool"]["job_variables"]["image"] == "ghcr.io/mrkd-project/mrkd:0.1.0"


def test_nightly_run_id_is_the_scheduled_date():
    from datetime import datetime, timezone

    from flows.settings import resolve_run_id

    when = datetime(2026, 11, 29, 2, 0, tzinfo=timezone.utc)
    assert resolve_run_id(nightly.NIGHTLY_PARAMETERS["run_id"], "mvtec-full", when) == "nightly-20261129"
    assert resolve_run_id(None, "smoke", when) == "smoke-20261129-020000"


def _local_copy(tmp_path: Path) -> Path:
    """The process-pool deployments of prefect.yaml, pulling from this checkout instead of /opt/mrkd."""
    doc = yaml.safe_load(PREFECT_YAML.read_text())
    doc.pop("definitions", None)  # anchors are already expanded by the YAML loader
    doc["pull"] = [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]
    doc["deployments"] = [d for d in doc["deployments"] if d["work_pool"]["name"] == nightly.PROCESS_POOL]
    path = tmp_path / "prefect.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


async def _wait_final(flow_run_id: str, timeout: float):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while True:
            run = await client.read_flow_run(uuid.UUID(flow_run_id))
            if run.state is not None and run.state.is_final():
                return run
            if time.monotonic() > deadline:
                return run
            await asyncio.sleep(1.0)


async def _read_deployment(name: str):
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await client.read_deployment_by_name(name)


def test_on_demand_deployment_runs_on_a_process_worker(prefect_api, prefect_home, tmp_path):
    store, data = tmp_path / "store", tmp_path / "data"
    env = clean_env(PREFECT_API_URL=prefect_api, PREFECT_HOME=str(prefect_home))
    # The worker (and the flow runs it starts) find the store like any deployment: in their environment.
    # No PYTHONPATH: the flow-run process must find flows/ and mrkd_core/ from the pulled working directory.
    worker_env = {**env, "MRKD_STORE": str(store), "MRKD_DATA_ROOT": str(data)}
    worker_env.pop("PYTHONPATH")

    _cli(["work-pool", "create", nightly.PROCESS_POOL, "--type", "process", "--overwrite"], env)
    _cli(["deploy", "--prefect-file", str(_local_copy(tmp_path)), "--name", "on-demand", "--name", "nightly"], env)

    deployed = asyncio.run(_read_deployment("mrkd-benchmark/nightly"))
    (schedule,) = deployed.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == (nightly.NIGHTLY_CRON, nightly.NIGHTLY_TIMEZONE)
    assert deployed.parameters == nightly.NIGHTLY_PARAMETERS and deployed.work_pool_name == nightly.PROCESS_POOL

    log = open(tmp_path / "worker.log", "wb")
    worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", nightly.PROCESS_POOL,
                               "--type", "process", "--limit", "1"],
                              cwd=tmp_path, env=worker_env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        started = time.perf_counter()
        proc = _cli(["deployment", "run", "mrkd-benchmark/on-demand", "--param", "spec=smoke",
                     "--param", 'categories=["obj_disc"]', "--param", "run_id=deployed-{date}", "--param", "runner=local",
                     "--param", "image_size=32"],
                    env)
        match = re.search(r"UUID:\s*([0-9a-f-]{36})", proc.stdout)
        assert match, proc.stdout
        run = asyncio.run(_wait_final(match.group(1), RUN_TIMEOUT))
        seconds = time.perf_counter() - started
    finally:
        stop_process(worker)
        log.close()
    worker_log = (tmp_path / "worker.log").read_text(errors="replace")
    assert run.state is not None and run.state.is_completed(), f"{run.state}\n{worker_log[-4000:]}"
    assert run.parameters["spec"] == "smoke"
    # {date} is the run's scheduled date (UTC), as for the nightly.
    run_id = f"deployed-{run.expected_start_time.astimezone(timezone.utc):%Y%m%d}"
    # The run's results are in the store the worker's environment named.
    metrics = list((store / "tables" / "metrics" / "dataset=folder" / f"run_id={run_id}").glob("*.parquet"))
    assert [m.name.split("-")[0] for m in metrics] == ["obj_disc"]
    assert (store / "reports" / run_id / "report.html").is_file()
    assert len(list((store / "runs" / run_id).rglob("manifest.json"))) == 1
    print(f"deployment run (trigger → COMPLETED): {seconds:.1f} s")


def test_serve_builds_the_same_deployments():
    """`python -m flows.nightly` (one machine, no pool) serves what prefect.yaml declares."""
    built = {d.name: d for d in nightly.deployments()}
    assert set(built) == {"nightly", "on-demand"}
    (schedule,) = built["nightly"].schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone) == (nightly.NIGHTLY_CRON, nightly.NIGHTLY_TIMEZONE)
    assert built["nightly"].parameters == nightly.NIGHTLY_PARAMETERS
    assert built["on-demand"].parameters == nightly.ON_DEMAND_PARAMETERS and not built["on-demand"].schedules
    assert all(d.flow_name == nightly.FLOW_NAME for d in built.values())
