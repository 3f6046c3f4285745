"""A Ray worker SIGKILLed mid-training inside the benchmark flow: Ray re-runs the task, it resumes.

``tests/reliability/test_crash_resume.py`` kills a plain process running
``engine.train_evaluate``. Here the same fault hits the real path: ``mrkd-benchmark`` on a
local Ray (127.0.0.1), one training as a Ray task. The worker's PID is the one its key
claim records (``claims/<key>.json``: host, PID namespace, PID), so the test needs no hook
in the product. Once the first epoch's checkpoint is stored, the test SIGKILLs that PID.
Ray re-runs the task in a new worker (``flows.ray_runner.RAY_MAX_RETRIES``), which takes
over the dead worker's claim, resumes from the checkpoint and must end with the metrics,
per-image scores, loss curve and weights of an uninterrupted run with the same seed.

The Ray worker trains with one intra-op thread (Ray sets ``OMP_NUM_THREADS`` to the task's
CPU count, 1): the reference runs in this process with one thread too, since CPU results
are bit-equal only at equal thread counts.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from mrkd_core.claims import stale_seconds
from mrkd_core.engine import train_evaluate
from mrkd_core.layout import find_complete, run_dir
from mrkd_core.results import verify_manifest
from mrkd_core.specs import load_spec
from mrkd_core.storage import ArtifactStore
from tests.reliability.relkit import Reference, assert_same_result

pytestmark = pytest.mark.slow

CATEGORY = "obj_disc"
EPOCHS = 6  # ~0.2 s each here: the kill lands in epoch 2, well before the last one
KILL_TIMEOUT_S = 120  # Ray start + worker start + imports + first epoch, on 2 busy cores


def _spec(tmp_path: Path) -> str:
    spec = {
        "name": "worker-kill",
        "datasets": [{"name": "folder", "root": "generated-kill", "categories": [CATEGORY],
                      "generate": {"kind": "synthetic_mvtec", "categories": [CATEGORY], "n_train": 8,
                                   "n_test_good": 2, "n_test_defect": 2, "size": 32, "seed": 0}}],
        "base": {"backbone": "resnet18", "teacher_weights": "none", "image_size": 32, "epochs": EPOCHS,
                 "batch_size": 4, "num_workers": 0, "progress": False, "checkpoint_every": 1},
        "variants": {"mrkd": {}},
    }
    path = tmp_path / "worker-kill.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _is_ray_worker(pid: int) -> bool:
    """Ray names its worker processes ``ray::<task or IDLE>``: never kill anything else."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::")
    except OSError:
        return False


class WorkerKiller(threading.Thread):
    """Waits for the training's claim and first checkpoint in the store, then SIGKILLs the claimant."""

    def __init__(self, store: Path, key: str):
        super().__init__(name="worker-killer", daemon=True)
        self.claim = store / "claims" / f"{key}.json"
        self.ckpt = store / "checkpoints" / key
        self.stop = threading.Event()
        self.pid: int | None = None
        self.killed_at: float | None = None
        self.checkpoints_at_kill: list[str] = []
        self.error: str | None = None

    def run(self) -> None:
        deadline = time.monotonic() + KILL_TIMEOUT_S
        while not self.stop.is_set():
            if time.monotonic() > deadline:
                self.error = f"no claim and first checkpoint within {KILL_TIMEOUT_S} s"
                return
            if self.pid is None and self.claim.exists():
                try:
                    record = json.loads(self.claim.read_text())
                except ValueError:  # local writes are atomic, but be safe
                    record = {}
                if record.get("host") == platform.node() and isinstance(record.get("pid"), int):
                    self.pid = record["pid"]
            if self.pid is not None and (self.ckpt / "epoch-0001.pt.sha256.json").exists():
                if not _is_ray_worker(self.pid):
                    self.error = f"claimant {self.pid} is not a Ray worker: {Path(f'/proc/{self.pid}/cmdline')}"
                    return
                os.kill(self.pid, signal.SIGKILL)  # mid-epoch 2: no chance to clean up
                self.killed_at = time.time()
                self.checkpoints_at_kill = sorted(p.name for p in self.ckpt.glob("epoch-*.pt"))
                return
            time.sleep(0.01)


@pytest.fixture
def single_torch_thread():
    """The reference trains here with the Ray worker's one thread (reset afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_ray_worker_killed_mid_epoch_is_retried_resumes_and_equals_an_uninterrupted_run(
        prefect_api, local_store, tmp_path, single_torch_thread):
    import ray

    from flows.benchmark import benchmark
    from flows.ray_runner import RAY_MAX_RETRIES
    from flows.settings import data_root, spec_path

    assert RAY_MAX_RETRIES >= 1
    spec = _spec(tmp_path)
    store = ArtifactStore(local_store)
    (task,) = load_spec(spec, spec_path()).tasks(data_root(store))
    key = task.key
    killer = WorkerKiller(local_store, key)
    killer.start()
    started = time.perf_counter()
    try:
        out = benchmark(spec=spec, run_id="worker-kill", runner="ray")
    finally:
        killer.stop.set()
        killer.join(timeout=10)
    seconds = time.perf_counter() - started
    assert not ray.is_initialized(), "the flow must shut down the local Ray it started"
    assert killer.error is None, killer.error
    assert killer.killed_at is not None, "the training finished before its worker could be killed"
    # Killed mid-training: the first epoch's checkpoint was stored, the last epoch's was not.
    assert "epoch-0001.pt" in killer.checkpoints_at_kill
    assert f"epoch-{EPOCHS:04d}.pt" not in killer.checkpoints_at_kill, killer.checkpoints_at_kill

    # The flow completed: the one Ray task was re-run by Ray (Prefect retries an exception
    # inside the same, here dead, process) in another worker, after the kill.
    assert out["counts"] == {"trained": 1, "skipped": 0, "failed": 0}, out
    (record,) = out["tasks"]
    assert record["status"] == "trained" and record["node_id"]
    assert record["pid"] != killer.pid
    assert record["started"] > killer.killed_at
    assert record["resumed_from_epoch"] >= 1
    d = run_dir(task, "worker-kill")
    assert record["run_dir"] == d
    assert store.read_json(f"{d}/train.json")["resumed_from_epoch"] == record["resumed_from_epoch"]
    assert verify_manifest(store, d) == [] and find_complete(store, task) == d
    # The re-run took the dead worker's claim over at once (same host, PID gone), not after
    # MRKD_CLAIM_STALE_S without heartbeat, and released it when done.
    assert record["seconds"] < stale_seconds(), record["seconds"]
    assert not store.exists(f"claims/{key}.json")
    assert (local_store / "reports" / "worker-kill" / "report.html").is_file()

    # Equal to an uninterrupted run of the same task and seed (fresh store, one thread).
    ref_store = ArtifactStore(tmp_path / "reference-store")
    ref = train_evaluate(task, ref_store, "reference")
    assert ref.status == "trained" and ref.resumed_from_epoch == 0
    assert_same_result(store, d, Reference(ref_store, run_dir(task, "reference"), ref))
    print(f"flow with a killed Ray worker: {seconds:.1f} s; pid {killer.pid} killed, the re-run started "
          f"{record['started'] - killer.killed_at:.1f} s later and resumed from epoch {record['resumed_from_epoch']}")
