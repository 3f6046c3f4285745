"""A Range-capable HTTP file server on 127.0.0.1 for download tests, with the faults of real hosts.

``serve_files()`` yields ``(state, base_url)``; put bytes in ``state.files[path]``. Faults,
per path:

    state.status[path] = 404          answer that HTTP status instead of the file
    state.truncate_once.add(path)     announce the whole length, send half, close cleanly (a short body)
    state.truncate_always.add(path)   the same on every request (retries run out)
    state.drop_after[path] = n        send n bytes of the body, then reset the connection (RST) mid-file

``state.requests`` records ``(path, Range header or None)`` of every request, in order
(``state.paths_requested()``: the paths). ``refused_url()`` is a loopback URL where nothing
listens (connection refused).
Nothing leaves the machine: the server binds 127.0.0.1 on a free port and stops on exit.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class FilesState:
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    status: dict[str, int] = field(default_factory=dict)
    truncate_once: set[str] = field(default_factory=set)
    truncate_always: set[str] = field(default_factory=set)
    drop_after: dict[str, int] = field(default_factory=dict)

    def paths_requested(self) -> list[str]:
        return [path for path, _ in self.requests]


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        state: FilesState = self.server.state  # type: ignore[attr-defined]
        state.requests.append((self.path, self.headers.get("Range")))
        if self.path in state.status:
            self.send_error(state.status[self.path])
            return
        data = state.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m:
            start = int(m.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.path in state.drop_after:
            self.wfile.write(body[: state.drop_after[self.path]])
            self.wfile.flush()
            # SO_LINGER 0: close() resets the connection, as a dying host or proxy does.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        if self.path in state.truncate_once or self.path in state.truncate_always:
            state.truncate_once.discard(self.path)
            self.wfile.write(body[: len(body) // 2])  # then the connection closes: a short body
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def serve_files() -> Iterator[tuple[FilesState, str]]:
    """``(state, "http://127.0.0.1:<port>")`` while the server runs; stopped and closed on exit."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = FilesState()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield httpd.state, f"http://127.0.0.1:{httpd.server_address[1]}"  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def refused_url(path: str = "/") -> str:
    """A URL on 127.0.0.1 where nothing listens (the port was free a moment ago): connection refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}{path}"
