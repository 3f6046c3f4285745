"""A long-lived local Ray head: one dashboard to watch across flow runs, on 127.0.0.1 only.

Without it every flow run starts a Ray of its own, whose dashboard exists only while the
run lasts. With it, flows and deployments attach to the head (``RAY_ADDRESS=127.0.0.1:6379``
in the environment of the CLI, the Prefect worker or ``serve``) and the dashboard on
http://127.0.0.1:8265 shows every run's trainings, past and present::

    python -m flows.ray_head start      # prints the RAY_ADDRESS to export; returns when the head is up
    python -m flows.ray_head status
    python -m flows.ray_head stop

The head is ``ray start --head --block`` in its own session, started with Ray's
single-machine switch and token authentication (see :mod:`flows.local_ray`), so every port
it opens is on 127.0.0.1 and every client must present the machine's token. Its PID, address
and log are kept in ``~/.cache/mrkd/ray-head/`` (``--state-dir``); ``stop`` ends that process
group only (never ``ray stop``, which would end every Ray of every user on the host).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from flows.local_ray import LOOPBACK, ensure_token, local_process_env, port_free, token_path
from mrkd_core.claims import _pid_alive as pid_alive  # the same liveness rule as a claim's owner

DEFAULT_PORT = 6379
DEFAULT_DASHBOARD_PORT = 8265
DEFAULT_CLIENT_PORT = 10001
DEFAULT_STATE_DIR = Path("~/.cache/mrkd/ray-head")
START_TIMEOUT_S = 120


@dataclass(frozen=True)
class HeadInfo:
    """What ``start`` records: enough to attach, watch and stop the head."""

    pid: int
    address: str
    dashboard_url: str
    client_address: str
    log: str
    started: float


def _state_file(state_dir: Path) -> Path:
    return state_dir.expanduser() / "head.json"


def read_head(state_dir: Path = DEFAULT_STATE_DIR) -> HeadInfo | None:
    """The running head recorded in ``state_dir``, or None (no record, or its process is gone)."""
    path = _state_file(state_dir)
    try:
        info = HeadInfo(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return info if pid_alive(info.pid) else None


def _healthy(dashboard_url: str) -> bool:
    try:  # a public path: answers without the token
        with urllib.request.urlopen(f"{dashboard_url}/api/gcs_healthz", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def start_head(port: int = DEFAULT_PORT, dashboard_port: int = DEFAULT_DASHBOARD_PORT,
               client_port: int = DEFAULT_CLIENT_PORT, num_cpus: int | None = None, num_gpus: int | None = None,
               state_dir: Path = DEFAULT_STATE_DIR, timeout: float = START_TIMEOUT_S) -> HeadInfo:
    """Start the head (or return the one already running from ``state_dir``)."""
    running = read_head(state_dir)
    if running is not None:
        return running
    for name, p in (("--port", port), ("--dashboard-port", dashboard_port), ("--client-port", client_port)):
        if not port_free(p):
            raise RuntimeError(f"127.0.0.1:{p} is taken (another Ray head or service?): choose another {name}")
    ensure_token()
    state = state_dir.expanduser()
    state.mkdir(parents=True, exist_ok=True)
    log_path = state / "head.log"
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block",
           "--node-ip-address", LOOPBACK, "--port", str(port), "--ray-client-server-port", str(client_port),
           "--dashboard-host", LOOPBACK, "--dashboard-port", str(dashboard_port),
           "--num-cpus", str(num_cpus or os.cpu_count() or 1)]
    if num_gpus is not None:
        cmd += ["--num-gpus", str(num_gpus)]
    env = {**os.environ, **local_process_env(), "RAY_USAGE_STATS_ENABLED": "0"}
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=state,
                                start_new_session=True)
    info = HeadInfo(pid=proc.pid, address=f"{LOOPBACK}:{port}", dashboard_url=f"http://{LOOPBACK}:{dashboard_port}",
                    client_address=f"ray://{LOOPBACK}:{client_port}", log=str(log_path), started=time.time())
    deadline = time.monotonic() + timeout
    while not _healthy(info.dashboard_url):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop_group(proc.pid)
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the Ray head did not come up (exit {proc.poll()}); {log_path}:\n{tail}")
        time.sleep(0.5)
    _state_file(state_dir).write_text(json.dumps(asdict(info), indent=2))
    return info


def _stop_group(pid: int, grace: float = 20.0) -> None:
    """SIGTERM to ``ray start --block`` (it stops the Ray processes it started), then the group."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # whatever of its session is left (start_new_session: pgid == pid)


def stop_head(state_dir: Path = DEFAULT_STATE_DIR) -> HeadInfo | None:
    """Stop the recorded head; returns what was stopped (None: nothing was running)."""
    info = read_head(state_dir)
    if info is not None:
        _stop_group(info.pid)
    _state_file(state_dir).unlink(missing_ok=True)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.ray_head", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("start", "status", "stop"))
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="GCS port (RAY_ADDRESS=127.0.0.1:PORT)")
    parser.add_argument("--dashboard-port", type=int, default=DEFAULT_DASHBOARD_PORT)
    parser.add_argument("--client-port", type=int, default=DEFAULT_CLIENT_PORT, help="Ray client (ray://) port")
    parser.add_argument("--num-cpus", type=int, help="default: every core of this machine")
    parser.add_argument("--num-gpus", type=int, help="default: the GPUs Ray finds")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, help="where PID, address and log are kept")
    args = parser.parse_args(argv)
    if args.command == "start":
        try:
            info = start_head(args.port, args.dashboard_port, args.client_port, args.num_cpus, args.num_gpus,
                              args.state_dir)
        except RuntimeError as exc:
            sys.stderr.write(f"ray_head: error: {exc}\n")
            return 1
        token = token_path()
        print(f"Ray head {info.address} (pid {info.pid}), log {info.log}")
        print(f"dashboard: {info.dashboard_url}  (sign in with the token in {token or '$RAY_AUTH_TOKEN'})")
        print(f"attach flows, workers and serve:  export RAY_ADDRESS={info.address}")
        return 0
    if args.command == "status":
        info = read_head(args.state_dir)
        if info is None:
            print("no Ray head running from", args.state_dir)
            return 1
        print(json.dumps({**asdict(info), "healthy": _healthy(info.dashboard_url)}, indent=2))
        return 0
    info = stop_head(args.state_dir)
    print(f"stopped the Ray head {info.address} (pid {info.pid})" if info else "no Ray head was running")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
