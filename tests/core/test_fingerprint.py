"""Data fingerprints: what changes them, what does not, and the incremental hash cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from mrkd_core.data import get_dataset
from mrkd_core.data.base import Sample
from mrkd_core.data.fingerprint import CACHE_FILE, HashCache, default_cache_path, fingerprint_samples
from mrkd_core.errors import DataError
from tests.datagen import make_mvtec, write_image

HOUR_NS = 3600 * 10**9


def _age(root: Path) -> None:
    """Move every file's mtime an hour back: older than the racy window, so the cache keeps it."""
    for p in root.rglob("*"):
        if p.is_file():
            st = p.stat()
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns - HOUR_NS))


@pytest.fixture
def root(tmp_path) -> Path:
    r = make_mvtec(tmp_path / "mvtec", categories=("bottle",), n_train=4)
    _age(r)
    return r


def _splits(root: Path) -> tuple[list[Sample], list[Sample]]:
    ds = get_dataset("mvtec")
    return ds.train_samples(str(root), "bottle"), ds.test_samples(str(root), "bottle")


def test_same_files_same_fingerprint_wherever_the_dataset_lies(root, tmp_path):
    train, test = _splits(root)
    a = fingerprint_samples(train, root)
    assert a == fingerprint_samples(train, root) and len(a.digest) == 64
    assert a.files == 4 and a.bytes == sum(os.path.getsize(s.path) for s in train)
    moved = tmp_path / "elsewhere" / "mvtec"
    shutil.copytree(root, moved)  # another node's data root: same names relative to the root
    assert fingerprint_samples(_splits(moved)[0], moved) == a
    assert fingerprint_samples(test, root) != a
    assert fingerprint_samples(test, root).files == len(test) + sum(s.mask_path is not None for s in test)


def test_every_change_of_a_split_changes_its_fingerprint(root):
    train, test = _splits(root)
    base_train, base_test = fingerprint_samples(train, root).digest, fingerprint_samples(test, root).digest

    one = Path(train[1].path)
    data = bytearray(one.read_bytes())
    data[-20] ^= 0xFF  # same size, one byte differs
    one.write_bytes(bytes(data))
    assert fingerprint_samples(train, root).digest != base_train
    one.write_bytes(bytes(data[:-20]) + bytes(data[-20:]))

    assert fingerprint_samples(train[:-1], root).digest != base_train  # an image removed
    assert fingerprint_samples(list(reversed(train)), root).digest != base_train  # the order training sees
    renamed = [Sample(str(root / "bottle/train/good/zzz.png"), None, 0, "good", "bottle") if i == 0 else s
               for i, s in enumerate(train)]
    os.rename(train[0].path, renamed[0].path)
    assert fingerprint_samples(renamed, root).digest != base_train

    relabelled = [Sample(s.path, s.mask_path, s.label, "other" if s.label else s.defect_type, s.category)
                  for s in test]
    assert fingerprint_samples(relabelled, root).digest != base_test
    mask = Path(next(s.mask_path for s in test if s.mask_path))
    mask.write_bytes(mask.read_bytes() + b"\0")  # a ground-truth mask changed
    assert fingerprint_samples(test, root).digest != base_test


def test_a_rerun_hashes_nothing_and_a_change_hashes_one_file(root):
    train, _ = _splits(root)
    first = HashCache(root)
    fp = fingerprint_samples(train, root, first)
    first.save()
    assert first.hashed == 4 and first.path == root / CACHE_FILE
    again = HashCache(root)
    assert fingerprint_samples(train, root, again) == fp and again.hashed == 0

    changed = Path(train[2].path)
    write_image(changed, 40, 32, seed=99)
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns - HOUR_NS))
    third = HashCache(root)
    assert fingerprint_samples(train, root, third) != fp and third.hashed == 1


def test_a_file_modified_just_now_is_hashed_again_next_time(root):
    """Racy entries: a rewrite within the same timestamp tick would keep size and mtime."""
    train, _ = _splits(root)
    fresh = Path(train[0].path)
    fresh.write_bytes(fresh.read_bytes())  # mtime = now
    cache = HashCache(root)
    fingerprint_samples(train, root, cache)
    cache.save()
    again = HashCache(root)
    fingerprint_samples(train, root, again)
    assert again.hashed == 1  # only the fresh file


def test_cache_merges_with_another_writer_and_survives_garbage(root):
    train, _ = _splits(root)
    a, b = HashCache(root), HashCache(root)
    fingerprint_samples(train[:2], root, a)
    fingerprint_samples(train[2:], root, b)
    a.save()
    b.save()  # merged with a's entries, not replacing them
    c = HashCache(root)
    fingerprint_samples(train, root, c)
    assert c.hashed == 0
    (root / CACHE_FILE).write_text("{not json")
    d = HashCache(root)
    assert fingerprint_samples(train, root, d) == fingerprint_samples(train, root) and d.hashed == 4


def test_read_only_root_uses_the_user_cache_dir(root, tmp_path, monkeypatch):
    monkeypatch.setenv("MRKD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    assert default_cache_path(str(root)).is_relative_to(tmp_path / "cache" / "fingerprints")


def test_a_missing_file_is_named(root):
    train, _ = _splits(root)
    os.remove(train[3].path)
    with pytest.raises(DataError, match=train[3].path.replace("\\", "/").rsplit("/", 1)[-1]):
        fingerprint_samples(train, root)


def test_without_a_root_names_are_relative_to_the_shared_folder(root, tmp_path):
    train, _ = _splits(root)
    other = tmp_path / "copy"
    shutil.copytree(root / "bottle" / "train" / "good", other)
    moved = [Sample(str(other / Path(s.path).name), None, 0, "good", "bottle") for s in train]
    assert fingerprint_samples(moved) == fingerprint_samples(train)
