"""The Kubernetes route without a cluster: render the flow-run Job, then load its flow as the pod would.

The ``mrkd-k8s`` pool is created from ``infra/k8s/prefect/base-job-template.json`` and the
``on-demand-k8s`` deployment from ``deployments/prefect.yaml``, both with the commands of
deployments/README.md, on a real Prefect server. A flow run of it is rendered into its Job
manifest by prefect-kubernetes' own job configuration (what the ``kubernetes`` worker does).
Then what that pod does is done here, in the Job's environment: the flow is loaded from the
deployment's entrypoint in the image's working directory (this checkout stands in for
``/opt/mrkd``), it and its training task are pickled as prefect-ray pickles them,
and a fresh Python with the environment Ray workers get, in another directory, unpickles
them. With the old file-path entrypoint the same round trip fails with ``No module named
'benchmark'``, which is what every training on Ray did.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap

import pytest

from flows import nightly
from tests.flows.servers import BIN, ROOT, clean_env

pytestmark = pytest.mark.slow

TEMPLATE = ROOT / "infra" / "k8s" / "prefect" / "base-job-template.json"

# In the pod (cwd = the image's WORKDIR): load the flow as `prefect flow-run execute` does
# after its pull step, pickle what prefect-ray ships to a Ray worker; print the workers' env.
LOAD = textwrap.dedent("""
    import json, sys
    from prefect.flows import load_flow_from_entrypoint
    import ray.cloudpickle as cloudpickle
    from flows.ray_runner import resolve_runner
    modules = []
    for entrypoint, path in zip(sys.argv[1::2], sys.argv[2::2]):
        flow = load_flow_from_entrypoint(entrypoint)
        module = sys.modules[flow.fn.__module__]
        with open(path, "wb") as f:
            cloudpickle.dump((flow, module.train_one), f)
        modules.append(flow.fn.__module__)
    env = resolve_runner("ray", None, 0, "s3://b/store", "/data/datasets").worker_env()
    print(json.dumps({"modules": modules, "worker_env": env}))
""")

# A Ray worker: another process, another directory, only the environment Ray gives it.
UNPICKLE = textwrap.dedent("""
    import sys
    import ray.cloudpickle as cloudpickle
    flow, train_one = cloudpickle.load(open(sys.argv[1], "rb"))
    print(flow.name, train_one.name)
""")


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "prefect"), "--no-prompt", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, f"prefect {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
    return proc


async def _render(deployment_name: str):
    """Create a flow run of the deployment and render its Job as the kubernetes worker does."""
    from prefect.client.orchestration import get_client
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    async with get_client() as client:
        deployment = await client.read_deployment_by_name(f"{nightly.FLOW_NAME}/{deployment_name}")
        pool = await client.read_work_pool(deployment.work_pool_name)
        flow_run = await client.create_flow_run_from_deployment(
            deployment.id, parameters={"spec": "smoke", "categories": ["obj_disc"]})
        flow = await client.read_flow(deployment.flow_id)
        config = await KubernetesWorkerJobConfiguration.from_template_and_values(
            pool.base_job_template, {**(deployment.job_variables or {}), **(flow_run.job_variables or {})})
        config.prepare_for_flow_run(flow_run, deployment, flow, pool, "test-worker")
        return deployment, flow_run, config


def _pod_env(container: dict) -> dict[str, str]:
    """The container's plain env entries; Secret references become this machine's equivalents."""
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert {e["name"] for e in container["env"] if "valueFrom" in e} == {"RAY_AUTH_TOKEN"}
    return env


def _load_in_pod(entrypoints: list[str], pod_env: dict[str, str], tmp_path) -> tuple[dict, list]:
    """Load each entrypoint in the pod's environment and pickle what a Ray worker receives."""
    pickles = [tmp_path / f"shipped-{i}.pkl" for i in range(len(entrypoints))]
    args = [a for e, p in zip(entrypoints, pickles) for a in (e, str(p))]
    load = subprocess.run([sys.executable, "-c", LOAD, *args], cwd=ROOT, env=pod_env, capture_output=True,
                          text=True, timeout=180)
    assert load.returncode == 0, load.stdout + load.stderr
    return json.loads(load.stdout.strip().splitlines()[-1]), pickles


def _unpickle_in_ray_worker(pickled, loaded: dict, pod_env: dict[str, str], tmp_path) -> subprocess.CompletedProcess:
    worker_dir = tmp_path / "ray-worker-cwd"
    worker_dir.mkdir(exist_ok=True)
    worker_env = {"PATH": pod_env["PATH"], "HOME": pod_env.get("HOME", "/tmp"), **loaded["worker_env"]}
    return subprocess.run([sys.executable, "-c", UNPICKLE, str(pickled)], cwd=worker_dir, env=worker_env,
                          capture_output=True, text=True, timeout=180)


def test_the_k8s_job_starts_the_flow_under_a_module_name_ray_workers_import(prefect_api, prefect_home, tmp_path):
    env = clean_env(PREFECT_API_URL=prefect_api, PREFECT_HOME=str(prefect_home))
    _cli(["work-pool", "create", nightly.K8S_POOL, "--type", "kubernetes", "--base-job-template", str(TEMPLATE),
          "--overwrite"], env)
    _cli(["deploy", "--prefect-file", "deployments/prefect.yaml", "--name", "on-demand-k8s"], env)

    deployment, flow_run, config = asyncio.run(_render("on-demand-k8s"))
    assert deployment.entrypoint == "flows.benchmark.benchmark"
    assert deployment.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/mrkd"}}]
    manifest = config.job_manifest
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    declared = nightly.declared()["on-demand-k8s"]["work_pool"]["job_variables"]
    assert container["image"] == declared["image"]
    assert container["resources"]["requests"] == {"cpu": declared["cpu_request"], "memory": declared["memory_request"]}
    assert " ".join(container["args"]) == "prefect flow-run execute"
    pod = _pod_env(container)
    assert pod["PREFECT__FLOW_RUN_ID"] == str(flow_run.id)
    assert pod["RAY_ADDRESS"] == "ray://mrkd-ray-head-svc:10001" and pod["RAY_AUTH_MODE"] == "token"

    # The pod, here: its env (no cluster: the Ray client address is not used), this machine's
    # token for the Secret, the checkout as the image's /opt/mrkd, no PYTHONPATH.
    base = clean_env(PREFECT_API_URL=prefect_api, PREFECT_HOME=str(prefect_home))
    base.pop("PYTHONPATH")
    pod_env = {**base, **{k: v for k, v in pod.items() if k != "RAY_ADDRESS"}}
    # With it, the entrypoint this replaced: loaded by path, pickled by reference to a module
    # the workers do not have; its round trip must fail exactly as the trainings did.
    loaded, (shipped, by_path) = _load_in_pod([deployment.entrypoint, "flows/benchmark.py:benchmark"], pod_env,
                                              tmp_path)
    assert loaded["modules"] == ["flows.benchmark", "benchmark"]
    unpickle = _unpickle_in_ray_worker(shipped, loaded, pod_env, tmp_path)
    assert unpickle.returncode == 0, unpickle.stdout + unpickle.stderr
    assert unpickle.stdout.split() == ["mrkd-benchmark", "train-evaluate"]
    unpickle = _unpickle_in_ray_worker(by_path, loaded, pod_env, tmp_path)
    assert unpickle.returncode != 0 and "No module named 'benchmark'" in unpickle.stderr, unpickle.stderr[-2000:]
