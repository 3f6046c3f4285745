"""Download a public dataset archive safely: resumable, sha256-verified, safely extracted, once.

Why each step:

* The archives are large (MVTec AD 4.9 GB) and their hosts flaky, so the body streams into
  ``<archive>.part`` and a broken transfer resumes with an HTTP ``Range`` request, within
  the same call (bounded retries) or the next one.
* The sha256 is checked *before* anything is extracted: the URLs have moved several times
  and a moved URL often serves an HTML page or another file. The hash, not the URL, is the
  identity of the dataset. MTD (a GitHub branch archive) has no stable hash: the observed
  one is logged and recorded.
* Archives come from third parties: members with absolute paths, ``..`` or links, and
  device files, are refused; nothing is written outside a temporary folder, which becomes
  the dataset root by one atomic rename. A crash therefore never leaves half a dataset at
  the root.
* ``<root>/.mrkd_complete.json`` (url, sha256, time) marks a finished download, so a second
  call, e.g. from every Ray worker, does nothing.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import ClassVar

from tqdm import tqdm

from mrkd_core.data.base import COMPLETION_MARKER
from mrkd_core.errors import DownloadError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
DEFAULT_TIMEOUT = 60.0  # seconds per socket operation, not for the whole transfer
DEFAULT_RETRIES = 4  # further attempts after the first, each resuming where the last stopped
DEFAULT_BACKOFF = 2.0  # seconds, doubled per attempt
USER_AGENT = "mrkd-dataset-downloader/0.1"


@dataclass(frozen=True)
class DownloadInfo:
    """Where a dataset archive lives and how to recognise it (kept beside the loader)."""

    dataset: str
    filename: str
    url: str
    sha256: str | None  # None: no stable hash is known (logged, observed hash recorded)
    env_var: str  # environment variable that overrides ``url``


def resolve_url(info: DownloadInfo, url: str | None = None) -> str:
    """Argument, then environment variable, then the last known public URL."""
    return url or os.environ.get(info.env_var) or info.url


def read_marker(root: str | os.PathLike[str]) -> dict | None:
    """The completion marker of ``root`` or None when the download never finished."""
    marker = Path(root) / COMPLETION_MARKER
    try:
        return json.loads(marker.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DownloadError(f"{marker}: unreadable completion marker ({exc}) — delete it to download again") from None


# --------------------------------------------------------------------------- transfer
def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _total_from_content_range(value: str | None) -> int | None:
    m = re.match(r"bytes\s+(?:\d+-\d+|\*)/(\d+)", value or "")
    return int(m.group(1)) if m else None


class _Retryable(Exception):
    """A transfer failure worth another attempt (network, 5xx, short body)."""


def _attempt(url: str, part: Path, timeout: float, progress: bool, label: str) -> None:
    """One HTTP request that appends to ``part``; returns when the body is complete."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - URL chosen by the user
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            total = _total_from_content_range(exc.headers.get("Content-Range"))
            if total == have:
                return  # the .part already holds the whole file
            log.warning("%s: server refused to resume (416); starting over", url)
            part.unlink()
            raise _Retryable("HTTP 416 on resume") from None
        if exc.code in (408, 425, 429) or exc.code >= 500:
            raise _Retryable(f"HTTP {exc.code} {exc.reason}") from None
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise _Retryable(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}") from None

    with response:
        status = response.status
        length = response.headers.get("Content-Length")
        if status == 206:
            content_range = response.headers.get("Content-Range") or ""
            total = _total_from_content_range(content_range)
            if not content_range.replace(" ", "").startswith(f"bytes{have}-"):
                part.unlink(missing_ok=True)  # the server resumed elsewhere: start over cleanly
                raise _Retryable(f"server answered range {content_range!r} to 'bytes={have}-'")
            start = have
        else:
            if have:
                log.info("%s: server ignored the Range request; downloading from the start", url)
            total = int(length) if length is not None else None
            start = 0
        expected_body = int(length) if length is not None else None
        received = 0
        mode = "ab" if start else "wb"
        with open(part, mode) as fh, tqdm(total=total, initial=start, unit="B", unit_scale=True,
                                          unit_divisor=1024, desc=label, disable=not progress,
                                          leave=False) as bar:
            try:
                while True:
                    block = response.read(CHUNK)
                    if not block:
                        break
                    fh.write(block)
                    received += len(block)
                    bar.update(len(block))
            except (OSError, http.client.HTTPException) as exc:
                raise _Retryable(f"connection lost after {start + received} bytes ({type(exc).__name__})") from None
    # http.client returns a short body without raising when the peer closes early.
    if expected_body is not None and received < expected_body:
        raise _Retryable(f"connection closed after {start + received} of {start + expected_body} bytes")
    if total is not None and part.stat().st_size != total:
        size = part.stat().st_size
        if size > total:
            part.unlink()  # longer than the file: it cannot be resumed, only restarted
        raise _Retryable(f"size {size} differs from the announced {total} bytes")


def fetch(url: str, dest: str | os.PathLike[str], sha256: str | None = None, *, progress: bool = True,
          timeout: float = DEFAULT_TIMEOUT, retries: int = DEFAULT_RETRIES, backoff: float = DEFAULT_BACKOFF,
          env_var: str | None = None) -> str:
    """Download ``url`` to ``dest`` via ``dest.part``, resuming; return the file's sha256.

    A hash mismatch removes the file (a resume on top of it could never succeed) and raises
    DownloadError; ``dest`` only ever exists complete and verified.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    override = f" or set {env_var} to a working mirror" if env_var else ""
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            delay = backoff * 2 ** (attempt - 1)
            log.warning("%s: %s; retry %d/%d in %.1f s (resuming)", url, last, attempt, retries, delay)
            time.sleep(delay)
        try:
            _attempt(url, part, timeout, progress, dest.name)
            break
        except _Retryable as exc:
            last = str(exc)
        except DownloadError as exc:
            raise DownloadError(f"{exc} — check the URL{override}") from None
    else:
        kept = f"; the partial file {part} is kept and the next call resumes it" if part.exists() else ""
        raise DownloadError(
            f"{url}: download failed after {retries + 1} attempts ({last}) — check the network{override}{kept}"
        )
    observed = _sha256_file(part)
    if sha256 is not None and observed != sha256.lower():
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{url}: sha256 mismatch for {dest.name}: expected {sha256}, got {observed} — the file was deleted; "
            f"the URL probably serves something else now: pass --url{override} pointing to the original archive"
        )
    if sha256 is None:
        log.warning("%s: no known sha256 for %s; observed %s (recorded in the completion marker)",
                    url, dest.name, observed)
    os.replace(part, dest)
    return observed


# --------------------------------------------------------------------------- extraction
def _unsafe_name(name: str) -> str | None:
    """Why a member name may not be extracted, or None when it is safe."""
    if not name or "\x00" in name:
        return "empty name"
    normalised = name.replace("\\", "/")
    if normalised.startswith("/") or re.match(r"^[A-Za-z]:", normalised):
        return "absolute path"
    if ".." in PurePosixPath(normalised).parts:
        return "path with '..'"
    return None


def _refuse(archive: Path, member: str, why: str) -> DownloadError:
    return DownloadError(
        f"{archive}: refusing to extract member {member!r} ({why}) — the archive is unsafe or not the "
        "original dataset; nothing was extracted. Get the archive from the official source"
    )


def _checked_tar_members(tar: tarfile.TarFile, archive: Path) -> Iterator[tarfile.TarInfo]:
    """Members in archive order, each checked before it is extracted (single pass, xz-friendly)."""
    for member in tar:
        why = _unsafe_name(member.name)
        if why is None and (member.issym() or member.islnk()):
            why = f"link to {member.linkname!r}; links are not allowed"
        if why is None and not (member.isfile() or member.isdir()):
            why = "device, fifo or other special file"
        if why is not None:
            raise _refuse(archive, member.name, why)
        yield member


def _check_zip(zf: zipfile.ZipFile, archive: Path, target: Path) -> None:
    total = 0
    for info in zf.infolist():
        why = _unsafe_name(info.filename)
        mode = info.external_attr >> 16
        if why is None and stat.S_ISLNK(mode):
            why = "symbolic link; links are not allowed"
        # Zips made outside Unix carry no type bits at all: those are plain files.
        if why is None and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            why = "device, fifo or other special file"
        if why is not None:
            raise _refuse(archive, info.filename, why)
        total += info.file_size
    free = shutil.disk_usage(target).free
    if total > free:
        raise DownloadError(f"{archive}: extracting needs {total:,} bytes but only {free:,} are free in {target} "
                            "— free some space or choose another root")


def safe_extract(archive: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Extract a .zip or .tar(.gz/.xz/.bz2) into ``target``, refusing anything that could escape it.

    The format is recognised by content, not by name (download URLs rarely end in the
    archive's extension). Refusal raises DownloadError; the caller discards ``target``.
    """
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            _check_zip(zf, archive, target)
            zf.extractall(target)
        return
    try:
        tar = tarfile.open(archive, mode="r:*")
    except (tarfile.TarError, OSError) as exc:
        raise DownloadError(
            f"{archive}: not a zip or tar archive ({exc}) — the URL may serve an HTML page; check it"
        ) from None
    with tar:
        try:
            # Our own checks run first; the 'data' filter is a second line of defence.
            tar.extractall(target, members=_checked_tar_members(tar, archive), filter="data")
        except tarfile.FilterError as exc:
            member = exc.tarinfo.name if getattr(exc, "tarinfo", None) is not None else "?"
            raise _refuse(archive, member, str(exc)) from None
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DownloadError(f"{archive}: archive is corrupt ({type(exc).__name__}: {exc}) — delete it and "
                                "download again") from None


def _find_root(extracted: Path, looks_like_root: Callable[[Path], bool], max_depth: int = 3) -> Path | None:
    """The shallowest folder that holds the dataset (archives often wrap it in one folder)."""
    level = [extracted]
    for _ in range(max_depth + 1):
        for folder in level:
            if looks_like_root(folder):
                return folder
        level = [d for folder in level for d in sorted(folder.iterdir()) if d.is_dir()]
    return None


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Inter-process lock so parallel workers download once (POSIX; no-op elsewhere)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def download_dataset(info: DownloadInfo, root: str | os.PathLike[str], url: str | None = None,
                     progress: bool = True, *, looks_like_root: Callable[[Path], bool] | None = None,
                     timeout: float = DEFAULT_TIMEOUT, retries: int | None = None,
                     backoff: float | None = None, keep_archive: bool = False) -> Path:
    """Make ``root`` the extracted dataset (categories directly inside it); return ``root``.

    The archive is kept in ``<parent>/.<root name>.download/`` while in flight, so an
    interrupted transfer resumes on the next call; it is deleted after a successful
    extraction unless ``keep_archive``.
    """
    root = Path(root).expanduser().absolute()
    retries = DEFAULT_RETRIES if retries is None else retries
    backoff = DEFAULT_BACKOFF if backoff is None else backoff
    source = resolve_url(info, url)
    work = root.parent / f".{root.name}.download"
    with file_lock(root.parent / f".{root.name}.lock"):
        try:
            _download_locked(info, root, source, work, progress, looks_like_root, timeout, retries, backoff,
                             keep_archive)
        finally:
            with contextlib.suppress(OSError):
                work.rmdir()  # only when empty: a .part file stays for the next call to resume
    log.info("%s ready at %s", info.dataset, root)
    return root


def _download_locked(info: DownloadInfo, root: Path, source: str, work: Path, progress: bool,
                     looks_like_root: Callable[[Path], bool] | None, timeout: float, retries: int,
                     backoff: float, keep_archive: bool) -> None:
    """download_dataset's body, run while holding the lock."""
    marker = read_marker(root)
    if marker is not None:
        log.info("%s already downloaded to %s (from %s); nothing to do", info.dataset, root, marker.get("url"))
        return
    if root.exists() and not _is_empty_dir(root):
        raise DownloadError(
            f"{root}: folder exists and is not empty but has no {COMPLETION_MARKER}, so it is not a finished "
            f"mrkd download — use it as it is (skip the download), or remove it / choose an empty folder"
        )
    archive = work / info.filename
    if archive.exists():
        log.info("%s: found a complete archive from an earlier call; verifying it", archive)
        observed = _sha256_file(archive)
        if info.sha256 is not None and observed != info.sha256:
            archive.unlink()
            observed = fetch(source, archive, info.sha256, progress=progress, timeout=timeout,
                             retries=retries, backoff=backoff, env_var=info.env_var)
    else:
        log.info("downloading %s from %s", info.dataset, source)
        observed = fetch(source, archive, info.sha256, progress=progress, timeout=timeout,
                         retries=retries, backoff=backoff, env_var=info.env_var)

    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.extract-", dir=root.parent))
    try:
        try:
            safe_extract(archive, tmp)
        except DownloadError:
            # An archive that is unsafe or corrupt is of no further use.
            archive.unlink(missing_ok=True)
            raise
        found = _find_root(tmp, looks_like_root) if looks_like_root else tmp
        if found is None:
            archive.unlink(missing_ok=True)
            raise DownloadError(
                f"{source}: the archive does not contain the {info.dataset} layout (see docs/datasets.md) — "
                f"the URL may serve another file; pass --url or set {info.env_var}"
            )
        record = {
            "dataset": info.dataset,
            "url": source,
            "archive": info.filename,
            "sha256": observed,
            "sha256_verified": info.sha256 is not None,
            "completed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        # The marker travels with the data in the same rename: data without marker never shows.
        (found / COMPLETION_MARKER).write_text(json.dumps(record, indent=2, sort_keys=True))
        if root.exists():
            root.rmdir()  # empty, checked above
        os.replace(found, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not keep_archive:
        archive.unlink(missing_ok=True)


class DownloadableMixin:
    """Gives a DatasetLayout ``download(root, url=None, progress=True)`` from its ``download_info``."""

    download_info: ClassVar[DownloadInfo]

    def download(self, root: str | os.PathLike[str], url: str | None = None, progress: bool = True) -> Path:
        """Download, verify and extract this dataset so that ``root`` holds its categories.

        ``url`` overrides the default (as does the environment variable named in
        ``download_info.env_var``). A second call is a no-op.
        """
        # Each dataset's looks_like_root() finds its root inside the archive's wrapper folders.
        return download_dataset(self.download_info, root, url, progress,
                                looks_like_root=getattr(self, "looks_like_root", None))
