"""Two flows on the same spec at once: one key is trained once, and nothing clobbers anything.

``engine.train_evaluate`` holds a claim per key (``mrkd_core.claims``) while it trains: a
concurrent call for the same key — from another run or from the same run id — waits,
then finds the key complete and skips it (copying the rows into its own run's tables).
"""

from __future__ import annotations

import json
import logging
import platform
import threading
import time

import pytest

from mrkd_core.claims import KeyClaim
from mrkd_core.errors import StorageError
from mrkd_core.layout import find_complete
from mrkd_core.partitioned import read_metrics, read_scores
from mrkd_core.results import verify_manifest
from mrkd_core.storage import ArtifactStore
from tests.reliability.relkit import HANG_GUARD_S, finish_worker, make_task, start_worker


def test_concurrent_calls_on_one_key_train_it_once_and_keep_every_run_intact(data_root, tmp_path):
    """Three processes at once: runs 'a' and 'b' of the same spec, and run 'a' a second time."""
    task = make_task(data_root, epochs=1, seed=5)
    store_root = tmp_path / "store"
    jobs = [("a", tmp_path / "a1.json"), ("b", tmp_path / "b.json"), ("a", tmp_path / "a2.json")]
    # a 4 s stale time makes the waiters poll every second instead of every 5 s
    procs = [start_worker(task, str(store_root), rid, out, MRKD_CLAIM_STALE_S="4") for rid, out in jobs]
    results = [finish_worker(p, out, timeout=300) for p, (_, out) in zip(procs, jobs)]

    statuses = sorted(r["status"] for r in results)
    assert statuses == ["skipped", "skipped", "trained"], statuses
    trained = next(r for r in results if r["status"] == "trained")
    assert sum("epoch 1/1" in r["log"] for r in results) == 1  # one training in all
    waited = [r for r in results if r["status"] == "skipped"]
    assert all(r["run_dir"] == trained["run_dir"] for r in waited)
    assert any("is being trained by" in r["log"] for r in waited)

    store = ArtifactStore(store_root)
    assert verify_manifest(store, trained["run_dir"]) == []
    assert find_complete(store, task) == trained["run_dir"]
    assert [p.rsplit("/", 1)[-1] for p in store.list("runs")] == [trained["run_dir"].split("/")[1]]
    for rid in ("a", "b"):  # each run's table partition holds the key once, with the trained metrics
        m = read_metrics(store, rid)
        assert len(m) == 1 and m.iloc[0]["image_auroc"] == trained["rows"][0]["image_auroc"]
        assert len(read_scores(store, rid)) == 4
    assert not store.exists(f"claims/{task.key}.json")


# --------------------------------------------------------------------------- the claim itself
@pytest.fixture
def fast_claims(monkeypatch):
    monkeypatch.setattr("mrkd_core.claims.SETTLE_S", 0.05)


def test_a_live_holder_makes_others_wait_until_it_releases(tmp_path, fast_claims):
    store = ArtifactStore(tmp_path)
    holder = KeyClaim(store, "folder/cat/h", "r1", stale_s=1.0, poll_s=0.05).acquire()
    got: list[float] = []
    waiter = KeyClaim(store, "folder/cat/h", "r2", stale_s=1.0, poll_s=0.05)
    t = threading.Thread(target=lambda: (waiter.acquire(), got.append(time.monotonic())))
    t.start()
    time.sleep(2.0)  # two stale periods: the heartbeat keeps the holder's claim alive
    assert not got and waiter.waited
    released = time.monotonic()
    holder.release()
    t.join(timeout=HANG_GUARD_S)  # fails instead of hanging; how soon it acquires is not a test's business
    assert got and got[0] >= released  # it waited for the release
    assert json.loads(store.read_bytes("claims/folder/cat/h.json"))["run_id"] == "r2"
    waiter.release()
    assert not store.exists("claims/folder/cat/h.json")


def test_a_claim_whose_heartbeat_stopped_is_taken_over_after_the_stale_time(tmp_path, fast_claims, caplog):
    store = ArtifactStore(tmp_path)
    store.write_json("claims/folder/cat/h.json", {"owner": "dead", "host": platform.node() + "-elsewhere",
                                                  "pid": 1, "run_id": "r0", "beat": 7})
    claim = KeyClaim(store, "folder/cat/h", "r1", stale_s=0.5, poll_s=0.05)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="mrkd_core.claims"), claim:
        assert time.monotonic() - t0 >= 0.5  # never before the stale time (a lower bound: load cannot break it)
        claim.check()
    assert "taking over the claim of host" in caplog.text and "no heartbeat for" in caplog.text


def test_a_holder_whose_claim_was_taken_over_refuses_to_write_results(tmp_path, fast_claims):
    store = ArtifactStore(tmp_path)
    with KeyClaim(store, "folder/cat/h", "r1", stale_s=60) as claim:
        claim.check()
        store.write_json("claims/folder/cat/h.json", {"owner": "other", "host": "node-2", "pid": 9, "run_id": "r9"})
        with pytest.raises(StorageError) as err:
            claim.check()
    msg = str(err.value)
    assert "\n" not in msg and "claims/folder/cat/h.json" in msg and "node-2" in msg and "writes no results" in msg
    # release leaves the new owner's claim alone
    assert json.loads(store.read_bytes("claims/folder/cat/h.json"))["owner"] == "other"
