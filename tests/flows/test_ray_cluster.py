"""GPU scheduling of the fan-out on a two-node Ray cluster, one declared GPU per node.

``ray.cluster_utils.Cluster`` starts a real head and a second raylet in this host. The
benchmark flow joins it by address (as a driver joins a real cluster) and asks for
one GPU per training: four trainings may then run two at a time, never two on one node.
The GPUs are declared, not real: Ray schedules on the resource count, torch sees no CUDA
and trains on the CPU.
"""

from __future__ import annotations

import json
import threading
import urllib.request

import pytest
import yaml

from tests.flows.servers import free_port

pytestmark = pytest.mark.slow

CATEGORIES = ["tex_stripes", "obj_disc"]
VARIANTS = {"mrkd": {}, "lambda=0.4": {"flm_ratio": 0.4}}  # 2 categories × 2 configs = 4 trainings


@pytest.fixture
def two_gpu_nodes(prefect_api):
    """Head (1 CPU, 1 GPU, dashboard on loopback) + worker node (1 CPU, 1 GPU)."""
    from ray.cluster_utils import Cluster

    from flows.local_ray import loopback_only

    dashboard_port = free_port()
    with loopback_only():  # both nodes on 127.0.0.1, like the local head
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "num_gpus": 1, "include_dashboard": True,
            "dashboard_host": "127.0.0.1", "dashboard_port": dashboard_port})
        try:
            cluster.add_node(num_cpus=1, num_gpus=1)
            cluster.wait_for_nodes(timeout=60)
        except BaseException:
            cluster.shutdown()
            raise
    try:
        yield cluster, f"http://127.0.0.1:{dashboard_port}"
    finally:
        cluster.shutdown()


def _spec(tmp_path) -> str:
    spec = {
        "name": "four-gpu-tasks",
        "datasets": [{"name": "folder", "root": "generated-four", "categories": CATEGORIES,
                      "generate": {"kind": "synthetic_mvtec", "categories": CATEGORIES, "n_train": 4,
                                   "n_test_good": 2, "n_test_defect": 2, "size": 32, "seed": 0}}],
        "base": {"backbone": "resnet18", "teacher_weights": "none", "image_size": 32, "epochs": 1,
                 "batch_size": 4, "num_workers": 0, "progress": False},
        "variants": VARIANTS,
    }
    path = tmp_path / "four.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _poll_dashboard(url: str, stop: threading.Event, answers: list[dict]) -> None:
    from flows.local_ray import auth_headers  # the dashboard asks for the Ray token

    request = urllib.request.Request(f"{url}/api/version", headers=auth_headers())
    while not stop.is_set():
        try:
            with urllib.request.urlopen(request, timeout=2) as resp:
                answers.append(json.loads(resp.read()))
        except OSError:
            pass
        stop.wait(1.0)


def test_four_gpu_trainings_run_two_at_a_time_one_per_node(two_gpu_nodes, local_store, tmp_path):
    import ray

    from flows.benchmark import benchmark

    cluster, dashboard = two_gpu_nodes
    nodes = {n.node_id for n in [cluster.head_node, *cluster.worker_nodes]}
    stop, answers = threading.Event(), []
    poller = threading.Thread(target=_poll_dashboard, args=(dashboard, stop, answers), daemon=True)
    poller.start()
    try:
        out = benchmark(spec=_spec(tmp_path), run_id="gpu-sched", runner="ray", ray_address=cluster.address,
                        num_gpus=1)
    finally:
        stop.set()
        poller.join(timeout=5)
    assert not ray.is_initialized(), "the driver must disconnect from the cluster it joined"

    tasks = out["tasks"]
    assert len(tasks) == 4 and {t["status"] for t in tasks} == {"trained"}
    assert {t["node_id"] for t in tasks} <= nodes
    intervals = sorted((t["started"], t["finished"], t["node_id"]) for t in tasks)
    overlapping = [(a, b) for i, a in enumerate(intervals) for b in intervals[i + 1:] if b[0] < a[1]]
    # Never three at once: at every task start, count the tasks running.
    concurrency = max(sum(1 for s, f, _ in intervals if s <= start < f) for start, _, _ in intervals)
    assert concurrency == 2, intervals
    assert overlapping and all(a[2] != b[2] for a, b in overlapping), "two trainings shared one GPU node"
    assert {t["node_id"] for t in tasks} == nodes  # both GPUs were used
    assert answers and answers[0].get("ray_version") == ray.__version__, answers[:1]
    assert (local_store / "reports" / "gpu-sched" / "report.html").is_file()
    # GPU trainings reuse worker processes (MRKD_RAY_REUSE_GPU_WORKERS defaults to on):
    # each node's two trainings ran in one process, on the node's one GPU (id 0).
    assert len({(t["node_id"], t["pid"]) for t in tasks}) == 2, [(t["node_id"], t["pid"]) for t in tasks]
    assert all(t["gpu_ids"] == ["0"] for t in tasks), [t["gpu_ids"] for t in tasks]


def test_reused_gpu_workers_see_every_gpu_and_fresh_ones_only_theirs(two_gpu_nodes):
    """What a task's process sees with and without reuse (the options ``Runner.submitting`` gives Ray)."""
    import ray

    from flows.ray_runner import cuda_index, ray_options

    def probe() -> dict:  # defined here so that Ray ships it by value, not by module name
        import os

        import ray

        return {"pid": os.getpid(), "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}

    from flows.local_ray import loopback_only

    cluster, _ = two_gpu_nodes
    with loopback_only():
        ray.init(address=cluster.address)
    try:
        for reuse in (True, False):
            remote = ray.remote(**ray_options(1.0, {}, reuse=reuse))(probe)
            seen = [ray.get(remote.remote()) for _ in range(4)]  # one after another
            pids = {s["pid"] for s in seen}
            if reuse:
                # Ray left CUDA_VISIBLE_DEVICES as the node has it (unset here): the
                # task indexes the node's GPUs itself.
                assert all(s["visible"] is None for s in seen), seen
                assert len(pids) < 4, seen
                assert all(cuda_index(s["gpu_ids"], s["visible"], ray_narrowed=False) == 0 for s in seen)
            else:
                assert all(s["visible"] == s["gpu_ids"][0] == "0" for s in seen), seen
                assert len(pids) == 4, seen  # a fresh process per task
    finally:
        ray.shutdown()
