"""Ray on one machine, locked down: loopback only, token authentication, one token per machine.

Two kinds of local Ray use this module:

- the Ray a flow run starts for itself when no address is set (``flows.ray_runner``), and
- the long-lived local head (``python -m flows.ray_head start``) that flows and deployments
  attach to with ``RAY_ADDRESS=127.0.0.1:6379``, whose dashboard stays on 127.0.0.1:8265.

**Loopback.** Ray picks the node's address with ``node_ip_address_from_perspective`` (the
VM's own IP) unless its single-machine switch ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is set
(Ray's own default on macOS and Windows). With it, the node's address is 127.0.0.1 and
Ray 2.60 binds every server to loopback: GCS, raylet, object manager, worker and driver gRPC
servers, dashboard, dashboard agent, runtime-env agent and metrics exporters (checked with
``ss -ltnp``; ``tests/flows/test_security_listeners.py`` checks it on every run of the
suite). Without it the GCS, raylet and worker ports listen on all interfaces. The switch
is read by Ray when a node starts and when a driver resolves a loopback address, so it is
applied around exactly those moments (:func:`loopback_only`), never to a driver that
joins a multi-machine cluster, whose node address must stay routable.

**Token.** Every local head and client of a machine shares one token, so no local Ray ever
answers 401 to another local process of the same user: ``RAY_AUTH_TOKEN`` when set, else the
file ``RAY_AUTH_TOKEN_PATH``, else Ray's default ``~/.ray/auth_token``. :func:`ensure_token`
creates the file once, atomically and readable by its owner only (0600); two processes
racing to create it end up with the same token. ``RAY_AUTH_MODE=token`` is the default
(``flows/__init__.py``); Ray then refuses every gRPC and dashboard request that does not
carry the token.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import secrets
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
# Ray's single-machine switch (ray._private.ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR).
SINGLE_MACHINE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
DEFAULT_TOKEN_PATH = Path("~/.ray/auth_token")


def is_loopback_address(address: str | None) -> bool:
    """``127.0.0.1:6379``, ``localhost:6379``, ``[::1]:6379`` (not ``ray://``, ``auto`` or another host)."""
    if not address or "://" in address or address == "auto":
        return False
    return is_loopback_host(host_and_port(address)[0])


def host_and_port(address: str) -> tuple[str, int | None]:
    """``host:port`` → (host, port); an IPv6 host is bracketed (``[::1]:6379``) and comes back bare.

    A bare host (``localhost``, ``10.0.0.5``, ``::1``) has port None. A bare valid IPv6
    address is taken whole (``::1:6379`` is an address, as ``ipaddress`` reads it): write a
    port after an IPv6 host in brackets. The one reading of a Ray address's host for the
    loopback decision and the reachability probe.
    """
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        return host, int(port) if port.isdigit() else None
    try:
        ipaddress.ip_address(address)
        return address, None
    except ValueError:
        pass
    host, sep, port = address.rpartition(":")
    return (host, int(port)) if sep and port.isdigit() else (address, None)


def is_loopback_host(host: str) -> bool:
    """``127.0.0.1``, ``::1``, ``localhost``: an address only this machine reaches."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def port_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether ``host:port`` can be bound now (Ray refuses to start on a taken port, it does not pick another).

    A port whose last connections are only in TIME_WAIT (a head or a service stopped a moment
    ago) is free: Ray's servers and Serve's proxy (uvicorn) bind with ``SO_REUSEADDR``, and so
    does this check. ``host`` may be an IPv6 address.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def token_auth_enabled() -> bool:
    return os.environ.get(AUTH_MODE_ENV, "").lower() == "token"


def token_path() -> Path | None:
    """The token file every local Ray of this machine shares; None when ``RAY_AUTH_TOKEN`` holds it."""
    if os.environ.get(TOKEN_ENV):
        return None
    return Path(os.environ.get(TOKEN_PATH_ENV) or DEFAULT_TOKEN_PATH).expanduser()


def ensure_token() -> Path | None:
    """Create the shared token file if it is missing (0600, atomically); return its path.

    The first process to link its file into place wins; the others read the winner's
    token. Ray would otherwise create the file itself on the first local ``ray.init()``,
    non-atomically, which two parallel first runs could each overwrite.
    """
    if not token_auth_enabled():
        return None
    path = token_path()
    if path is None or path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".auth_token.", dir=path.parent)
    try:
        os.write(fd, secrets.token_hex(32).encode())
        os.close(fd)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
            log.info("created the Ray token of this machine: %s (0600)", path)
    finally:
        os.unlink(tmp)
    return path


def read_token() -> str | None:
    """The shared token (for HTTP clients of the dashboard: ``Authorization: Bearer <token>``)."""
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV].strip()
    path = token_path()
    return path.read_text().strip() if path is not None and path.exists() else None


def auth_headers() -> dict[str, str]:
    """Headers that let a client through the dashboard's token check (empty when auth is off)."""
    token = read_token() if token_auth_enabled() else None
    return {"Authorization": f"Bearer {token}"} if token else {}


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """Within this block, Ray nodes started or joined from this process live on 127.0.0.1.

    Sets Ray's single-machine switch in the environment (inherited by the GCS, raylet,
    agents and workers this process starts) and in this process's already imported Ray
    constants (read when the driver resolves its node address), and restores both after.
    """
    import ray._private.ray_constants as ray_constants

    saved_env, saved_const = os.environ.get(SINGLE_MACHINE_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[SINGLE_MACHINE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_const
        if saved_env is None:
            os.environ.pop(SINGLE_MACHINE_ENV, None)
        else:
            os.environ[SINGLE_MACHINE_ENV] = saved_env


def local_process_env() -> dict[str, str]:
    """What a process that starts a local Ray node needs in its environment (the head's CLI)."""
    env = {SINGLE_MACHINE_ENV: "0", AUTH_MODE_ENV: os.environ.get(AUTH_MODE_ENV, "token")}
    path = token_path()
    if path is not None and env[AUTH_MODE_ENV] == "token":
        env[TOKEN_PATH_ENV] = str(path)
    return env
