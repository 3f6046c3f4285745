"""Servers for the flow tests, all on 127.0.0.1, started here and stopped by PID.

- ``prefect_api``: a real ``prefect server start`` (SQLite in a temp PREFECT_HOME), for the
  whole session. Every flow in these tests reports to it: without a server each Ray
  worker would start its own temporary one (~10 s each).
- ``moto_s3``: moto's threaded S3 server (the real S3 HTTP API) with a bucket.
- ``stop_process``: SIGTERM, wait, SIGINT, wait, SIGKILL; then whatever is left of the
  process group we created. A Prefect worker ignores its first SIGTERM.
- ``ray_head``: the long-lived local Ray head (``flows.ray_head``) on free loopback ports.

Ray runs with token authentication, as for users, with one token for the whole session
(``RAY_AUTH_TOKEN_PATH``, created here by the product's own ``ensure_token``): a
token per test run, so the suite neither reads nor writes the machine's ``~/.ray/auth_token``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Before anything imports Ray: this session's own token (the file is created on first use).
_TOKEN_DIR = tempfile.mkdtemp(prefix="mrkd-ray-token-")
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN_PATH"] = os.path.join(_TOKEN_DIR, "auth_token")
os.environ.pop("RAY_AUTH_TOKEN", None)

import flows  # noqa: E402,F401 - offline-safe Ray/Prefect defaults before anything imports them
from flows.local_ray import ensure_token  # noqa: E402
from tests.flows.servers import (  # noqa: E402
    BIN,
    SERVER_START_TIMEOUT,
    clean_env,
    free_port,
    stop_process,
    wait_http,
)


ensure_token()  # now, for the tests that start Ray directly (ray.cluster_utils.Cluster)


@pytest.fixture(scope="session", autouse=True)
def _session_ray_token() -> Iterator[str]:
    yield os.environ["RAY_AUTH_TOKEN_PATH"]
    shutil.rmtree(_TOKEN_DIR, ignore_errors=True)

@pytest.fixture(scope="session")
def prefect_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("prefect-home")


@pytest.fixture(scope="session")
def prefect_api(prefect_home) -> Iterator[str]:
    """A Prefect server on a free loopback port; the whole session (in-process and children) uses it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = clean_env(PREFECT_HOME=str(prefect_home), PREFECT_SERVER_UI_ENABLED="false",
                    PREFECT_SERVER_LOGGING_LEVEL="WARNING")
    log = open(prefect_home / "server.log", "wb")
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port),
                             "--no-ui", "--analytics-off"],
                            cwd=prefect_home, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"{url}/health", SERVER_START_TIMEOUT, proc)
        from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

        saved = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_HOME")}
        os.environ["PREFECT_API_URL"] = url  # for subprocesses and Ray workers
        os.environ["PREFECT_HOME"] = str(prefect_home)
        try:
            with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_HOME: str(prefect_home)}):
                yield url
                _drain_prefect_clients()
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    finally:
        stop_process(proc)
        log.close()


def _drain_prefect_clients() -> None:
    """Send queued logs and events while the server is still up.

    Otherwise they are sent at interpreter exit, to a server that is gone, and the
    retries hold the test process for about a minute ("Error logging to API").
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[str]:
    """moto's S3 server on a free loopback port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def local_store(tmp_path, monkeypatch) -> Path:
    """A fresh local store and data root for one test."""
    store = tmp_path / "store"
    monkeypatch.setenv("MRKD_STORE", str(store))
    monkeypatch.setenv("MRKD_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MRKD_NUM_GPUS", raising=False)
    return store


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory) -> Iterator:
    """``python -m flows.ray_head start`` on free loopback ports; stopped by its PID at the end."""
    from flows.ray_head import read_head, stop_head

    state = tmp_path_factory.mktemp("ray-head")
    ports = [str(free_port()) for _ in range(3)]
    proc = subprocess.run([str(BIN / "python"), "-m", "flows.ray_head", "start", "--port", ports[0],
                           "--dashboard-port", ports[1], "--client-port", ports[2], "--num-cpus", "2",
                           "--state-dir", str(state)],
                          env=clean_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    head = read_head(state)
    assert head is not None, proc.stdout
    try:
        yield head, state, proc.stdout
    finally:
        stop_head(state)
