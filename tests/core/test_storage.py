"""The artifact store's root is always explicit: the library never reads MRKD_STORE."""

from __future__ import annotations

import pytest

from mrkd_core.errors import StorageError
from mrkd_core.storage import ArtifactStore


@pytest.mark.parametrize("root", [None, "", "  "])
def test_a_store_without_a_root_is_an_error_naming_the_fix(root, tmp_path, monkeypatch):
    monkeypatch.setenv("MRKD_STORE", str(tmp_path / "from-env"))  # set, and still not read
    with pytest.raises(StorageError) as err:
        ArtifactStore(root)
    msg = str(err.value)
    assert "\n" not in msg and "no root given" in msg and "MRKD_STORE" in msg and "--output" in msg
    assert not (tmp_path / "from-env").exists()


def test_the_root_passed_is_the_root_used(tmp_path, monkeypatch):
    monkeypatch.setenv("MRKD_STORE", str(tmp_path / "from-env"))
    store = ArtifactStore(tmp_path / "explicit")
    store.write_json("a/b.json", {"x": 1})
    assert (tmp_path / "explicit" / "a" / "b.json").is_file() and not (tmp_path / "from-env").exists()
    again = ArtifactStore.__new__(ArtifactStore)
    again.__init__(*store.__reduce__()[1])  # what a Ray worker rebuilds from the pickle
    assert again.uri() == store.uri()
