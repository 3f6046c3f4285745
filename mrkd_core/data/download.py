"""Download a public dataset archive safely: from the first source that works, resumable, sha256-verified, once.

Why each step:

* Links die (MVTec AD's share moved in 2026), so a dataset lists its known sources in order,
  the publisher's current link first, then known mirrors. A source that fails (HTTP 4xx, a
  transfer that keeps breaking, another file than the one expected) is logged and the next
  one tried; when every one failed, one error names each with its status and the ways to
  override them: ``--url`` (a URL or a local archive path) or ``MRKD_<NAME>_URL``. An
  override is the only source tried: a user who names a mirror or a copy on disk gets that.
* The archives are large (MVTec AD 4.9 GB) and their hosts flaky, so the body streams into
  ``<archive>.part`` and a broken transfer resumes with an HTTP ``Range`` request, within
  the same call (bounded retries), from the next source (when the sha256 is known: the
  same bytes) or by the next call.
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
import dataclasses
import datetime as _dt
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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import ClassVar

from tqdm import tqdm

from mrkd_core.console import on_terminal
from mrkd_core.data.base import COMPLETION_MARKER
from mrkd_core.data.io import file_sha256
from mrkd_core.errors import DownloadError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
DEFAULT_TIMEOUT = 60.0  # seconds per socket operation, not for the whole transfer
DEFAULT_RETRIES = 4  # further attempts after the first, each resuming where the last stopped
DEFAULT_BACKOFF = 2.0  # seconds, doubled per attempt
USER_AGENT = "mrkd-dataset-downloader/0.1"


@dataclass(frozen=True)
class DownloadInfo:
    """Where a dataset archive lives and how to recognise it (kept beside the loader).

    ``urls``: the known public sources, tried in order (the publisher's current link first,
    then known mirrors; a single string is one source). ``sha256``: the archive's identity,
    checked for every source; None where no stable hash exists (logged, the observed one
    recorded). ``env_var`` (``MRKD_<NAME>_URL``) overrides the sources, as ``--url`` does.
    """

    dataset: str
    filename: str
    urls: tuple[str, ...]
    sha256: str | None
    env_var: str

    def __post_init__(self) -> None:
        if isinstance(self.urls, str):
            object.__setattr__(self, "urls", (self.urls,))
        if not self.urls:
            raise ValueError(f"{self.dataset}: a download needs at least one source")


def sha256_env_var(info: DownloadInfo) -> str:
    """``MRKD_<NAME>_SHA256``: the variable that replaces the known sha256 (beside ``MRKD_<NAME>_URL``)."""
    return info.env_var.removesuffix("_URL") + "_SHA256"


def resolve_sha256(info: DownloadInfo, sha256: str | None = None) -> tuple[str | None, bool]:
    """(the sha256 the archive must have, whether the user gave it): ``--sha256``, ``MRKD_<NAME>_SHA256``, the known one.

    An override is for an archive the user vouches for (a repacked copy, a newer release
    before this code knows its hash); the completion marker records that it was given.
    """
    given = sha256 or os.environ.get(sha256_env_var(info))
    if given is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", given):
        raise DownloadError(f"{info.dataset}: {given!r} is not a sha256 (64 hex digits) — fix --sha256 or "
                            f"{sha256_env_var(info)}")
    return (given.lower(), True) if given else (info.sha256, False)


def resolve_sources(info: DownloadInfo, url: str | None = None) -> tuple[str, ...]:
    """The sources to try, in order: the argument, else the environment variable, alone; else the known ones."""
    override = url or os.environ.get(info.env_var)
    return (override,) if override else info.urls


def is_local(source: str) -> bool:
    """A local archive (a path, or a ``file://`` URL) rather than an HTTP(S) one."""
    return source.startswith("file://") or "://" not in source


def _local_path(source: str) -> Path:
    return Path(urllib.request.url2pathname(source[len("file://"):]) if source.startswith("file://")
                else source).expanduser()


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
                                          unit_divisor=1024, desc=label, disable=not (progress and on_terminal()),
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


class _SourceFailed(Exception):
    """One source did not deliver the archive; ``status`` says why in a few words (for the final error)."""

    def __init__(self, status: str):
        super().__init__(status)
        self.status = status


def _transfer(url: str, dest: Path, sha256: str | None, progress: bool, timeout: float, retries: int,
              backoff: float) -> str:
    """Download ``url`` to ``dest`` via ``dest.part``, resuming; return the file's sha256 or raise _SourceFailed.

    A hash mismatch removes the file (a resume on top of it could never succeed); ``dest``
    only ever exists complete and verified.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
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
        except DownloadError as exc:  # an HTTP status not worth retrying (4xx)
            raise _SourceFailed(str(exc).split(": ", 1)[-1]) from None
    else:
        raise _SourceFailed(f"failed after {retries + 1} attempts: {last}")
    observed = file_sha256(part)
    if sha256 is not None and observed != sha256.lower():
        part.unlink(missing_ok=True)
        raise _SourceFailed(f"sha256 mismatch: expected {sha256}, got {observed}; the file was deleted")
    if sha256 is None:
        log.warning("%s: no known sha256 for %s; observed %s (recorded in the completion marker)",
                    url, dest.name, observed)
    os.replace(part, dest)
    return observed


def fetch(url: str, dest: str | os.PathLike[str], sha256: str | None = None, *, progress: bool = True,
          timeout: float = DEFAULT_TIMEOUT, retries: int = DEFAULT_RETRIES, backoff: float = DEFAULT_BACKOFF,
          env_var: str | None = None) -> str:
    """Download one ``url`` to ``dest`` via ``dest.part``, resuming; return the file's sha256.

    A failure is one DownloadError naming the URL, why, and (``env_var``) the override.
    """
    dest = Path(dest)
    try:
        return _transfer(url, dest, sha256, progress, timeout, retries, backoff)
    except _SourceFailed as exc:
        part = dest.with_name(dest.name + ".part")
        kept = f"; the partial file {part} is kept and the next call resumes it" if part.exists() else ""
        override = f" or set {env_var} to a working mirror" if env_var else ""
        raise DownloadError(f"{url}: {exc.status} — check the URL and the network{override}{kept}") from None


def _verify_local(path: Path, sha256: str | None) -> str:
    """The sha256 of a local archive the user named (never deleted), or _SourceFailed."""
    if not path.is_file():
        raise _SourceFailed("no such file")
    observed = file_sha256(path)
    if sha256 is not None and observed != sha256.lower():
        raise _SourceFailed(f"sha256 mismatch: expected {sha256}, got {observed}")
    if sha256 is None:
        log.warning("%s: no known sha256; observed %s (recorded in the completion marker)", path, observed)
    return observed


@dataclass(frozen=True)
class _Archive:
    """The verified archive of one download: where it is, its hash, where it came from, whether it is ours."""

    path: Path
    sha256: str
    source: str
    owned: bool  # False: a local archive the user named, never deleted


def _obtain(info: DownloadInfo, sources: Sequence[str], archive: Path, progress: bool, timeout: float,
            retries: int, backoff: float, overridden: bool) -> _Archive:
    """The first source that delivers the archive with the expected sha256; every failure is logged.

    A ``.part`` left by a source that broke off is resumed by the next one when the sha256
    is known (the same bytes, whoever serves them; a mismatch then restarts that source once
    from zero), and discarded otherwise.
    """
    part = archive.with_name(archive.name + ".part")
    failures: list[str] = []
    for i, source in enumerate(sources):
        if is_local(source):
            path = _local_path(source)
            try:
                return _Archive(path, _verify_local(path, info.sha256), source, owned=False)
            except _SourceFailed as exc:
                failures.append(f"{path} ({exc.status})")
                continue
        inherited = i > 0 and part.exists()
        if inherited and info.sha256 is None:
            part.unlink()  # no identity to check a resumed file against: start this source over
            inherited = False
        if i:
            log.info("downloading %s from %s", info.dataset, source)
        for attempt in (0, 1):
            try:
                observed = _transfer(source, archive, info.sha256, progress, timeout, retries, backoff)
                return _Archive(archive, observed, source, owned=True)
            except _SourceFailed as exc:
                if inherited and attempt == 0 and exc.status.startswith("sha256 mismatch"):
                    log.warning("%s: %s after resuming another source's partial file; starting over from it",
                                source, exc.status)
                    continue
                failures.append(f"{source} ({exc.status})")
                log.warning("%s: source %d of %d failed: %s%s", info.dataset, i + 1, len(sources), exc.status,
                            "; trying the next source" if i + 1 < len(sources) else "")
                break
    kept = f"; the partial file {part} is kept and the next call resumes it" if part.exists() else ""
    expected = f" (sha256 {info.sha256})" if info.sha256 else ""
    what = "the given source" if overridden else f"every known source ({len(sources)})"
    raise DownloadError(
        f"{info.dataset}: download failed from {what}: {'; '.join(failures)} — pass --url with a working URL "
        f"or a local archive path, or set {info.env_var}, to the original {info.filename}{expected}{kept}"
    )


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
                     backoff: float | None = None, keep_archive: bool = False, sha256: str | None = None) -> Path:
    """Make ``root`` the extracted dataset (categories directly inside it); return ``root``.

    ``url`` (a URL, ``file://`` URL or local archive path; else ``info.env_var``) replaces
    the known sources; ``sha256`` (else ``MRKD_<NAME>_SHA256``) the known hash. The archive
    is kept in ``<parent>/.<root name>.download/`` while in flight, so an interrupted
    transfer resumes on the next call; it is deleted after a successful extraction unless
    ``keep_archive`` (a local archive the user named is never deleted). Raises
    ``DownloadError``, one line, when no source delivers it.
    """
    root = Path(root).expanduser().absolute()
    retries = DEFAULT_RETRIES if retries is None else retries
    backoff = DEFAULT_BACKOFF if backoff is None else backoff
    sources = resolve_sources(info, url)
    expected, given = resolve_sha256(info, sha256)
    if given:
        log.warning("%s: expecting the sha256 given by the user, %s (known: %s)", info.dataset, expected, info.sha256)
        info = dataclasses.replace(info, sha256=expected)
    work = root.parent / f".{root.name}.download"
    with file_lock(root.parent / f".{root.name}.lock"):
        try:
            _download_locked(info, root, sources, sources != info.urls, work, progress, looks_like_root, timeout,
                             retries, backoff, keep_archive, given)
        finally:
            with contextlib.suppress(OSError):
                work.rmdir()  # only when empty: a .part file stays for the next call to resume
    log.info("%s ready at %s", info.dataset, root)
    return root


def _download_locked(info: DownloadInfo, root: Path, sources: Sequence[str], overridden: bool, work: Path,
                     progress: bool, looks_like_root: Callable[[Path], bool] | None, timeout: float, retries: int,
                     backoff: float, keep_archive: bool, given: bool) -> None:
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
    got: _Archive | None = None
    if archive.exists():
        log.info("%s: found a complete archive from an earlier call; verifying it", archive)
        observed = file_sha256(archive)
        if info.sha256 is None or observed == info.sha256:
            got = _Archive(archive, observed, sources[0], owned=True)  # fetched by an earlier call
        else:
            archive.unlink()
    if got is None:
        log.info("downloading %s from %s", info.dataset, sources[0])
        got = _obtain(info, sources, archive, progress, timeout, retries, backoff, overridden)

    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.extract-", dir=root.parent))
    try:
        try:
            safe_extract(got.path, tmp)
        except DownloadError:
            if got.owned:  # an archive that is unsafe or corrupt is of no further use
                got.path.unlink(missing_ok=True)
            raise
        found = _find_root(tmp, looks_like_root) if looks_like_root else tmp
        if found is None:
            if got.owned:
                got.path.unlink(missing_ok=True)
            raise DownloadError(
                f"{got.source}: the archive does not contain the {info.dataset} layout (see docs/datasets.md) — "
                f"the source may serve another file; pass --url or set {info.env_var}"
            )
        record = {
            "dataset": info.dataset,
            "url": got.source,
            "archive": info.filename,
            "sha256": got.sha256,
            "sha256_verified": info.sha256 is not None,  # against the known hash, or one the user gave
            "sha256_given": given,
            "completed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        # The marker travels with the data in the same rename: data without marker never shows.
        (found / COMPLETION_MARKER).write_text(json.dumps(record, indent=2, sort_keys=True))
        if root.exists():
            root.rmdir()  # empty, checked above
        os.replace(found, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if got.owned and not keep_archive:
        got.path.unlink(missing_ok=True)


class DownloadableMixin:
    """Gives a DatasetLayout ``download(root, url=None, progress=True)`` from its ``download_info``."""

    download_info: ClassVar[DownloadInfo]

    def download(self, root: str | os.PathLike[str], url: str | None = None, progress: bool = True,
                 sha256: str | None = None) -> Path:
        """Download, verify and extract this dataset so that ``root`` holds its categories.

        ``url`` (a URL or a local archive path) replaces the known sources, as does the
        environment variable named in ``download_info.env_var``; ``sha256`` (or
        ``MRKD_<NAME>_SHA256``) the known hash. A second call is a no-op.
        """
        # Each dataset's looks_like_root() finds its root inside the archive's wrapper folders.
        return download_dataset(self.download_info, root, url, progress,
                                looks_like_root=getattr(self, "looks_like_root", None), sha256=sha256)
