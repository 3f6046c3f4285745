"""Dataset downloads against a local HTTP server on 127.0.0.1 (Range-capable), never the internet."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest

from mrkd_core.data import get_dataset
from mrkd_core.data.base import COMPLETION_MARKER
from mrkd_core.data.download import (
    DownloadInfo,
    download_dataset,
    fetch,
    resolve_sources,
)
from mrkd_core.data.mvtec import MVTEC_DOWNLOAD, MVTecAD
from mrkd_core.errors import DownloadError
from tests import datagen
from tests.http_files import refused_url, serve_files


@pytest.fixture
def server():
    with serve_files() as served:
        yield served


@pytest.fixture(scope="module")
def mvtec_tar(tmp_path_factory) -> bytes:
    """A tiny MVTec-layout .tar.xz like the real one: categories at the top, plus license.txt."""
    tmp = tmp_path_factory.mktemp("archive")
    src = datagen.make_mvtec(tmp / "src", categories=("bottle",), n_per_defect=1)
    (src / "license.txt").write_text("CC BY-NC-SA 4.0\n")
    return datagen.make_tar(tmp / "a.tar.xz", datagen.tree_files(src), mode="w:xz").read_bytes()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _info(base: str, path: str | tuple[str, ...], sha: str | None, dataset: str = "mvtec") -> DownloadInfo:
    paths = (path,) if isinstance(path, str) else path
    return DownloadInfo(dataset, "archive.bin", tuple(f"{base}{p}" for p in paths), sha, "MRKD_TEST_URL")


def _download(info: DownloadInfo, root: Path, **kw) -> Path:
    kw.setdefault("looks_like_root", get_dataset("mvtec").looks_like_root)
    kw.setdefault("backoff", 0.0)
    return download_dataset(info, root, progress=False, **kw)


def _leftovers(parent: Path, root: Path) -> list[str]:
    """Everything next to root that is not root or the lock file (temp dirs, archives)."""
    return sorted(p.name for p in parent.iterdir() if p != root and not p.name.endswith(".lock"))


# --------------------------------------------------------------------------- success paths
def test_good_archive_extracts_and_second_call_is_a_noop(server, mvtec_tar, tmp_path, monkeypatch):
    state, base = server
    state.files["/mvtec.tar.xz"] = mvtec_tar
    info = DownloadInfo("mvtec", "mvtec_anomaly_detection.tar.xz", f"{base}/mvtec.tar.xz", _sha(mvtec_tar),
                        "MRKD_MVTEC_URL")
    monkeypatch.setattr(MVTecAD, "download_info", info)
    root = tmp_path / "datasets" / "mvtec"
    ds = get_dataset("mvtec")
    assert ds.download(root, progress=True) == root
    assert len(ds.train_samples(root, "bottle")) == 3 and len(ds.test_samples(root, "bottle")) == 4
    assert (root / "license.txt").is_file()
    marker = json.loads((root / COMPLETION_MARKER).read_text())
    assert marker["url"] == f"{base}/mvtec.tar.xz" and marker["sha256"] == _sha(mvtec_tar)
    assert marker["sha256_verified"] is True and marker["completed_at"]
    assert _leftovers(root.parent, root) == []  # archive and temp folder removed
    assert len(state.requests) == 1
    assert ds.download(root) == root
    assert len(state.requests) == 1  # the marker made the second call a no-op


def test_truncated_transfer_resumes_with_range(server, mvtec_tar, tmp_path):
    state, base = server
    state.files["/a.tar.xz"] = mvtec_tar
    state.truncate_once.add("/a.tar.xz")
    root = _download(_info(base, "/a.tar.xz", _sha(mvtec_tar)), tmp_path / "mvtec", retries=2)
    half = len(mvtec_tar) // 2
    assert state.requests == [("/a.tar.xz", None), ("/a.tar.xz", f"bytes={half}-")]
    assert json.loads((root / COMPLETION_MARKER).read_text())["sha256"] == _sha(mvtec_tar)
    assert (root / "bottle" / "test" / "crack" / "000.png").is_file()


def test_part_file_from_an_interrupted_call_is_resumed(server, mvtec_tar, tmp_path):
    state, base = server
    state.files["/a.tar.xz"] = mvtec_tar
    work = tmp_path / ".mvtec.download"
    work.mkdir()
    (work / "archive.bin.part").write_bytes(mvtec_tar[:100])
    _download(_info(base, "/a.tar.xz", _sha(mvtec_tar)), tmp_path / "mvtec")
    assert state.requests == [("/a.tar.xz", "bytes=100-")]
    assert (tmp_path / "mvtec" / "bottle" / "train" / "good" / "002.png").is_file()


def test_a_download_draws_its_bar_only_on_a_terminal(server, tmp_path, capsys, monkeypatch):
    """Standard error redirected (a log file, a worker's log): no bar's carriage returns in it."""
    import io

    from mrkd_core.console import on_terminal

    state, base = server
    state.files["/f"] = b"x" * 300
    assert fetch(f"{base}/f", tmp_path / "f", _sha(b"x" * 300), progress=True) == _sha(b"x" * 300)
    assert "\r" not in capsys.readouterr().err

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert on_terminal() and not on_terminal(io.StringIO())
    assert fetch(f"{base}/f", tmp_path / "g", _sha(b"x" * 300), progress=True) == _sha(b"x" * 300)
    assert "\r" in terminal.getvalue()  # a person at a terminal sees it


def test_fetch_complete_part_file_gets_416_and_finishes(server, tmp_path):
    state, base = server
    state.files["/f"] = b"x" * 300
    (tmp_path / "f.part").write_bytes(b"x" * 300)
    assert fetch(f"{base}/f", tmp_path / "f", _sha(b"x" * 300), progress=False) == _sha(b"x" * 300)
    assert state.requests == [("/f", "bytes=300-")] and (tmp_path / "f").read_bytes() == b"x" * 300


# --------------------------------------------------------------------------- failures
def test_hash_mismatch_removes_the_file_and_extracts_nothing(server, mvtec_tar, tmp_path):
    state, base = server
    corrupted = bytearray(mvtec_tar)
    corrupted[len(corrupted) // 2] ^= 0xFF
    state.files["/a.tar.xz"] = bytes(corrupted)
    with pytest.raises(DownloadError) as e:
        _download(_info(base, "/a.tar.xz", _sha(mvtec_tar)), tmp_path / "mvtec")
    msg = str(e.value)
    assert "sha256 mismatch" in msg and _sha(mvtec_tar) in msg and _sha(bytes(corrupted)) in msg
    assert "MRKD_TEST_URL" in msg and "\n" not in msg
    assert not (tmp_path / "mvtec").exists()
    assert not list(tmp_path.rglob("*.part")) and not list(tmp_path.rglob("archive.bin"))
    assert not list(tmp_path.glob(".mvtec.extract-*"))


def _hostile(tmp_path: Path, kind: str) -> bytes:
    good = {"mvtec/bottle/train/good/000.png": b"png", "mvtec/bottle/test/good/000.png": b"png"}
    outside = str(tmp_path / "outside.txt")
    if kind == "tar-dotdot":
        return datagen.make_tar(tmp_path / "h.tgz", {**good, "mvtec/../../outside.txt": b"pwned"}).read_bytes()
    if kind == "tar-absolute":
        return datagen.make_tar(tmp_path / "h.tgz", {**good, outside: b"pwned"}).read_bytes()
    if kind == "tar-symlink":
        # The classic escape: a link to a folder outside, then a file written "through" it.
        return datagen.make_tar(tmp_path / "h.tgz", good, symlinks={"mvtec/bottle/esc": str(tmp_path)}).read_bytes()
    if kind == "tar-hardlink":
        return datagen.make_tar(tmp_path / "h.tgz", good, hardlinks={"mvtec/bottle/h": "/etc/passwd"}).read_bytes()
    if kind == "zip-dotdot":
        return datagen.make_zip(tmp_path / "h.zip", {**good, "../outside.txt": b"pwned"}).read_bytes()
    if kind == "zip-symlink":
        return datagen.make_zip(tmp_path / "h.zip", good, symlinks={"mvtec/bottle/esc": "../../.."}).read_bytes()
    raise AssertionError(kind)


@pytest.mark.parametrize("kind,why", [
    ("tar-dotdot", "path with '..'"),
    ("tar-absolute", "absolute path"),
    ("tar-symlink", "links are not allowed"),
    ("tar-hardlink", "links are not allowed"),
    ("zip-dotdot", "path with '..'"),
    ("zip-symlink", "links are not allowed"),
])
def test_unsafe_archives_are_refused_and_nothing_is_written(server, tmp_path, kind, why):
    state, base = server
    build = tmp_path / "build"
    build.mkdir()
    data = _hostile(build, kind)
    state.files["/h"] = data
    parent = tmp_path / "data"
    parent.mkdir()
    with pytest.raises(DownloadError) as e:
        _download(_info(base, "/h", _sha(data)), parent / "mvtec")
    assert why in str(e.value) and "nothing was extracted" in str(e.value)
    assert not list(tmp_path.rglob("outside.txt")) and not list(tmp_path.rglob("esc"))
    assert not (parent / "mvtec").exists()
    assert _leftovers(parent, parent / "mvtec") == []  # temp folder and the unsafe archive removed


def test_http_404_fails_fast_and_names_the_override(server, tmp_path):
    state, base = server
    with pytest.raises(DownloadError) as e:
        _download(_info(base, "/missing", None), tmp_path / "mvtec", retries=3)
    assert "HTTP 404" in str(e.value) and "MRKD_TEST_URL" in str(e.value)
    assert len(state.requests) == 1


def test_server_errors_are_retried_a_bounded_number_of_times(server, tmp_path):
    state, base = server
    state.status["/busy"] = 503
    with pytest.raises(DownloadError, match="failed after 3 attempts") as e:
        _download(_info(base, "/busy", None), tmp_path / "mvtec", retries=2)
    assert "HTTP 503" in str(e.value)
    assert len(state.requests) == 3


def test_unreachable_server_is_retried_then_reported(tmp_path):
    with pytest.raises(DownloadError) as e:  # nothing listens there: connection refused
        _download(_info(refused_url(""), "/a", None), tmp_path / "mvtec", retries=1, timeout=2)
    assert "failed after 2 attempts" in str(e.value) and "Connection refused" in str(e.value)
    assert "partial file" not in str(e.value)  # nothing was received, nothing is kept
    assert not (tmp_path / "mvtec").exists()


def test_archive_without_the_layout_is_rejected(server, tmp_path):
    state, base = server
    data = datagen.make_tar(tmp_path / "x.tgz", {"index.html": b"<html>moved</html>"}).read_bytes()
    state.files["/x"] = data
    with pytest.raises(DownloadError, match="does not contain the mvtec layout"):
        _download(_info(base, "/x", _sha(data)), tmp_path / "mvtec")
    assert not (tmp_path / "mvtec").exists()


def test_not_an_archive_is_rejected(server, tmp_path):
    state, base = server
    state.files["/page"] = b"<html>this dataset has moved</html>"
    with pytest.raises(DownloadError, match="not a zip or tar archive"):
        _download(_info(base, "/page", None), tmp_path / "mvtec")


def test_non_empty_root_without_marker_is_left_alone(server, tmp_path):
    state, base = server
    root = tmp_path / "mvtec"
    root.mkdir()
    (root / "mine.txt").write_text("user data")
    with pytest.raises(DownloadError, match="not a finished mrkd download"):
        _download(_info(base, "/a", None), root)
    assert state.requests == [] and (root / "mine.txt").read_text() == "user data"


# --------------------------------------------------------------------------- several sources
def test_a_dead_first_source_is_logged_and_the_next_one_used(server, mvtec_tar, tmp_path, caplog):
    state, base = server
    state.files["/mirror.tar.xz"] = mvtec_tar
    with caplog.at_level(logging.WARNING, logger="mrkd_core.data.download"):
        root = _download(_info(base, ("/gone.tar.xz", "/mirror.tar.xz"), _sha(mvtec_tar)), tmp_path / "mvtec")
    assert state.requests == [("/gone.tar.xz", None), ("/mirror.tar.xz", None)]
    assert "source 1 of 2 failed: HTTP 404" in caplog.text and "trying the next source" in caplog.text
    assert json.loads((root / COMPLETION_MARKER).read_text())["url"] == f"{base}/mirror.tar.xz"


def test_a_source_serving_another_file_is_skipped(server, mvtec_tar, tmp_path):
    state, base = server
    state.files["/moved.tar.xz"] = b"<html>this dataset has moved</html>"
    state.files["/mirror.tar.xz"] = mvtec_tar
    root = _download(_info(base, ("/moved.tar.xz", "/mirror.tar.xz"), _sha(mvtec_tar)), tmp_path / "mvtec")
    assert [path for path, _ in state.requests] == ["/moved.tar.xz", "/mirror.tar.xz"]
    assert (root / "bottle" / "train" / "good" / "000.png").is_file()


def test_a_connection_dropped_mid_file_is_resumed_with_range(server, mvtec_tar, tmp_path):
    state, base = server
    state.files["/a.tar.xz"] = mvtec_tar
    state.drop_after["/a.tar.xz"] = 1000  # every response dies after 1000 bytes (a reset, not a clean close)
    with pytest.raises(DownloadError):
        _download(_info(base, "/a.tar.xz", _sha(mvtec_tar)), tmp_path / "mvtec", retries=2)
    # Each retry asked for the rest and got 1000 more bytes: the transfer moves on, it never restarts.
    assert state.requests == [("/a.tar.xz", None), ("/a.tar.xz", "bytes=1000-"), ("/a.tar.xz", "bytes=2000-")]
    part = tmp_path / ".mvtec.download" / "archive.bin.part"
    assert part.read_bytes() == mvtec_tar[:3000]
    del state.drop_after["/a.tar.xz"]
    root = _download(_info(base, "/a.tar.xz", _sha(mvtec_tar)), tmp_path / "mvtec")  # the next call resumes
    assert state.requests[-1] == ("/a.tar.xz", "bytes=3000-")
    assert json.loads((root / COMPLETION_MARKER).read_text())["sha256"] == _sha(mvtec_tar)


def test_the_next_source_resumes_what_a_broken_one_left(server, mvtec_tar, tmp_path):
    """A source whose bodies keep breaking off leaves a .part; the next source (same sha256) continues it."""
    state, base = server
    state.files["/flaky.tar.xz"] = mvtec_tar
    state.truncate_always.add("/flaky.tar.xz")
    state.files["/mirror.tar.xz"] = mvtec_tar
    root = _download(_info(base, ("/flaky.tar.xz", "/mirror.tar.xz"), _sha(mvtec_tar)), tmp_path / "mvtec",
                     retries=1)
    half, quarter = len(mvtec_tar) // 2, (len(mvtec_tar) - len(mvtec_tar) // 2) // 2
    assert state.requests == [("/flaky.tar.xz", None), ("/flaky.tar.xz", f"bytes={half}-"),
                              ("/mirror.tar.xz", f"bytes={half + quarter}-")]
    assert json.loads((root / COMPLETION_MARKER).read_text())["url"] == f"{base}/mirror.tar.xz"


def test_when_every_source_fails_one_error_names_each_with_its_status_and_the_overrides(server, mvtec_tar,
                                                                                         tmp_path):
    state, base = server
    state.status["/a"] = 404
    state.files["/b"] = b"not the archive"
    state.files["/c"] = mvtec_tar
    state.truncate_always.add("/c")
    with pytest.raises(DownloadError) as e:
        _download(_info(base, ("/a", "/b", "/c"), _sha(mvtec_tar)), tmp_path / "mvtec", retries=1)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("mvtec: download failed from every known source (3): ")
    assert f"{base}/a (HTTP 404" in msg
    assert f"{base}/b (sha256 mismatch: expected {_sha(mvtec_tar)}, got {_sha(b'not the archive')}" in msg
    assert f"{base}/c (failed after 2 attempts: connection closed after" in msg
    assert "--url" in msg and "local archive path" in msg and "MRKD_TEST_URL" in msg
    assert "archive.bin.part is kept and the next call resumes it" in msg
    assert not (tmp_path / "mvtec").exists()


def test_a_local_archive_path_is_verified_extracted_and_kept(mvtec_tar, tmp_path, monkeypatch):
    archive = tmp_path / "copy" / "mvtec_anomaly_detection.tar.xz"
    archive.parent.mkdir()
    archive.write_bytes(mvtec_tar)
    monkeypatch.setattr(MVTecAD, "download_info", _info("http://127.0.0.1:9", "/never", _sha(mvtec_tar)))
    root = get_dataset("mvtec").download(tmp_path / "mvtec", url=str(archive), progress=False)
    assert json.loads((root / COMPLETION_MARKER).read_text())["url"] == str(archive)
    assert archive.read_bytes() == mvtec_tar  # the user's file is never deleted
    wrong = tmp_path / "other.tar"
    wrong.write_bytes(b"x" * 10)
    with pytest.raises(DownloadError, match=r"download failed from the given source: .*other.tar \(sha256 mismatch"):
        get_dataset("mvtec").download(tmp_path / "mvtec2", url=f"file://{wrong}", progress=False)
    assert wrong.read_bytes() == b"x" * 10


def test_a_sha256_given_by_the_user_replaces_the_known_one(server, mvtec_tar, tmp_path, monkeypatch):
    state, base = server
    state.files["/repacked.tar.xz"] = mvtec_tar
    info = _info(base, "/repacked.tar.xz", "0" * 64)  # the known hash is another archive's
    monkeypatch.setenv("MRKD_TEST_SHA256", _sha(mvtec_tar))
    root = _download(info, tmp_path / "mvtec")
    marker = json.loads((root / COMPLETION_MARKER).read_text())
    assert marker["sha256"] == _sha(mvtec_tar) and marker["sha256_given"] is True
    monkeypatch.setenv("MRKD_TEST_SHA256", "not-a-hash")
    with pytest.raises(DownloadError, match="'not-a-hash' is not a sha256 .* MRKD_TEST_SHA256"):
        _download(info, tmp_path / "other")


def test_the_mvtec_sources_start_with_the_publishers_current_share():
    assert MVTEC_DOWNLOAD.urls[0] == ("https://www.mydrive.ch/shares/150996/b52ecdcbf521176e9db9c731f2304b27/"
                                      "download/420938113-1629960298/mvtec_anomaly_detection.tar.xz")
    assert "shares/38536/" not in " ".join(MVTEC_DOWNLOAD.urls)  # the share reported dead in 2026


# --------------------------------------------------------------------------- the real specs
def test_source_precedence(monkeypatch):
    info = DownloadInfo("x", "x.zip", ("https://a.invalid/x.zip", "https://b.invalid/x.zip"), None, "MRKD_X_URL")
    monkeypatch.delenv("MRKD_X_URL", raising=False)
    assert resolve_sources(info) == ("https://a.invalid/x.zip", "https://b.invalid/x.zip")
    monkeypatch.setenv("MRKD_X_URL", "http://127.0.0.1:1/env.zip")
    assert resolve_sources(info) == ("http://127.0.0.1:1/env.zip",)  # an override is the only source
    assert resolve_sources(info, "/data/x.zip") == ("/data/x.zip",)
    assert get_dataset("mvtec").download_info.sha256 == (
        "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d")
    assert get_dataset("btad").download_info.sha256 == (
        "461c9387e515bfed41ecaae07c50cf6b10def647b36c9e31d239ab2736b10d2a")
    assert get_dataset("mtd").download_info.sha256 is None


def test_btad_env_override_is_used_and_the_real_hash_enforced(server, tmp_path, monkeypatch):
    state, base = server
    src = datagen.make_btad(tmp_path / "src", products=("01",))
    data = datagen.make_zip(tmp_path / "b.zip", datagen.tree_files(src, "BTech_Dataset_transformed/")).read_bytes()
    state.files["/btad.zip"] = data
    monkeypatch.setenv("MRKD_BTAD_URL", f"{base}/btad.zip")
    with pytest.raises(DownloadError) as e:
        get_dataset("btad").download(tmp_path / "btad", progress=False)
    assert "461c9387e515bfed41ecaae07c50cf6b10def647b36c9e31d239ab2736b10d2a" in str(e.value)
    assert "MRKD_BTAD_URL" in str(e.value)
    assert state.requests == [("/btad.zip", None)] and not (tmp_path / "btad").exists()


def test_mtd_without_hash_records_the_observed_one(server, tmp_path, monkeypatch, caplog):
    state, base = server
    src = datagen.make_mtd(tmp_path / "src", n_free=5, n_per_defect=1)
    files = datagen.tree_files(src, "Magnetic-tile-defect-datasets.-master/")
    files["Magnetic-tile-defect-datasets.-master/README.md"] = b"# MTD\n"
    data = datagen.make_zip(tmp_path / "m.zip", files).read_bytes()
    state.files["/master.zip"] = data
    monkeypatch.setenv("MRKD_MTD_URL", f"{base}/master.zip")
    root = tmp_path / "mtd"
    with caplog.at_level(logging.WARNING, logger="mrkd_core.data.download"):
        assert get_dataset("mtd").download(root, progress=False) == root
    assert f"no known sha256 for Magnetic-tile-defect-datasets.-master.zip; observed {_sha(data)}" in caplog.text
    marker = json.loads((root / COMPLETION_MARKER).read_text())
    assert marker["sha256"] == _sha(data) and marker["sha256_verified"] is False
    assert get_dataset("mtd").categories(root) == ["mtd"]
    assert len(get_dataset("mtd").train_samples(root, "mtd")) == 4  # floor(0.8 · 5)
    assert _leftovers(tmp_path, root) == ["m.zip", "src"]  # only what the test itself made
