"""Helpers of the reliability tests (imported as ``tests.reliability.relkit``).

Tiny tasks, byte-level snapshots of a store, exact comparison with a reference run,
``engine.train_evaluate`` in a subprocess (``worker.py``) that a test can SIGKILL by PID,
and a moto S3 server on 127.0.0.1 that a test can take down and bring back.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from mrkd_core.config import MRKDConfig
from mrkd_core.results import METRIC_COLUMNS, read_parquet_bytes
from mrkd_core.specs import Task, TaskOutcome
from mrkd_core.storage import ArtifactStore

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("worker.py")
CATEGORY = "obj_disc"
TINY = dict(backbone="resnet18", teacher_weights="none", image_size=32, batch_size=4, num_workers=0,
            progress=False, device="cpu", checkpoint_every=1)


def make_data(root: Path, seed: int = 7) -> Path:
    """One generated MVTec-layout category at 32 px: 4 train, 2 good + 2 defective test images; ``root``.

    Another ``seed`` gives other pictures under the same names (to replace training images with)."""
    from mrkd_core.data.synthetic import make_synthetic_mvtec

    make_synthetic_mvtec(root, categories=(CATEGORY,), n_train=4, n_test_good=2, n_test_defect=2, size=32, seed=seed)
    return root


def make_task(data_root: Path, epochs: int = 1, category: str = CATEGORY, **overrides) -> Task:
    cfg = MRKDConfig(epochs=epochs, **{**TINY, **overrides})
    return Task("folder", category, "mrkd", cfg, str(data_root), "reliability")


@dataclass
class Reference:
    store: ArtifactStore
    run_dir: str
    result: TaskOutcome


# --------------------------------------------------------------------------- comparisons
_HASHES: dict[tuple, str] = {}


def file_sha256(path: str | Path) -> str:
    """sha256 of a local file, memoised on (path, size, mtime, inode): an atomic rewrite changes
    the inode, any other write the mtime, so an unchanged key means unchanged bytes."""
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def snapshot(store: ArtifactStore, prefix: str = "") -> dict[str, str]:
    """sha256 of every object below ``prefix``: 'nothing stored was lost or changed' is equality."""
    if store.is_local:
        return {rel: file_sha256(store.uri(rel)) for rel in store.list(prefix, recursive=True)}
    return {rel: hashlib.sha256(store.read_bytes(rel)).hexdigest() for rel in store.list(prefix, recursive=True)}


def tree(folder: Path) -> dict[str, str]:
    """sha256 of every file below a local folder (hidden temp files included)."""
    return {str(p.relative_to(folder)): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def metrics_row(store: ArtifactStore, directory: str) -> dict:
    rows = read_parquet_bytes(store.read_bytes(f"{directory}/metrics.parquet")).to_pylist()
    assert len(rows) == 1
    return rows[0]


def assert_same_result(store: ArtifactStore, directory: str, ref: Reference) -> None:
    """Metrics, per-image scores, loss curve and weights equal the reference run's, exactly."""
    got, want = metrics_row(store, directory), metrics_row(ref.store, ref.run_dir)
    for m in METRIC_COLUMNS:
        a, b = got[m], want[m]
        assert (math.isnan(a) and math.isnan(b)) or a == b, (m, a, b)
    scores = read_parquet_bytes(store.read_bytes(f"{directory}/scores.parquet")).column("score").to_pylist()
    ref_scores = read_parquet_bytes(ref.store.read_bytes(f"{ref.run_dir}/scores.parquet")).column("score").to_pylist()
    assert scores == ref_scores
    losses = store.read_json(f"{directory}/train.json")["epoch_losses"]
    assert losses == ref.store.read_json(f"{ref.run_dir}/train.json")["epoch_losses"]
    a = _state_dict(store.read_bytes(f"{directory}/model.pt"))
    b = _state_dict(ref.store.read_bytes(f"{ref.run_dir}/model.pt"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "weights differ from the reference"


def _state_dict(data: bytes) -> dict:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)["state_dict"]


# --------------------------------------------------------------------------- subprocess workers
def worker_cmd(task: Task, store_root: str, run_id: str, out: Path, force: bool = False) -> list[str]:
    out.parent.mkdir(parents=True, exist_ok=True)
    task_file = out.with_suffix(".task.json")
    task_file.write_text(json.dumps(task.to_dict()))
    cmd = [sys.executable, str(WORKER), str(task_file), str(store_root), run_id, str(out),
           "--threads", str(torch.get_num_threads())]
    return cmd + (["--force"] if force else [])


def worker_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def start_worker(task: Task, store_root: str, run_id: str, out: Path, force: bool = False,
                 **env: str) -> subprocess.Popen:
    """``engine.train_evaluate`` in its own process (what a Ray worker runs); stderr goes to ``out.log``."""
    log = open(out.with_suffix(".log"), "wb")
    try:
        return subprocess.Popen(worker_cmd(task, store_root, run_id, out, force), cwd=ROOT, env=worker_env(**env),
                                stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()


def finish_worker(proc: subprocess.Popen, out: Path, timeout: float = 240) -> dict:
    try:
        proc.wait(timeout=timeout)
    finally:
        kill(proc)
    log = out.with_suffix(".log").read_text()
    assert proc.returncode == 0, f"worker failed ({proc.returncode}):\n{log[-4000:]}"
    return {**json.loads(out.read_text()), "log": log}


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL a worker we started, by its PID, and reap it."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


# A test that waits for something to happen bounds the wait only to fail instead of hanging:
# far above what the wait takes on a loaded machine, never a speed claim (times are bench/ figures).
HANG_GUARD_S = 120.0


def returns(call: Callable[[], object], guard_s: float = HANG_GUARD_S) -> object:
    """``call()``'s result or exception, in a thread; an AssertionError if it has not returned after ``guard_s``."""
    import threading

    out: list = []

    def run() -> None:
        try:
            out.append(("value", call()))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            out.append(("error", exc))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(guard_s)
    if not out:
        raise AssertionError(f"{call} did not return within {guard_s:.0f} s: it hangs")
    kind, value = out[0]
    if kind == "error":
        raise value
    return value


def wait_until(condition: Callable[[], bool], timeout: float, proc: subprocess.Popen | None = None,
               what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"worker exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


# --------------------------------------------------------------------------- S3 on loopback
class S3Server:
    """moto's S3 API on 127.0.0.1 that a test can take down and bring back on the same port."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._cls = ThreadedMotoServer
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        self.host, self.port = self.server.get_host_and_port()
        self.endpoint = f"http://{self.host}:{self.port}"
        self.up = True

    def stop(self) -> None:
        """Down for real: stop serving and close the listening socket (connections are refused)."""
        if self.up:
            self.server.stop()
            self.server._server.server_close()
            self.up = False

    def start(self) -> None:
        """Back on the same port; moto keeps its buckets in this process, so they survive."""
        if not self.up:
            self.server = self._cls(ip_address="127.0.0.1", port=self.port, verbose=False)
            self.server.start()
            self.up = True


@dataclass
class S3Env:
    server: S3Server
    bucket: str
    secret: str
    access_key: str

    def store(self, prefix: str) -> ArtifactStore:
        return ArtifactStore(f"s3://{self.bucket}/{prefix}")
