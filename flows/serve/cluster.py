"""Which Ray and which Serve the service runs on, and how it leaves them.

``mrkd serve`` attaches to ``RAY_ADDRESS``, else to the long-lived local head of
``python -m flows.ray_head start`` when one is running, else starts a Ray of its own on this
machine. A Ray on this machine is locked down like every local Ray of the project
(:mod:`flows.local_ray`: loopback only, the machine's token). Serve's HTTP proxy is
cluster-wide: one host and port per Ray; the service starts Serve with its ``--host`` and
``--port`` when Serve is not running yet, and refuses when it runs elsewhere. On the way out
it removes its application, stops Serve if it started it and Ray if it started it, so no
replica outlives it.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

from flows.local_ray import ensure_token, is_loopback_address, loopback_only, port_free
from mrkd_core.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RaySession:
    """The Ray the service runs on: its address (None: started here) and whether it is on this machine only."""

    address: str | None
    loopback: bool

    def describe(self) -> str:
        if self.address is None:
            return "a Ray of this process (127.0.0.1 only)"
        return f"the Ray at {self.address}" + (" (this machine)" if self.loopback else "")


def ray_address() -> str | None:
    """``RAY_ADDRESS``, else the local head's (``flows.ray_head``), else None (start one here)."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    from flows.ray_head import read_head

    head = read_head()
    return head.address if head is not None else None


@contextlib.contextmanager
def ray_session(num_cpus: int | None = None) -> Iterator[RaySession]:
    """Join or start Ray for the block; a Ray started here is shut down after it."""
    import ray

    address = ray_address()
    ensure_token()
    session = RaySession(address, address is None or is_loopback_address(address))
    # Replica logs (every request's access line) stay in Ray's log files, not on this terminal.
    init = {"log_to_driver": False}
    with loopback_only() if session.loopback else contextlib.nullcontext():
        if address is None:
            ray.init(address="local", include_dashboard=False, num_cpus=num_cpus or os.cpu_count() or 1, **init)
        else:
            ray.init(address=address, **init)
    try:
        yield session
    finally:
        if address is None:
            ray.shutdown()


def serve_http_config() -> tuple[str, int] | None:
    """(host, port) of the Serve already running on the connected Ray; None when none runs, or when
    this process is connected to no Ray (asking would join whatever Ray runs on this machine).

    Serve exposes this only on its client object (``ray.serve.context``), read here once.
    """
    import ray
    from ray.serve.context import _get_global_client

    if not ray.is_initialized():
        return None
    client = _get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return None
    config = client.http_config
    return str(config.host), int(config.port)


def start_serve(host: str, port: int, session: RaySession) -> bool:
    """Serve on ``host:port``; True when started here. A one-line error when it runs elsewhere or the port is taken."""
    from ray import serve

    running = serve_http_config()
    if running is not None:
        if running != (host, port):
            raise ConfigError(f"Serve already runs on {session.describe()} at {running[0]}:{running[1]}: pass "
                              f"--host {running[0]} --port {running[1]}, or stop it first")
        return False
    if session.address is None and not port_free(port, host):
        raise ConfigError(f"{host}:{port} is taken: choose another --port")
    serve.start(http_options={"host": host, "port": port})
    return True


def stop_serve(app_name: str, started: bool) -> None:
    """Remove the application (its replicas stop gracefully: the record is flushed), and Serve if started here."""
    from ray import serve

    try:
        serve.delete(app_name)
    finally:
        if started:
            serve.shutdown()


__all__ = ["RaySession", "ray_address", "ray_session", "serve_http_config", "start_serve", "stop_serve"]
