"""What the flow tests ask a Prefect server, as an operator would: the CLI, then the API.

``prefect_cli`` runs ``prefect …`` from the repository root; ``run_deployment`` is
``prefect deployment run NAME --param k=v [--start-at WHEN]`` followed to the run's final
state; ``runs_of`` reads a flow run's task runs (with their logs and artifacts), its
subflows and its own log; ``flow_run_artifacts`` the artifacts of the flow run itself.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
import uuid

from tests.flows.servers import BIN, ROOT

CLI_TIMEOUT = 180
RUN_TIMEOUT = 300


def prefect_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "prefect"), "--no-prompt", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=CLI_TIMEOUT)
    assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def run_deployment(env: dict[str, str], deployment: str, *params: str, start_at: str | None = None,
                   timeout: float = RUN_TIMEOUT):
    """``prefect deployment run '<deployment>' --param …`` (scheduled ``start_at``, else now) to its final state."""
    args = ["deployment", "run", deployment]
    for p in params:
        args += ["--param", p]
    if start_at:
        args += ["--start-at", start_at]
    proc = prefect_cli(args, env)
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", proc.stdout)
    assert match, proc.stdout
    return asyncio.run(wait_final(match.group(1), timeout))


async def wait_final(flow_run_id: str, timeout: float):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while True:
            run = await client.read_flow_run(uuid.UUID(flow_run_id))
            if (run.state is not None and run.state.is_final()) or time.monotonic() > deadline:
                return run
            await asyncio.sleep(1.0)


async def api(fn):
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        return await fn(client)


def deployment(flow: str, name: str):
    return asyncio.run(api(lambda c: c.read_deployment_by_name(f"{flow}/{name}")))


async def runs_of(client, parent_id):
    """Task runs of a flow run and of its subflows, with their logs and artifacts."""
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterTaskRunId,
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterParentFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
        LogFilterTaskRunId,
    )

    subflows = await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])))
    ids = [parent_id, *[f.id for f in subflows]]
    task_runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
    out = {}
    for tr in task_runs:
        logs = await client.read_logs(log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=[tr.id])))
        arts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(task_run_id=ArtifactFilterTaskRunId(any_=[tr.id])))
        out[tr.name] = (tr, [log.message for log in logs], arts)
    flow_logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[parent_id])))
    return out, subflows, [log.message for log in flow_logs]


def flow_run_artifacts(flow_run_id) -> dict[str, object]:
    """The keyed artifacts created by the flow run itself (not its task runs), by key."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    arts = asyncio.run(api(lambda c: c.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))))
    return {a.key: a for a in arts if a.key and a.task_run_id is None}
