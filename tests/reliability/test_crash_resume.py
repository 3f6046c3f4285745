"""Crashes lose nothing: a training killed mid-epoch resumes; a corrupt checkpoint is skipped.

The unit of work is ``engine.train_evaluate`` (what a Prefect task on a Ray worker runs).
Its checkpoints live under ``checkpoints/<dataset>/<category>/<hash>/`` with a sha256
sidecar each; every random draw is a function of (seed, epoch, index), so a resumed run
is bit-for-bit the uninterrupted one on CPU — the tests compare metrics, per-image
scores, losses and weights with ``==``.
"""

from __future__ import annotations

import os
import shutil
import signal

import pytest

from mrkd_core.checkpoint import CheckpointMode, load_latest_checkpoint
from mrkd_core.engine import train_evaluate
from mrkd_core.layout import find_complete, run_dir
from mrkd_core.results import verify_manifest
from mrkd_core.storage import ArtifactStore
from tests.reliability.relkit import assert_same_result, finish_worker, kill, start_worker, wait_until


def test_killed_training_is_retried_resumes_from_its_checkpoint_and_equals_an_uninterrupted_run(
        task3, reference, tmp_path):
    store_root = tmp_path / "store"
    ckpt = store_root / "checkpoints" / task3.key
    first = start_worker(task3, str(store_root), "crash", tmp_path / "first.json")
    try:
        wait_until(lambda: (ckpt / "epoch-0001.pt.sha256.json").exists(), 180, first, "the first checkpoint")
        os.kill(first.pid, signal.SIGKILL)  # mid-epoch 2: no chance to clean up
        first.wait(timeout=30)
    finally:
        kill(first)
    assert first.returncode == -signal.SIGKILL
    store = ArtifactStore(store_root)
    d = run_dir(task3, "crash")
    assert not store.exists(f"{d}/manifest.json") and find_complete(store, task3) is None
    assert verify_manifest(store, d) != []  # an interrupted run is never taken for complete

    retry = finish_worker(start_worker(task3, str(store_root), "crash", tmp_path / "retry.json"),
                          tmp_path / "retry.json")
    assert retry["status"] == "trained" and retry["resumed_from_epoch"] >= 1
    assert store.read_json(f"{d}/train.json")["resumed_from_epoch"] == retry["resumed_from_epoch"]
    # the dead worker's claim on the key is recognised as abandoned at once (same host, PID gone)
    assert f"process {first.pid} is gone" in retry["log"]
    assert f"resuming {task3.category} from epoch" in retry["log"]
    assert verify_manifest(store, d) == [] and find_complete(store, task3) == d
    assert_same_result(store, d, reference)
    assert not store.exists(f"claims/{task3.key}.json")  # released after the run


def _copy_checkpoints(src: ArtifactStore, dest: ArtifactStore, key_dir: str, to: str) -> None:
    shutil.copytree(src.uri(key_dir), dest.uri(to), ignore=shutil.ignore_patterns("forced"))


@pytest.mark.parametrize("force", [False, True], ids=["retry", "forced-retry"])
def test_corrupt_newest_checkpoint_is_detected_and_training_falls_back_end_to_end(
        task3, reference, tmp_path, caplog, force):
    """A run that died after its last checkpoint, whose newest checkpoint got truncated.

    Without force the key's shared checkpoints are resumed; a forced run resumes only
    its own (``checkpoints/<key>/forced/<run_id>/``) — both paths check the sha256 sidecar.
    """
    key_dir = f"checkpoints/{task3.key}"
    ckpt_dir = f"{key_dir}/forced/rerun" if force else key_dir
    store = ArtifactStore(tmp_path / "store")
    _copy_checkpoints(reference.store, store, key_dir, ckpt_dir)
    assert sorted(p.rsplit("/", 1)[-1] for p in store.list(ckpt_dir)) == [
        "epoch-0002.pt", "epoch-0002.pt.sha256.json", "epoch-0003.pt", "epoch-0003.pt.sha256.json"]
    newest = f"{ckpt_dir}/epoch-0003.pt"
    data = store.read_bytes(newest)
    store.write_bytes(newest, data[: len(data) // 2])

    with caplog.at_level("INFO", logger="mrkd_core"):
        result = train_evaluate(task3, store, "rerun", CheckpointMode.FORCED_RUN if force else CheckpointMode.RESUME)
    assert "corrupt or truncated" in caplog.text and "epoch-0003.pt" in caplog.text
    assert f"resuming {task3.category} from epoch 2" in caplog.text
    assert result.status == "trained" and result.resumed_from_epoch == 2
    d = run_dir(task3, "rerun")
    assert verify_manifest(store, d) == []
    assert_same_result(store, d, reference)


def test_checkpoint_and_sidecar_from_different_writers_are_not_mixed(task3, reference, tmp_path, caplog):
    """Two writers of one key (which the claim prevents) could leave a checkpoint whose sidecar
    describes the other writer's bytes: the sha256 check refuses it and falls back."""
    key_dir = f"checkpoints/{task3.key}"
    store = ArtifactStore(tmp_path / "store")
    _copy_checkpoints(reference.store, store, key_dir, key_dir)
    # a complete, loadable checkpoint — but not the bytes its sidecar was written for
    store.write_bytes(f"{key_dir}/epoch-0003.pt", store.read_bytes(f"{key_dir}/epoch-0002.pt"))
    with caplog.at_level("WARNING"):
        state = load_latest_checkpoint(store.sub(key_dir), task3.config)
    assert state is not None and state["epoch"] == 2
    assert "epoch-0003.pt is corrupt or truncated" in caplog.text
