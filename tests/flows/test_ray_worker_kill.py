"""Ray workers SIGKILLed mid-training inside the benchmark flow: what Ray does, and what Prefect shows.

``tests/reliability/test_crash_resume.py`` kills a plain process running
``engine.train_evaluate``. Here the same fault hits the real path: ``mrkd-benchmark`` on a
local Ray (127.0.0.1, the default runner), two trainings as Ray tasks, in one flow run
(one Ray start for both cases). The worker's PID is the one its key claim records
(``claims/<key>.json``: host, PID namespace, PID), so the test needs no hook in the
product. It SIGKILLs:

- ``obj_disc``'s worker once, once the first epoch's checkpoint is stored. Ray re-runs the
  task in a new worker (``flows.ray_runner.RAY_MAX_RETRIES``), which takes over the dead
  worker's claim, resumes from the newest stored checkpoint and must end with the metrics,
  per-image scores, loss curve and weights of an uninterrupted run with the same seed.
- ``tex_stripes``'s worker at every attempt, each once it stored one more epoch: every
  attempt dies, and the flow ends Failed naming it, the report of the other written.

Both must be visible in the training's own task run (issue 25, item 6): each attempt (a
line naming it, its worker PID), the death of each (state *Crashed* with Ray's cause, a
warning), the claim takeover with its reason, where it resumed; ``run_count`` counts the
attempts; one progress artifact per training, ending at 100 % or at "failed at N %"; and a
training whose every attempt died has a task run in state *Failed* naming the deaths.

The Ray workers train with one intra-op thread (Ray sets ``OMP_NUM_THREADS`` to the task's
CPU count, 1): the reference runs in this process with one thread too, since CPU results
are bit-equal only at equal thread counts.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from mrkd_core.engine import train_evaluate
from mrkd_core.layout import find_complete, run_dir
from mrkd_core.results import verify_manifest
from mrkd_core.specs import load_spec
from mrkd_core.storage import ArtifactStore
from tests.flows.prefect_client import api, runs_of
from tests.reliability.relkit import HANG_GUARD_S, Reference, assert_same_result

pytestmark = pytest.mark.slow

RECOVERS = "obj_disc"  # killed once: Ray's next attempt finishes it
DIES = "tex_stripes"  # killed at every attempt
EPOCHS = 6  # ~0.2 s each here: each kill lands well before the last epoch
RUN_ID = "worker-kill"


def _spec(tmp_path: Path) -> str:
    spec = {
        "name": "worker-kill",
        "datasets": [{"name": "folder", "root": "generated-kill", "categories": [RECOVERS, DIES],
                      "generate": {"kind": "synthetic_mvtec", "categories": [RECOVERS, DIES], "n_train": 8,
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


def stored_epochs(ckpt: Path) -> list[int]:
    """Epochs whose checkpoint and sha256 sidecar are both in the store (what a resume can use)."""
    return sorted(int(p.name[6:10]) for p in ckpt.glob("epoch-*.pt") if Path(f"{p}.sha256.json").exists())


class WorkerKiller(threading.Thread):
    """SIGKILLs the claimant of each watched key when ``due(kills so far, stored epochs)`` says so.

    A claimant is the PID the key's claim records; each one is killed at most once (a new
    attempt writes its own PID into the claim when it takes the dead one's over).
    """

    def __init__(self, store: Path, rules: dict[str, tuple[int, Callable[[int, list[int]], bool]]]):
        super().__init__(name="worker-killer", daemon=True)
        self.store = store
        self.rules = rules  # key → (most kills, due)
        self.stop = threading.Event()
        self.killed: dict[str, list[dict]] = {key: [] for key in rules}
        self.claimants: dict[str, list[int]] = {key: [] for key in rules}  # every PID that held the claim
        self.error: str | None = None

    def _claimant(self, key: str) -> int | None:
        try:
            record = json.loads((self.store / "claims" / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None
        pid = record.get("pid")
        return pid if record.get("host") == platform.node() and isinstance(pid, int) else None

    def run(self) -> None:
        deadline = time.monotonic() + 3 * HANG_GUARD_S  # a guard: the flow ends long before
        while not self.stop.is_set() and time.monotonic() < deadline:
            for key, (most, due) in self.rules.items():
                done = self.killed[key]
                pid = self._claimant(key)
                if pid is not None and pid not in self.claimants[key]:
                    self.claimants[key].append(pid)
                if len(done) >= most or pid is None or pid in {k["pid"] for k in done}:
                    continue
                ckpt = self.store / "checkpoints" / key
                if not due(len(done), stored_epochs(ckpt)):
                    continue
                if not _is_ray_worker(pid):
                    self.error = f"claimant {pid} of {key} is not a Ray worker"
                    return
                os.kill(pid, signal.SIGKILL)  # mid-epoch: no chance to clean up
                done.append({"pid": pid, "at": time.time(), "stored": stored_epochs(ckpt)})
            time.sleep(0.01)


@pytest.fixture(scope="module")
def killed_run(prefect_api, tmp_path_factory):
    """One ``mrkd-benchmark`` run on the default runner with both kills; the store, tasks, killer and outcome."""
    from flows.benchmark import benchmark
    from flows.ray_runner import RAY_MAX_RETRIES
    from flows.settings import data_root, spec_path

    assert RAY_MAX_RETRIES >= 1
    tmp = tmp_path_factory.mktemp("worker-kill")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MRKD_STORE", str(tmp / "store"))
        mp.setenv("MRKD_DATA_ROOT", str(tmp / "data"))
        mp.delenv("RAY_ADDRESS", raising=False)
        mp.delenv("MRKD_NUM_GPUS", raising=False)
        spec = _spec(tmp)
        store = ArtifactStore(tmp / "store")
        tasks = {t.category: t for t in load_spec(spec, spec_path()).tasks(data_root(store))}
        attempts = RAY_MAX_RETRIES + 1
        killer = WorkerKiller(tmp / "store", {
            tasks[RECOVERS].key: (1, lambda n, stored: 1 in stored),
            # attempt n (n kills so far) dies once it stored epoch n + 1
            tasks[DIES].key: (attempts, lambda n, stored: bool(stored) and stored[-1] >= n + 1),
        })
        killer.start()
        started = time.perf_counter()
        try:
            state = benchmark(spec=spec, run_id=RUN_ID, runner="ray", return_state=True)
        finally:
            killer.stop.set()
            killer.join(timeout=10)
        seconds = time.perf_counter() - started
        yield {"store": store, "root": tmp / "store", "tasks": tasks, "killer": killer, "state": state,
               "seconds": seconds, "attempts": attempts, "tmp": tmp}


def _training(killed_run, category: str):
    """The training's task run as the Prefect API has it: (task run, its states, its log lines, its artifacts)."""
    state = killed_run["state"]
    runs, subflows, _ = asyncio.run(api(lambda c: runs_of(c, state.state_details.flow_run_id)))
    assert subflows == []  # the trainings are task runs of the flow run itself (item 7)
    run, logs, artifacts = runs[f"train-folder-{category}-mrkd"]
    states = asyncio.run(api(lambda c: c.read_task_run_states(run.id)))
    return run, states, logs, artifacts


def test_ray_worker_killed_mid_epoch_is_retried_resumes_and_equals_an_uninterrupted_run(
        killed_run, single_torch_thread):
    import ray

    killer, store, task = killed_run["killer"], killed_run["store"], killed_run["tasks"][RECOVERS]
    assert not ray.is_initialized(), "the flow must shut down the local Ray it started"
    assert killer.error is None, killer.error
    (kill,) = killer.killed[task.key]
    # Killed mid-training: the first epoch's checkpoint was stored, the last epoch's was not.
    assert 1 in kill["stored"] and EPOCHS not in kill["stored"], kill

    # Ray re-ran the task in another worker (Prefect retries an exception inside the same, here
    # dead, process), which resumed from the newest checkpoint stored when the first one died.
    first, rerun = killer.claimants[task.key]
    assert first == kill["pid"] and rerun != first
    d = run_dir(task, RUN_ID)
    resumed = store.read_json(f"{d}/train.json")["resumed_from_epoch"]
    assert resumed == kill["stored"][-1], (resumed, kill)
    assert verify_manifest(store, d) == [] and find_complete(store, task) == d
    assert not store.exists(f"claims/{task.key}.json")  # released when done
    assert (killed_run["root"] / "reports" / RUN_ID / "report.html").is_file()

    # The training's own task run shows both attempts, the death and where it resumed.
    run, states, logs, artifacts = _training(killed_run, RECOVERS)
    assert run.state.is_completed() and run.run_count == 2, (run.state, run.run_count)
    crashed = [s for s in states if s.is_crashed()]
    assert len(crashed) == 1, [(s.name, s.message) for s in states]
    assert f"attempt 1 (Ray worker pid {kill['pid']}" in crashed[0].message
    assert "died without returning" in crashed[0].message and "attempt 2" in crashed[0].message
    assert any(m.startswith(f"attempt 1: Ray worker pid {kill['pid']} on node ") for m in logs), logs
    assert any(m.startswith(f"attempt 2: Ray worker pid {rerun} on node ") for m in logs), logs
    assert any(m.startswith(f"attempt 1 (Ray worker pid {kill['pid']}") for m in logs), logs
    # The re-run took the dead worker's claim over at once, saying why (same host, PID gone),
    # not after MRKD_CLAIM_STALE_S without a heartbeat.
    assert any(f"taking over the claim of host {platform.node()} pid {kill['pid']}" in m
               and m.endswith(f"process {kill['pid']} is gone") for m in logs), logs
    assert any(m.startswith(f"resumed from epoch {resumed}/{EPOCHS}: the newest checkpoint stored") for m in logs)
    assert any(m.startswith(f"epoch {EPOCHS}/{EPOCHS} ") for m in logs), logs
    # One progress artifact for the training, at its final state.
    (progress,) = [a for a in artifacts if a.type == "progress"]
    assert float(progress.data) == 100.0 and "done in" in progress.description, progress

    # Equal to an uninterrupted run of the same task and seed (fresh store, one thread).
    ref_store = ArtifactStore(killed_run["tmp"] / "reference-store")
    ref = train_evaluate(task, ref_store, "reference")
    assert ref.status == "trained" and ref.resumed_from_epoch == 0
    assert_same_result(store, d, Reference(ref_store, run_dir(task, "reference"), ref))
    print(f"flow with Ray workers killed (4 kills, 2 trainings): {killed_run['seconds']:.1f} s; pid {kill['pid']} "
          f"killed, its re-run (pid {rerun}) resumed from epoch {resumed}")


def test_a_training_whose_every_attempt_died_has_a_failed_task_run_naming_the_deaths(killed_run):
    killer, task = killed_run["killer"], killed_run["tasks"][DIES]
    assert killer.error is None, killer.error
    kills = killer.killed[task.key]
    assert len(kills) == killed_run["attempts"], kills
    pids = [k["pid"] for k in kills]

    # The flow run ends Failed naming it; the other training's report is written.
    state = killed_run["state"]
    assert state.is_failed() and "1 of 2 trainings failed" in state.message, state.message
    assert task.key in state.message and f"every attempt died ({len(pids)})" in state.message, state.message
    assert killer.claimants[task.key] == pids  # each attempt's worker was killed

    run, states, logs, artifacts = _training(killed_run, DIES)
    assert run.state.is_failed(), (run.state.name, run.state.message)
    message = run.state.message
    assert message.startswith(f"every attempt died ({len(pids)}): attempt 1 (Ray worker pid {pids[0]} on node "), message
    for n, pid in enumerate(pids, start=1):
        assert f"attempt {n} (Ray worker pid {pid} on node " in message, message
    assert "died: its worker process died without returning (killed by a signal such as SIGKILL" in message
    assert "last error: WorkerCrashedError: " in message, message
    # Each re-run recorded the death of the attempt before it: Crashed states.
    crashed = [s.message for s in states if s.is_crashed()]
    assert len(crashed) == len(pids) - 1, [(s.name, s.message) for s in states]
    for n, m in enumerate(crashed, start=1):
        assert m.startswith(f"attempt {n} (Ray worker pid {pids[n - 1]} on node ") and \
            m.endswith(f"Ray runs the training again (attempt {n + 1})"), m
    assert any(m.startswith(f"attempt 1: Ray worker pid {pids[0]} on node ") for m in logs), logs
    # One progress artifact, ending where the last attempt got to, failed.
    (progress,) = [a for a in artifacts if a.type == "progress"]
    percent, last = float(progress.data), kills[-1]["stored"][-1]
    assert 100.0 * last / EPOCHS - 0.01 <= percent < 100.0, (progress.data, kills)
    epoch = round(percent * EPOCHS / 100)
    assert f"failed at {percent:.1f} % (epoch {epoch}/{EPOCHS}): every attempt died ({len(pids)})" in progress.description, \
        progress.description


@pytest.fixture
def single_torch_thread():
    """The reference trains here with the Ray worker's one thread (reset afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
