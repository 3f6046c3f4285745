"""The artifact store: one small API over fsspec for every read and write of the project.

A store has a root, always passed explicitly: a local folder or ``s3://bucket/prefix``.
The library never reads ``MRKD_STORE``: the edges do, once (the ``mrkd`` CLI for its
``--output``/``--models`` defaults, ``flows.settings.open_store`` with the default
``./artifacts``), and pass the root down. S3 settings come from the standard AWS
variables plus ``MRKD_S3_ENDPOINT_URL`` (so MinIO, Ceph and AWS all work); they are
never logged or put into error messages.

Paths given to the store are relative to its root and use ``/``. Writes of whole
objects are atomic: on a local folder via write-to-temp-then-rename, on S3 because a
PUT is. See docs/storage.md for the layout.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import posixpath
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

import fsspec
from fsspec.exceptions import FSTimeoutError

from mrkd_core.errors import StorageError

log = logging.getLogger(__name__)

DEFAULT_ROOT = "./artifacts"  # the flows' default root (flows.settings.open_store)
ENV_ROOT = "MRKD_STORE"  # read by the edges (CLI, flows.settings), never by the library
ENV_ENDPOINT = "MRKD_S3_ENDPOINT_URL"
ENV_S3_TIMEOUT = "MRKD_S3_TIMEOUT"

# How long an S3 server may stay silent before a request counts as failed. Every call is
# bounded: botocore makes S3_ATTEMPTS attempts, s3fs repeats a timed-out call S3_RETRIES
# times, so a hung server fails a read after about S3_RETRIES × S3_ATTEMPTS × timeout
# (2 min by default) and a down one (connection refused) within seconds. Whole-object
# writes get a deadline that grows with their size (S3_MIN_THROUGHPUT), because aiohttp
# waits for "100 Continue" without any timeout: without it a PUT to a hung server never
# returns.
DEFAULT_S3_TIMEOUT = 20.0
S3_ATTEMPTS = 3
S3_RETRIES = 2
S3_MIN_THROUGHPUT = 2 * 2**20  # bytes/s


def env_seconds(name: str, default: float) -> float:
    """A positive number of seconds from environment variable ``name``; unset or invalid → ``default``."""
    raw = os.environ.get(name)
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = 0.0
    if not value > 0:
        log.warning("%s=%r is not a positive number of seconds; using %s", name, raw, default)
        value = default
    return value


def s3_timeout() -> float:
    """Seconds of silence before an S3 request fails (``MRKD_S3_TIMEOUT``, default 20)."""
    return env_seconds(ENV_S3_TIMEOUT, DEFAULT_S3_TIMEOUT)


def storage_options_from_env(protocol: str) -> dict[str, Any]:
    """fsspec options for ``protocol`` taken from the environment (credentials stay implicit).

    Credentials are left to botocore's own chain (AWS_ACCESS_KEY_ID, profiles, instance
    roles) so that they never pass through our code, logs or Prefect parameters.
    """
    if protocol not in ("s3", "s3a"):
        return {}
    opts: dict[str, Any] = {}
    endpoint = os.environ.get(ENV_ENDPOINT) or os.environ.get("AWS_ENDPOINT_URL")
    client_kwargs: dict[str, Any] = {}
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        client_kwargs["region_name"] = region
    if client_kwargs:
        opts["client_kwargs"] = client_kwargs
    # Fail fast instead of retrying for minutes when the server is down (see S3_ATTEMPTS).
    timeout = s3_timeout()
    opts["config_kwargs"] = {"connect_timeout": min(5.0, timeout), "read_timeout": timeout,
                             "retries": {"total_max_attempts": S3_ATTEMPTS}}
    # Fresh instance per store: s3fs caches instances per option set, and a cached client
    # bound to a dead event loop breaks inside Ray workers.
    opts["skip_instance_cache"] = True
    opts["use_listings_cache"] = False
    return opts


_TEMP_MARK = ".tmp-"


def temp_name(full: str) -> str:
    """The hidden temp file a local write goes through: ``<dir>/.<name>.tmp-<random>``."""
    head, name = posixpath.split(full) if "/" in full else ("", full)
    return os.path.join(head, f".{name}{_TEMP_MARK}{uuid.uuid4().hex[:8]}")


def is_temp_name(path: str) -> bool:
    """Whether ``path`` is a temporary file of an atomic write in progress (listings skip them)."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return name.startswith(".") and _TEMP_MARK in name


def absolute_location(location: str) -> str:
    """A local path made absolute; a URI (``s3://…``, ``file://…``) unchanged. What is recorded or
    handed to another process names the same file from any working folder."""
    return location if "://" in location else os.path.abspath(location)


def _split_protocol(uri: str) -> tuple[str, str]:
    if "://" in uri:
        proto, rest = uri.split("://", 1)
        return proto, rest
    return "file", uri


def json_bytes(obj: Any) -> bytes:
    """``obj`` as the store writes JSON files: indented, sorted keys, anything else as ``str``."""
    return json.dumps(obj, indent=2, sort_keys=True, default=str).encode()


class ArtifactStore:
    """Reads and writes objects under one root URI.

    >>> store = ArtifactStore("/tmp/x")  # or ArtifactStore("s3://bucket/prefix")
    >>> store.write_json("runs/r1/config.json", {"a": 1})

    ``root`` is required: an empty or missing one is a ``StorageError`` naming the fix
    (the environment is read by the callers, see the module docstring).
    """

    def __init__(self, root: str | os.PathLike[str], storage_options: dict | None = None):
        if root is None or not str(root).strip():
            raise StorageError(
                "artifact store: no root given — pass a folder or s3://bucket/prefix "
                f"(the mrkd CLI: --output/--models, or {ENV_ROOT}; the flows read {ENV_ROOT}, default {DEFAULT_ROOT})"
            )
        root = str(root)
        protocol, rest = _split_protocol(root)
        if protocol == "file":
            rest = os.path.abspath(os.path.expanduser(rest))
            root = rest
        self.protocol = protocol
        self.root = root.rstrip("/") if protocol != "file" else rest
        self._base = rest.rstrip("/") if protocol != "file" else rest
        opts = storage_options if storage_options is not None else storage_options_from_env(protocol)
        self._storage_options = opts
        try:
            self.fs = fsspec.filesystem(protocol, **opts)
        except Exception as exc:  # noqa: BLE001 - surface as a storage error with the root only
            raise StorageError(f"cannot open artifact store {self.root!r}: {type(exc).__name__}: {exc}") from None
        if not self.is_local and hasattr(self.fs, "retries"):
            self.fs.retries = S3_RETRIES  # s3fs's own retries multiply botocore's attempts
        if protocol == "file":
            try:
                os.makedirs(self._base, exist_ok=True)
            except OSError as exc:  # a file in the way, no permission, a read-only disk
                raise StorageError(f"cannot open artifact store {self.root!r}: cannot create its folder "
                                   f"({type(exc).__name__}: {exc.strerror or exc}) — pass a folder you can write "
                                   "to") from None

    # ------------------------------------------------------------------ paths
    @property
    def is_local(self) -> bool:
        return self.protocol == "file"

    def _full(self, rel: str) -> str:
        rel = rel.strip("/")
        if ".." in rel.split("/"):
            raise StorageError(f"refusing store path with '..': {rel!r}")
        return posixpath.join(self._base, rel) if rel else self._base

    def uri(self, rel: str = "") -> str:
        """The full URI of ``rel`` (what to hand to pandas/pyarrow/DuckDB)."""
        full = self._full(rel)
        return full if self.is_local else f"{self.protocol}://{full}"

    def __repr__(self) -> str:
        return f"ArtifactStore({self.root!r})"

    def __reduce__(self):
        # Picklable for Ray/Prefect: rebuilt from the root and the worker's environment.
        return (ArtifactStore, (self.root, self._storage_options))

    # ------------------------------------------------------------------ reads
    def _wrap(self, what: str, rel: str, exc: Exception) -> StorageError:
        return StorageError(f"artifact store {self.root!r}: cannot {what} {rel!r}: {type(exc).__name__}: {exc}")

    def exists(self, rel: str) -> bool:
        try:
            return bool(self.fs.exists(self._full(rel)))
        except Exception as exc:  # noqa: BLE001
            raise self._wrap("check", rel, exc) from None

    def read_bytes(self, rel: str) -> bytes:
        try:
            with self.fs.open(self._full(rel), "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._wrap("read", rel, exc) from None

    def read_json(self, rel: str) -> Any:
        data = self.read_bytes(rel)
        try:
            return json.loads(data)
        except json.JSONDecodeError as exc:
            raise StorageError(f"artifact store {self.root!r}: {rel!r} is not valid JSON ({exc})") from None

    def size(self, rel: str) -> int:
        try:
            return int(self.fs.size(self._full(rel)))
        except Exception as exc:  # noqa: BLE001
            raise self._wrap("stat", rel, exc) from None

    def list(self, rel: str = "", recursive: bool = False) -> list[str]:
        """Paths (relative to the root) of the objects below ``rel``; [] when absent."""
        full = self._full(rel)
        try:
            if not self.fs.exists(full):
                return []
            found = self.fs.find(full) if recursive else self.fs.ls(full, detail=False)
        except Exception as exc:  # noqa: BLE001
            raise self._wrap("list", rel, exc) from None
        base = self._base.rstrip("/") + "/"
        out = []
        for p in found:
            p = str(p)
            if is_temp_name(p):  # another process's write in flight, not an object yet
                continue
            out.append(p[len(base):] if p.startswith(base) else p)
        return sorted(out)

    # ------------------------------------------------------------------ writes
    def write_bytes(self, rel: str, data: bytes) -> None:
        """Atomically write a whole object: readers see the old object or the new one, never a part.

        Locally the bytes go to a hidden temp file next to the target, then ``os.replace``.
        Hidden because pyarrow and pandas skip names starting with ``.`` when they read a
        folder (and the name does not end in ``.parquet`` for DuckDB's globs): a write in
        flight, or one killed mid-way, under ``tables/`` must not make
        ``read_parquet('.../tables/metrics')`` fail on a half-written file. A failed write
        removes its temp file.
        """
        full = self._full(rel)
        tmp: str | None = None
        try:
            if self.is_local:
                os.makedirs(os.path.dirname(full), exist_ok=True)
                tmp = temp_name(full)
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, full)
                tmp = None
            else:
                deadline = S3_ATTEMPTS * s3_timeout() + len(data) / S3_MIN_THROUGHPUT
                try:
                    self.fs.pipe_file(full, data, timeout=deadline)
                except FSTimeoutError:
                    raise StorageError(
                        f"artifact store {self.root!r}: cannot write {rel!r}: no answer within {deadline:.0f} s "
                        f"(server hung or slower than {S3_MIN_THROUGHPUT // 2**20} MiB/s; see {ENV_S3_TIMEOUT})"
                    ) from None
        except StorageError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise self._wrap("write", rel, exc) from None
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.remove(tmp)

    def write_json(self, rel: str, obj: Any) -> None:
        self.write_bytes(rel, json_bytes(obj))

    @contextmanager
    def open_write(self, rel: str) -> Iterator[IO[bytes]]:
        """A binary buffer committed atomically on exit (for torch.save, parquet writers)."""
        buf = io.BytesIO()
        yield buf
        self.write_bytes(rel, buf.getvalue())

    def remove(self, rel: str, recursive: bool = False) -> None:
        full = self._full(rel)
        try:
            if self.fs.exists(full):
                self.fs.rm(full, recursive=recursive)
        except Exception as exc:  # noqa: BLE001
            raise self._wrap("remove", rel, exc) from None

    # ------------------------------------------------------------------ helpers
    def sha256(self, rel: str) -> str:
        return hashlib.sha256(self.read_bytes(rel)).hexdigest()

    def sub(self, rel: str) -> "ArtifactStore":
        """A store rooted at ``rel`` below this one."""
        return ArtifactStore(self.uri(rel), self._storage_options)


def open_uri(uri: str, mode: str = "rb"):
    """Open any local path or fsspec URI (e.g. teacher weights) with the environment's S3 settings."""
    protocol, _ = _split_protocol(uri)
    return fsspec.open(uri, mode, **storage_options_from_env(protocol)).open()
