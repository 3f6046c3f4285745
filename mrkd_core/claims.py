"""One trainer per key at a time: a claim object with a heartbeat in the artifact store.

Two flows started at once on the same spec (a nightly run and an on-demand one, or a
flow retried while its first attempt's Ray tasks still run) would otherwise train the
same ``<dataset>/<category>/<config_hash>`` twice, into the same shared checkpoints,
and with the same run id into the same run directory. ``engine.train_evaluate`` holds a
``KeyClaim`` while it trains; a second caller waits for it, then finds the key complete
and skips it.

``claims/<dataset>/<category>/<config_hash>.json`` holds the owner (a random id), its
host, PID namespace and PID, the run id and a heartbeat counter the owner bumps every
``stale_s / 4`` seconds. A claim is abandoned, and taken over with a warning, when

* its process is gone: same host and PID namespace, PID not alive (a killed worker's
  retry takes over at once), or it was left by an earlier attempt in this very process;
* its heartbeat did not move for ``stale_s`` seconds of the waiter's own clock (an owner
  on another node that died; no clock comparison between hosts).

S3 has no portable create-if-absent, so taking a claim is write, wait ``SETTLE_S``, read
back: of two writers only the last one reads its own id. The owner re-reads the claim on
every heartbeat and before it writes results (``check``): an owner whose claim was taken
over (e.g. its heartbeats failed during a storage outage) raises instead of writing, so
two trainings of one key never mix their files.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import threading
import time
import uuid
from typing import Any

from mrkd_core.errors import StorageError
from mrkd_core.storage import ArtifactStore, env_seconds

log = logging.getLogger(__name__)

CLAIM_DIR = "claims"
ENV_STALE = "MRKD_CLAIM_STALE_S"
DEFAULT_STALE_S = 120.0
SETTLE_S = 0.5

_ACTIVE: set[str] = set()  # owner ids this process holds right now


def stale_seconds() -> float:
    """Seconds without a heartbeat after which a claim is abandoned (``MRKD_CLAIM_STALE_S``, default 120)."""
    return env_seconds(ENV_STALE, DEFAULT_STALE_S)


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child its parent has not reaped yet is a zombie: gone for our purpose
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class KeyClaim:
    """``with KeyClaim(store, key, run_id) as claim:`` waits for, then holds, the key's claim."""

    def __init__(self, store: ArtifactStore, key: str, run_id: str, stale_s: float | None = None,
                 poll_s: float | None = None):
        self.store = store
        self.key = key
        self.path = f"{CLAIM_DIR}/{key}.json"
        self.run_id = run_id
        self.stale_s = float(stale_s or stale_seconds())
        self.heartbeat_s = self.stale_s / 4
        self.poll_s = float(poll_s or min(5.0, self.heartbeat_s))
        self.owner = uuid.uuid4().hex
        self.beat = 0
        self.waited = False
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ store
    def _record(self) -> dict[str, Any]:
        return {"owner": self.owner, "host": platform.node(), "pid_ns": _pid_namespace(), "pid": os.getpid(),
                "run_id": self.run_id, "key": self.key, "beat": self.beat,
                "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}

    def _write(self) -> None:
        self.store.write_json(self.path, self._record())

    def _read(self) -> dict[str, Any] | None:
        if not self.store.exists(self.path):
            return None
        try:
            data = json.loads(self.store.read_bytes(self.path))
        except FileNotFoundError:
            return None
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    @staticmethod
    def describe(cur: dict[str, Any] | None) -> str:
        if not cur:
            return "nobody"
        return f"host {cur.get('host')} pid {cur.get('pid')} (run {cur.get('run_id')})"

    def _abandoned(self, cur: dict[str, Any]) -> str | None:
        """Why ``cur`` (another owner's claim) can be taken over at once, or None."""
        if "owner" not in cur:
            return "unreadable claim"
        pid = cur.get("pid")
        if cur.get("host") == platform.node() and cur.get("pid_ns") == _pid_namespace() and isinstance(pid, int):
            if pid == os.getpid():
                return None if cur["owner"] in _ACTIVE else "left by an earlier attempt in this process"
            if not _pid_alive(pid):
                return f"process {pid} is gone"
        return None

    # ------------------------------------------------------------------ lifecycle
    def acquire(self) -> "KeyClaim":
        seen: tuple | None = None
        seen_at = 0.0
        while True:
            cur = self._read()
            if cur is not None and cur.get("owner") != self.owner:
                why = self._abandoned(cur)
                if why is None:
                    ident = (cur.get("owner"), cur.get("beat"))
                    now = time.monotonic()
                    if ident != seen:
                        seen, seen_at = ident, now
                    elif now - seen_at > self.stale_s:
                        why = f"no heartbeat for {self.stale_s:.0f} s"
                if why is None:
                    if not self.waited:
                        log.info("%s is being trained by %s; waiting for it (claim %s)",
                                 self.key, self.describe(cur), self.store.uri(self.path))
                        self.waited = True
                    time.sleep(self.poll_s)
                    continue
                log.warning("%s: taking over the claim of %s: %s", self.key, self.describe(cur), why)
            self._write()
            time.sleep(SETTLE_S)
            if (self._read() or {}).get("owner") == self.owner:
                break
        _ACTIVE.add(self.owner)
        self._thread = threading.Thread(target=self._heartbeat, name=f"claim-{self.key}", daemon=True)
        self._thread.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                cur = self._read()
                if (cur or {}).get("owner") != self.owner:
                    self.lost = f"taken over by {self.describe(cur)}"
                    log.error("%s: claim %s", self.key, self.lost)
                    return
                self.beat += 1
                self._write()
            except Exception as exc:  # noqa: BLE001 - an outage: the next beat tries again
                log.warning("%s: claim heartbeat failed: %s", self.key, exc)

    def check(self) -> None:
        """Raise StorageError unless this process still holds the claim (call before writing results)."""
        if self.lost is None:
            cur = self._read()
            if (cur or {}).get("owner") != self.owner:
                self.lost = f"taken over by {self.describe(cur)}"
        if self.lost is not None:
            raise StorageError(f"claim {self.store.uri(self.path)} was {self.lost}; this task writes no results "
                               f"for {self.key} (the other owner's count)")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        _ACTIVE.discard(self.owner)
        try:
            if (self._read() or {}).get("owner") == self.owner:
                self.store.remove(self.path)
        except Exception as exc:  # noqa: BLE001 - never hide the task's own error; the claim goes stale
            log.warning("%s: could not release claim %s: %s", self.key, self.store.uri(self.path), exc)

    def __enter__(self) -> "KeyClaim":
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()
