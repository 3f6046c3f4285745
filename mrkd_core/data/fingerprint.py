"""Data fingerprints: which images a model was trained (or evaluated) on, as one digest.

A fingerprint is the sha256 of a canonical listing of a split, one line per sample in
the order training sees it (the order is an input: it decides the shuffling and the
ILM patches of every image)::

    mrkd-data-fingerprint/1
    <image path relative to the dataset root>  <size>  <sha256>  <label>  <defect type>  <mask: path size sha256 | ->

File names are relative to the dataset root, so the same dataset extracted elsewhere
(another node's data root, a moved folder) has the same fingerprint, while a changed,
added, removed, renamed or relabelled image changes it.

Hashing every image each night would cost minutes on a large dataset, so file hashes
are remembered in a :class:`HashCache`, keyed by path, size and ``mtime_ns``, as git's
index and rsync do: a re-run over unchanged files only ``stat``s them
(``bench/bench_fingerprint.py``; figures in docs/storage.md). A file whose
modification time is within :data:`RACY_SECONDS` of the moment it was hashed is not
remembered ("racy git"): a rewrite in the same timestamp tick would otherwise keep its
old size and mtime and go unseen.

The cache is one hidden JSON file per dataset root, ``<root>/.mrkd_hash_cache.json``
(datasets never list hidden files; it goes where the data goes), or, when the root is
not writable (a read-only share of the user's images), a file in
``$MRKD_CACHE_DIR/fingerprints/`` (default ``~/.cache/mrkd``). Losing it costs one full
hash, never a wrong fingerprint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mrkd_core.data.base import Sample, mask_files
from mrkd_core.data.io import file_sha256
from mrkd_core.errors import DataError

log = logging.getLogger(__name__)

FINGERPRINT_FORMAT = "mrkd-data-fingerprint/1"
CACHE_FORMAT = "mrkd-hash-cache/1"
CACHE_FILE = ".mrkd_hash_cache.json"
ENV_CACHE_DIR = "MRKD_CACHE_DIR"
DEFAULT_CACHE_DIR = "~/.cache/mrkd"
# A file modified this recently when it was hashed is hashed again next time (see above).
RACY_SECONDS = 2.0
HASH_THREADS = 4  # hashlib releases the GIL: a few threads keep a disk or NFS busy


def cache_dir() -> Path:
    """``$MRKD_CACHE_DIR`` (default ``~/.cache/mrkd``): node-local caches of derived data."""
    return Path(os.path.expanduser(os.environ.get(ENV_CACHE_DIR) or DEFAULT_CACHE_DIR))


def default_cache_path(root: str) -> Path:
    """``<root>/.mrkd_hash_cache.json``, or a file under :func:`cache_dir` when ``root`` is read-only."""
    if os.access(root, os.W_OK):
        return Path(root) / CACHE_FILE
    return cache_dir() / "fingerprints" / f"{hashlib.sha256(root.encode()).hexdigest()[:16]}.json"


FileEntry = tuple[str, int, str]  # (path relative to the dataset root, size in bytes, sha256 hex)


@dataclass(frozen=True)
class DataFingerprint:
    """``digest``: sha256 hex of the split's canonical listing; ``files``/``bytes``: what it covers.

    ``entries``: each file it covers once, in the split's order, as (path relative to the
    dataset root, size, sha256): what a run directory records of the images it trained on,
    so that a later training can say what changed since (:func:`file_changes`).
    """

    digest: str
    files: int
    bytes: int
    entries: tuple[FileEntry, ...] = field(default=(), compare=False, repr=False)

    def __str__(self) -> str:
        return self.digest


@dataclass(frozen=True)
class FileChanges:
    """What differs between two listings of :attr:`DataFingerprint.entries`, by relative path.

    ``modified``: the same path with other bytes. Renamed files count as removed and
    added; a listing that only changed order has no changes here (but another fingerprint).
    """

    added: tuple[str, ...]
    removed: tuple[str, ...]
    modified: tuple[str, ...]
    before: int
    after: int

    @property
    def any(self) -> bool:
        return bool(self.added or self.removed or self.modified)

    def describe(self, noun: str = "training images", shown: int = 3) -> str:
        """``20 of 40 training images modified (a.png, b.png, c.png and 17 more), 0 added, 0 removed``."""
        def some(paths: tuple[str, ...]) -> str:
            named = ", ".join(paths[:shown]) + (f" and {len(paths) - shown} more" if len(paths) > shown else "")
            return f" ({named})" if paths else ""

        if not self.any:
            return f"the same {self.after} {noun}, in another order"
        return (f"{len(self.modified)} of {self.before} {noun} modified{some(self.modified)}, "
                f"{len(self.added)} added{some(self.added)}, {len(self.removed)} removed{some(self.removed)}")

    def to_dict(self) -> dict[str, object]:
        return {"added": list(self.added), "removed": list(self.removed), "modified": list(self.modified),
                "before": self.before, "after": self.after}


def file_changes(before: Sequence[Sequence[object]], after: Sequence[Sequence[object]]) -> FileChanges:
    """The files added, removed and modified from listing ``before`` to ``after`` (:class:`FileEntry` rows).

    Rows may come from JSON (lists); only path and sha256 are compared (a size change is a hash change).
    """
    old = {str(e[0]): str(e[2]) for e in before}
    new = {str(e[0]): str(e[2]) for e in after}
    return FileChanges(added=tuple(p for p in new if p not in old), removed=tuple(p for p in old if p not in new),
                       modified=tuple(p for p in new if p in old and old[p] != new[p]), before=len(old),
                       after=len(new))


class HashCache:
    """sha256 of the files under ``root``, remembered by (relative path, size, mtime_ns).

    ``hashed`` counts the files read in full by this instance (what a benchmark or a
    test checks). :meth:`save` merges with what another process saved meanwhile and
    replaces the file atomically, so concurrent workers on one node lose no entries
    they both keep.
    """

    def __init__(self, root: str | os.PathLike[str], path: str | os.PathLike[str] | None = None):
        self.root = os.path.abspath(root)
        self.path = Path(path) if path is not None else default_cache_path(self.root)
        self.entries: dict[str, tuple[int, int, str]] = self._load()
        self.hashed = 0
        self._dirty = False
        self._lock = threading.Lock()  # fingerprint_samples hashes from several threads

    def _load(self) -> dict[str, tuple[int, int, str]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("fingerprint cache %s unreadable (%s); hashing again", self.path, exc)
            return {}
        # Entries are relative to the root, so a moved dataset keeps its cache ("root" is informative).
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
            return {}
        files = data.get("files")
        return {k: tuple(v) for k, v in files.items() if isinstance(v, list) and len(v) == 3} \
            if isinstance(files, dict) else {}

    def sha256(self, rel: str) -> tuple[int, str]:
        """(size, sha256 hex) of ``root/rel``; from the cache when size and mtime_ns are unchanged."""
        return self.sha256_many([rel])[0]

    def sha256_many(self, rels: Sequence[str]) -> list[tuple[int, str]]:
        """:meth:`sha256` of each of ``rels``: one ``stat`` each, the files not in the cache hashed in threads."""
        stats = [self._stat(rel) for rel in rels]
        out: list[tuple[int, str] | None] = []
        for rel, st in zip(rels, stats):
            hit = self.entries.get(rel)
            out.append((st.st_size, hit[2]) if hit is not None and hit[:2] == (st.st_size, st.st_mtime_ns) else None)
        misses = [i for i, o in enumerate(out) if o is None]
        if misses:
            with ThreadPoolExecutor(max_workers=min(HASH_THREADS, len(misses))) as pool:
                for i, result in zip(misses, pool.map(lambda i: self._hash(rels[i], stats[i]), misses)):
                    out[i] = result
        return out  # type: ignore[return-value]  # every None was filled

    def _stat(self, rel: str) -> os.stat_result:
        full = os.path.join(self.root, rel)
        try:
            return os.stat(full)
        except FileNotFoundError:
            raise DataError(f"{full}: listed in the dataset but missing — was it removed while the run started?") from None

    def _hash(self, rel: str, st: os.stat_result) -> tuple[int, str]:
        full = os.path.join(self.root, rel)
        digest = _file_sha256(full)
        after = os.stat(full)
        racy = time.time_ns() - after.st_mtime_ns < RACY_SECONDS * 1e9
        with self._lock:
            self.hashed += 1
            if (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns) and not racy:
                self.entries[rel] = (st.st_size, st.st_mtime_ns, digest)
                self._dirty = True
        return st.st_size, digest

    def save(self) -> None:
        """Write the cache (merged with the file's current entries); a failure only costs speed."""
        if not self._dirty:
            return
        try:
            merged = {**self._load(), **self.entries}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.tmp-{uuid.uuid4().hex[:8]}")
            try:
                tmp.write_text(json.dumps({"format": CACHE_FORMAT, "root": self.root,
                                           "files": {k: list(v) for k, v in sorted(merged.items())}}))
                os.replace(tmp, self.path)
            finally:
                with contextlib.suppress(OSError):
                    tmp.unlink()
            self._dirty = False
        except OSError as exc:
            log.warning("fingerprint cache %s not written (%s); the next run hashes again", self.path, exc)


def _file_sha256(path: str) -> str:
    try:
        return file_sha256(path)
    except OSError as exc:
        raise DataError(f"{path}: cannot read it to fingerprint the dataset ({exc})") from None


def _relative(path: str, root: str) -> str:
    full = os.path.abspath(path)
    if full.startswith(root + os.sep):  # the usual case, without relpath's cost (10,000 files)
        rel = full[len(root) + 1:]
    else:
        rel = os.path.relpath(full, root)
    return rel.replace(os.sep, "/")


def fingerprint_samples(samples: Sequence[Sample], root: str | os.PathLike[str] | None = None,
                        cache: HashCache | None = None) -> DataFingerprint:
    """The fingerprint of a split (``DatasetLayout.train_samples`` or ``test_samples``), in its order.

    ``root``: the dataset root the names are relative to (``Task.data_root``); None =
    the folder all samples share (what a caller without a dataset root, e.g. a direct
    ``train()`` call, gets). ``cache``: default one :class:`HashCache` for ``root``,
    saved before returning. Raises ``DataError`` naming a file that cannot be read.
    """
    masks = {s.mask_path: [str(f) for f in mask_files(s.mask_path)] for s in samples if s.mask_path}
    paths = [p for s in samples for p in (s.path, *masks.get(s.mask_path, ()))]
    if root is None:
        root = _common_folder(paths)
    root = os.path.abspath(root)
    own_cache = cache is None
    cache = HashCache(root) if cache is None else cache
    rels = {p: _relative(p, cache.root) for p in paths}
    hashed = dict(zip(paths, cache.sha256_many([rels[p] for p in paths])))
    if own_cache:
        cache.save()
    listing = hashlib.sha256(FINGERPRINT_FORMAT.encode() + b"\n")
    total = 0
    for s in samples:
        size, digest = hashed[s.path]
        total += size
        mask = "-"
        if s.mask_path:
            parts = []
            for f in masks[s.mask_path]:  # a mask folder (MVTec LOCO AD) is every file in it
                msize, mdigest = hashed[f]
                total += msize
                parts.append(f"{rels[f]}\t{msize}\t{mdigest}")
            mask = "\t".join(parts) or f"{_relative(s.mask_path, cache.root)}\t(empty folder)"
        listing.update(f"{rels[s.path]}\t{size}\t{digest}\t{s.label}\t{s.defect_type}\t{mask}\n".encode())
    entries = tuple((rels[p], *hashed[p]) for p in dict.fromkeys(paths))
    return DataFingerprint(listing.hexdigest(), len(set(paths)), total, entries)


def _common_folder(paths: Iterable[str]) -> str:
    folders = [os.path.dirname(os.path.abspath(p)) for p in paths]
    return os.path.commonpath(folders) if folders else os.getcwd()


__all__ = ["CACHE_FILE", "DataFingerprint", "FileChanges", "FileEntry", "HashCache", "cache_dir", "default_cache_path",
           "file_changes", "fingerprint_samples"]
