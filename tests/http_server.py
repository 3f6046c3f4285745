"""A local HTTP server on 127.0.0.1 standing in for a publisher (datasets, teacher weights): never the internet.

``serving()`` yields (state, base URL); tests put bytes into ``state.files`` by path and
read ``state.requests``. It answers Range requests (206/416), can cut a body short once
(``truncate_once``: the full Content-Length announced, half the body sent, connection
closed) or answer an HTTP error (``status``). ``refused_url()`` is a loopback URL where
nothing listens (connection refused).
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ServerState:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.truncate_once: set[str] = set()
        self.status: dict[str, int] = {}

    def paths_requested(self) -> list[str]:
        return [path for path, _ in self.requests]


class _Handler(BaseHTTPRequestHandler):
    """Serves ServerState.files with Range support; can cut a body short once or answer an error."""

    def do_GET(self) -> None:  # noqa: N802 - http.server API
        state: ServerState = self.server.state  # type: ignore[attr-defined]
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
        if self.path in state.truncate_once:
            state.truncate_once.discard(self.path)
            self.wfile.write(body[: len(body) // 2])  # then the connection closes: a short body
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def serving() -> Iterator[tuple[ServerState, str]]:
    """A server on 127.0.0.1 (free port) for the block: (state, ``http://127.0.0.1:PORT``); stopped after."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = ServerState()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield httpd.state, f"http://127.0.0.1:{httpd.server_address[1]}"
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
