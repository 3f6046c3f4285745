"""What is stored stays as it was: a registered version's files never change, a retrain writes its own place.

Through the ``mrkd`` CLI as a user types it (``cli.main``), on the reliability data (ResNet18,
random teacher, 32 px, 1 epoch, 4 training images): the issue's sequence — ``mrkd train …
--run-id v1 --register line``, then half of the training images replaced and the same
command again (issue 25 items 1 and 4), then again with ``--no-resume`` — and what the registry
does with a version whose files were changed behind it; then a model trained without
``--register`` that a later ``--register`` run meets (item 3).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import pytest

from mrkd_core.cli import main
from tests.reliability.relkit import CATEGORY, make_data, tree

FAST = ["--backbone", "resnet18", "--teacher-weights", "none", "--image-size", "32", "--epochs", "1",
        "--batch-size", "4", "--num-workers", "0", "--no-progress", "--device", "cpu"]
NAME = "line"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _train(capsys, *argv: str) -> dict:
    capsys.readouterr()
    assert main(["-q", "train", *argv, *FAST]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)["models"][CATEGORY]


def _error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mrkd: error: ") and "Traceback" not in err, err
    return err


def _replace_training_images(data: Path, donor: Path, n: int) -> list[str]:
    """Overwrite the first ``n`` training images with other pictures of the same size; their names."""
    names = sorted(p.name for p in (data / CATEGORY / "train" / "good").iterdir())[:n]
    for name in names:
        shutil.copyfile(donor / CATEGORY / "train" / "good" / name, data / CATEGORY / "train" / "good" / name)
    return names


@pytest.fixture(scope="module")
def donor(tmp_path_factory) -> Path:
    """Other pictures under the same names (another seed), to replace training images with."""
    return make_data(tmp_path_factory.mktemp("donor"), seed=8)


@pytest.fixture(scope="module")
def retrained(data_root, tmp_path_factory):
    """A copy of the data and a store, shared by this module's tests in order (the first fills the store)."""
    base = tmp_path_factory.mktemp("retrain")
    data, store = base / "data", base / "store"
    shutil.copytree(data_root, data)
    return {"data": data, "store": store, "base": base}


def test_retraining_after_the_images_changed_trains_a_new_model_and_never_rewrites_the_old(retrained, donor,
                                                                                         capsys, caplog):
    data, store = retrained["data"], retrained["store"]
    command = [str(data), "-o", str(store), "-c", CATEGORY, "--run-id", "v1", "--register", NAME]
    first = _train(capsys, *command)
    assert first["status"] == "trained" and first["run_id"] == "v1"
    assert first["registry"]["version"] == 1 and first["registry"]["decision"] == "first"
    v1 = Path(first["run_dir"])
    v1_files = tree(v1)

    # Item 4: "my good parts changed, train again" — the same command.
    replaced = _replace_training_images(data, donor, 2)
    with caplog.at_level(logging.WARNING):
        second = _train(capsys, *command)
    assert second["status"] == "trained" and second["run_id"] == "v1.2", second
    v2 = Path(second["run_dir"])
    assert v2 == store / "runs" / "v1.2" / v1.relative_to(store / "runs" / "v1")
    assert tree(v1) == v1_files  # the registered model's run directory is as it was
    changes = second["replaces"]["changes"]
    assert second["replaces"]["run_dir"] == str(v1.relative_to(store)) and changes["before"] == 4
    assert changes["modified"] == [f"{CATEGORY}/train/good/{n}" for n in replaced], changes
    assert changes["added"] == changes["removed"] == []
    said = caplog.text
    assert "was trained on other images: since then 2 of 4 training images modified" in said, said
    assert f"{CATEGORY}/train/good/{replaced[0]}" in said and "stored as run v1.2" in said, said
    # A new model of the new images, trained from scratch: the old one was not reused or continued.
    info = json.loads((v2 / "train.json").read_text())
    assert info["resumed_from_epoch"] == 0 and info["train_fingerprint"] != json.loads(
        (v1 / "train.json").read_text())["train_fingerprint"]
    assert {f[0] for f in info["train_files"]} == {f"{CATEGORY}/train/good/{p.name}"
                                                    for p in (data / CATEGORY / "train" / "good").iterdir()}
    assert second["registry"]["version"] == 2
    v2_files = tree(v2)

    # Item 1 as the issue found it: more images replaced, the same command with --no-resume.
    _replace_training_images(data, donor, 4)
    third = _train(capsys, *command, "--no-resume")
    assert third["status"] == "trained" and third["run_id"] == "v1.3" and third["registry"]["version"] == 3
    assert tree(v1) == v1_files and tree(v2) == v2_files
    assert Path(third["model"]).read_bytes() != (v1 / "model.pt").read_bytes()

    # Every version still serves the weights it was registered with.
    reference = f"{store}/models/{NAME}/folder/{CATEGORY}"
    for version, run in ((1, "v1"), (2, "v1.2"), (3, "v1.3")):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="mrkd_core.registry.reference"):
            assert main(["-q", "predict", f"{reference}@{version}", str(data / CATEGORY / "test"), "-o",
                         str(retrained["base"] / f"pred-{version}"), "--device", "cpu"]) == 0
        assert f"/runs/{run}/folder/{CATEGORY}/" in caplog.text, caplog.text
    retrained["v1"], retrained["v2"], retrained["v3"] = v1, v2, Path(third["run_dir"])


def test_a_version_whose_files_changed_is_never_served_promoted_or_rolled_back_to(retrained, capsys):
    store, data = retrained["store"], retrained["data"]
    if "v1" not in retrained:
        pytest.skip("needs the retraining test's store")
    reference = f"{store}/models/{NAME}/folder/{CATEGORY}"
    for version in (1, 3):  # champion v3, the one before it v1: what a rollback returns to
        capsys.readouterr()
        assert main(["-q", "models", "promote", f"{reference}@{version}"]) == 0
    v1_model = retrained["v1"] / "model.pt"
    registered = _sha(v1_model)
    v1_model.write_bytes(retrained["v2"].joinpath("model.pt").read_bytes())  # what the old bug did to v1
    index = store / "models" / NAME / "folder" / CATEGORY / "model.json"
    before = index.read_bytes()

    for argv in (["predict", f"{reference}@1", str(data / CATEGORY / "test"), "-o", str(retrained["base"] / "p")],
                 ["models", "info", f"{reference}@1"],
                 ["models", "promote", f"{reference}@1"],
                 ["models", "rollback", reference]):
        err = _error(capsys, argv)
        assert str(v1_model) in err and f"differs from the {registered[:12]}… version 1 of {NAME}" in err, err
        assert "restore it" in err, err
    assert index.read_bytes() == before  # nothing promoted, nothing rolled back
    assert not (retrained["base"] / "p").exists()  # nothing served
    assert main(["-q", "predict", f"{reference}@champion", str(data / CATEGORY / "test"), "-o",
                 str(retrained["base"] / "p3"), "--device", "cpu"]) == 0  # v3 is intact


def test_a_model_trained_without_register_is_registered_only_by_training_it_again(retrained, capsys, caplog):
    store, data = retrained["store"], retrained["data"]
    command = [str(data), "-o", str(store), "-c", CATEGORY, "--seed", "5"]
    quick = _train(capsys, *command, "--run-id", "quick")  # an experiment: not registered
    assert quick["status"] == "trained" and "registry" not in quick
    index = store / "models" / NAME / "folder" / CATEGORY / "model.json"
    versions = json.loads(index.read_text())["versions"]

    with caplog.at_level(logging.WARNING):
        met = _train(capsys, *command, "--run-id", "later", "--register", NAME)
    assert met["status"] == "skipped" and met["run_dir"] == quick["run_dir"]
    assert met["registry"]["decision"] == "not-registered" and met["registry"]["version"] is None
    assert "--no-resume --register NAME" in met["registry"]["reason"] and "not registered" in caplog.text
    assert json.loads(index.read_text())["versions"] == versions  # the registry is as it was

    asked = _train(capsys, *command, "--run-id", "asked", "--register", NAME, "--no-resume")
    assert asked["status"] == "trained" and asked["run_dir"] != quick["run_dir"]
    assert asked["registry"]["version"] == len(versions) + 1
    assert [v["run_id"] for v in json.loads(index.read_text())["versions"]][-1] == "asked"
