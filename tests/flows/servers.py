"""Helpers for the flow tests' servers: loopback ports, health polling, stopping by PID, background jobs."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
BIN = Path(PYTHON).parent
SERVER_START_TIMEOUT = 90
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Poll ``url`` until it answers 200; fail early if ``proc`` died."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:3]} exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError as exc:
            last = exc
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer within {timeout} s ({last})")


def stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a process we started (its own session): SIGTERM → SIGINT → SIGKILL, then its group."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    # Children (uvicorn under `prefect server start`, flow-run processes under a worker)
    # share the session we created with start_new_session=True: its id is our PID.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)


class BackgroundJob:
    """``command &`` in a non-interactive shell, as the READMEs start long-running processes (a worker, serve).

    The job inherits what such a shell gives it, SIGINT ignored included (no job control),
    which is what made a Prefect worker ignore its SIGTERM. ``pid`` is the job's own PID
    (``$!``). The shell runs in a session of its own (its PID), for :meth:`stop` to end
    whatever is left.
    """

    def __init__(self, command: str, env: dict[str, str], cwd: Path | str):
        self.shell = subprocess.Popen(["bash", "-c", f"{command} &\necho $!\nwait"], env=env, cwd=cwd,
                                      stdout=subprocess.PIPE, text=True, start_new_session=True)
        self.pid = int(self.shell.stdout.readline())

    def alive(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/stat") as fh:
                return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
        except (OSError, IndexError):
            return False

    def terminate_once(self, guard_s: float) -> float | None:
        """One SIGTERM, as ``kill %N`` sends; seconds until the job was gone, None if still there after ``guard_s``."""
        started = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        while time.monotonic() - started < guard_s:
            if not self.alive():
                return time.monotonic() - started
            time.sleep(0.1)
        return None

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM → SIGINT → SIGKILL to the job, then the shell's whole session."""
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL):
            if not self.alive():
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            deadline = time.monotonic() + grace
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.shell.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.shell.wait(timeout=grace)
        self.shell.stdout.close()


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without any store/cluster settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MRKD_", "AWS_", "RAY_ADDRESS", "PREFECT_API"))}
    # Ray's token settings (RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH) come from the test process.
    env.update({"RAY_USAGE_STATS_ENABLED": "0", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PYTHONPATH": str(ROOT),
                # How often serve and a worker ask the server for scheduled runs (10 s by default):
                # an operator's setting, not the product's; 2 s spares the suite the idle wait of
                # each of its ~15 deployment runs.
                "PREFECT_RUNNER_POLL_FREQUENCY": "2", "PREFECT_WORKER_QUERY_SECONDS": "2"})
    env.update(extra)
    return env


def make_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"], region_name=S3_KEYS["AWS_REGION"])
    s3.create_bucket(Bucket=bucket)
