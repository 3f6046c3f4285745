"""Who listens where: the TCP listeners of a process tree, checked against docs/reliability.md.

Used by the tests that start runs and heads (``test_security_listeners.py``, the deployment
run of ``test_deployments.py``): each listener must be on a loopback address or be named in
docs/reliability.md's "Ports Ray cannot bind to loopback"; Ray's GCS must refuse a gRPC
client without the token.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import threading

import psutil

from tests.flows.servers import ROOT

DOC = ROOT / "docs" / "reliability.md"


def documented_exceptions() -> set[str]:
    """Process names (shell patterns: ``ray::ServeReplica:mrkd:*``) of docs/reliability.md's
    "Ports Ray cannot bind to loopback" table."""
    text = DOC.read_text()
    section = text.split("### Ports Ray cannot bind to loopback", 1)
    assert len(section) == 2, "docs/reliability.md lacks the section 'Ports Ray cannot bind to loopback'"
    body = section[1].split("\n#", 1)[0]
    return {m.group(1) for m in re.finditer(r"^\|\s*`([^`]+)`\s*\|", body, flags=re.M)}


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def listeners(pid: int) -> set[tuple[str, str, int]]:
    """(process name, address, port) of every TCP listener in the process tree of ``pid``."""
    return {(name, ip, port) for _, name, _, ip, port in owned_listeners(pid)}


def owned_listeners(pid: int) -> set[tuple[int, str, str, str, int]]:
    """(PID, process name, command line, address, port) of every TCP listener in the process tree of ``pid``."""
    procs = {}
    for p in _tree(pid):
        try:
            procs[p.pid] = (p.name(), " ".join(p.cmdline()[:4]))
        except psutil.Error:
            continue
    found = set()
    for c in psutil.net_connections(kind="tcp"):
        if c.status == psutil.CONN_LISTEN and c.pid in procs:
            found.add((c.pid, *procs[c.pid], c.laddr.ip, c.laddr.port))
    return found


def is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    return addr.is_loopback or bool(mapped and mapped.is_loopback)


def wide_listeners(found: set[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    allowed = documented_exceptions()
    return sorted(f for f in found if not is_loopback(f[1]) and not any(fnmatch.fnmatchcase(f[0], a) for a in allowed))


def gcs_answers(address: str, token: str | None) -> tuple[bool, str]:
    """Ask the GCS for its nodes, with or without ``authorization: Bearer <token>``."""
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        metadata = [("authorization", f"Bearer {token}")] if token else None
        try:
            stub.GetAllNodeInfo(gcs_service_pb2.GetAllNodeInfoRequest(), timeout=10, metadata=metadata)
        except grpc.RpcError as exc:
            return False, f"{exc.code().name}: {exc.details()}"
    return True, "answered"


class ListenerWatch(threading.Thread):
    """Polls the listeners of ``pid``'s process tree until stopped; checks the GCS's token rule
    once a training runs (a ``ray::train...`` process exists in the tree)."""

    def __init__(self, pid_of, interval: float = 0.5):
        super().__init__(name="listener-watch", daemon=True)
        self.pid_of = pid_of  # callable: the root PID to watch (None: nothing yet)
        self.interval = interval
        self.stop = threading.Event()
        self.seen: set[tuple[str, str, int]] = set()
        self.owned: set[tuple[int, str, str, str, int]] = set()  # (pid, name, command line, address, port)
        self.refused: tuple[bool, str] | None = None
        self.accepted: tuple[bool, str] | None = None
        self.error: str | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                pid = self.pid_of()
                if pid is not None:
                    owned = owned_listeners(pid)
                    self.owned |= owned
                    now = {(name, ip, port) for _, name, _, ip, port in owned}
                    self.seen |= now
                    gcs = [f for f in now if f[0] == "gcs_server"]
                    training = any(_name(p).startswith("ray::train") for p in _tree(pid))
                    if self.refused is None and gcs and training:
                        address = f"127.0.0.1:{gcs[0][2]}"
                        self.refused = gcs_answers(address, None)
                        self.accepted = gcs_answers(address, read_session_token())
                self.stop.wait(self.interval)
        except Exception as exc:  # noqa: BLE001 - reported by check()
            self.error = f"{type(exc).__name__}: {exc}"

    def of(self, pid: int) -> set[tuple[str, int]]:
        """(address, port) of the listeners the process ``pid`` itself opened while watched."""
        return {(ip, port) for p, _, _, ip, port in self.owned if p == pid}

    def table(self) -> str:
        """Every listener seen, one line each (for the test's output): pid, address:port, command line."""
        return "\n".join(f"{pid:>7} {ip}:{port:<6} {cmd}" for pid, _, cmd, ip, port in
                         sorted(self.owned, key=lambda o: (o[2], o[4])))

    def check(self) -> None:
        """The run's listeners were loopback (or documented) and its GCS asked for the token."""
        assert self.error is None, self.error
        names = {n for n, _, _ in self.seen}
        assert {"gcs_server", "raylet"} <= names, f"the run's Ray was not seen: {sorted(self.seen)}"
        assert wide_listeners(self.seen) == [], f"listening beyond loopback: {wide_listeners(self.seen)}"
        assert self.refused is not None, "no training ran while the watch was on"
        assert self.refused[0] is False and "UNAUTHENTICATED" in self.refused[1], self.refused
        assert self.accepted == (True, "answered"), self.accepted


def _name(p: psutil.Process) -> str:
    try:
        return p.name()
    except psutil.Error:
        return ""


def read_session_token() -> str:
    from flows.local_ray import read_token

    token = read_token()
    assert token, "the run should have created the session's Ray token"
    return token
