"""What the flows rely on from the store: atomic writes, manifests, the skip and force rules.

No servers here: a local store, one tiny training (smoke spec narrowed to one category
at 32 px) shared by the module, and one forced retraining.
"""

from __future__ import annotations

import os

import pandas as pd
import pytest

from flows.settings import spec_path
from mrkd_core.checkpoint import CheckpointMode
from mrkd_core.config import MRKDConfig
from mrkd_core.engine import train_evaluate
from mrkd_core.errors import ConfigError, StorageError
from mrkd_core.layout import find_complete, run_dir
from mrkd_core.partitioned import read_metrics, read_scores
from mrkd_core.results import verify_manifest, write_manifest
from mrkd_core.specs import load_spec
from mrkd_core.storage import ArtifactStore, is_temp_name
from tests.datagen import train_smoke_key


# ----------------------------------------------------------------------------- storage
def test_failed_local_write_keeps_the_old_object_and_leaves_no_temp_file(tmp_path, monkeypatch):
    store = ArtifactStore(tmp_path)
    store.write_bytes("runs/r/a.bin", b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(StorageError, match="cannot write 'runs/r/a.bin'"):
        store.write_bytes("runs/r/a.bin", b"new")
    monkeypatch.undo()
    assert store.read_bytes("runs/r/a.bin") == b"old"
    assert sorted(os.listdir(tmp_path / "runs" / "r")) == ["a.bin"]


def test_open_write_commits_only_on_success(tmp_path):
    store = ArtifactStore(tmp_path)
    with pytest.raises(RuntimeError):
        with store.open_write("x/model.pt") as fh:
            fh.write(b"partial")
            raise RuntimeError("crash while serialising")
    assert not store.exists("x/model.pt")
    with store.open_write("x/model.pt") as fh:
        fh.write(b"whole")
    assert store.read_bytes("x/model.pt") == b"whole"


def test_a_write_in_flight_is_invisible_to_listings_and_parquet_readers(tmp_path):
    store = ArtifactStore(tmp_path)
    part = "tables/metrics/dataset=d/run_id=r"
    (tmp_path / part).mkdir(parents=True)
    pd.DataFrame({"category": ["a"], "image_auroc": [0.5]}).to_parquet(tmp_path / part / "a.parquet")
    # What a writer killed between open() and rename() leaves behind.
    leftover = tmp_path / part / ".b.parquet.tmp-1234abcd"
    leftover.write_bytes(b"PAR1 half a footer")
    assert is_temp_name(str(leftover))
    assert store.list(part) == [f"{part}/a.parquet"]
    df = pd.read_parquet(store.uri("tables/metrics"))
    assert list(df["category"]) == ["a"] and set(df["run_id"].astype(str)) == {"r"}


# ----------------------------------------------------------------------------- a trained key
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    store, task, first = train_smoke_key(tmp_path_factory.mktemp("integrity"))
    assert first.status == "trained"
    return store, task


def _copy(store: ArtifactStore, dest) -> ArtifactStore:
    copy = ArtifactStore(dest)
    for rel in store.list("", recursive=True):
        copy.write_bytes(rel, store.read_bytes(rel))
    return copy


def test_manifest_lists_every_object_of_the_run_directory(trained):
    store, task = trained
    d = run_dir(task, "r1")
    manifest = store.read_json(f"{d}/manifest.json")
    objects = {p[len(d) + 1:] for p in store.list(d, recursive=True)}
    assert objects == set(manifest["files"]) | {"manifest.json"}
    assert verify_manifest(store, d) == []


def test_size_only_check_is_cheap_but_the_audit_sees_a_same_size_change(trained, tmp_path):
    store, task = trained
    copy = _copy(store, tmp_path)
    d = run_dir(task, "r1")
    data = bytearray(copy.read_bytes(f"{d}/model.pt"))
    data[-1] ^= 0xFF  # same size, other bytes
    copy.write_bytes(f"{d}/model.pt", bytes(data))
    assert verify_manifest(copy, d, max_hash_bytes=1024) == []  # model.pt is checked by size only
    assert any("model.pt" in p and "differs" in p for p in verify_manifest(copy, d))
    copy.remove(f"{d}/model.pt")
    assert any("model.pt" in p and "missing" in p for p in verify_manifest(copy, d, max_hash_bytes=1024))
    assert find_complete(copy, task) is None


def test_readers_ignore_rows_whose_run_lost_its_manifest(trained, tmp_path):
    store, task = trained
    copy = _copy(store, tmp_path)
    assert len(read_metrics(copy, "r1")) == 1 and len(read_scores(copy, "r1")) == 6
    copy.remove(f"{run_dir(task, 'r1')}/manifest.json")
    assert read_metrics(copy, "r1").empty and read_scores(copy, "r1").empty
    assert find_complete(copy, task) is None


def test_complete_result_under_the_same_hash_with_another_config_is_refused(trained, tmp_path):
    store, task = trained
    copy = _copy(store, tmp_path)
    d = run_dir(task, "r1")
    forged = task.config.replace(flm_ratio=0.5).to_dict()
    copy.write_json(f"{d}/config.json", forged)
    # A consistent manifest, so the directory counts as complete: only the config differs.
    write_manifest(copy, d, [f for f in copy.read_json(f"{d}/manifest.json")["files"]])
    before = {p: copy.read_bytes(p) for p in copy.list(d, recursive=True)}
    with pytest.raises(StorageError, match="hash collision"):
        train_evaluate(task, copy, "r2")
    assert {p: copy.read_bytes(p) for p in copy.list(d, recursive=True)} == before
    assert not copy.exists("runs/r2")


def test_force_retrains_from_scratch_and_a_retry_of_the_forced_run_skips(trained):
    store, task = trained
    shared = f"checkpoints/{task.key}"
    shared_before = {p: store.read_bytes(p) for p in store.list(shared) if p.endswith(".pt")}
    assert shared_before  # the first run left its checkpoint for later extension

    forced = train_evaluate(task, store, "r2-forced", CheckpointMode.FORCED_RUN)
    assert forced.status == "trained" and forced.run_dir == run_dir(task, "r2-forced")
    assert forced.resumed_from_epoch == 0  # not the finished epoch of r1's checkpoint
    assert verify_manifest(store, forced.run_dir) == []
    assert not store.exists(f"{shared}/forced/r2-forced")  # its own checkpoints, removed when done
    assert {p: store.read_bytes(p) for p in store.list(shared) if p.endswith(".pt")} == shared_before

    again = train_evaluate(task, store, "r2-forced", CheckpointMode.FORCED_RUN)
    assert again.status == "skipped" and again.run_dir == run_dir(task, "r2-forced")
    assert find_complete(store, task) == run_dir(task, "r2-forced")  # newest complete run first
    assert set(read_metrics(store)["run_id"]) >= {"r1", "r2-forced"}


# ----------------------------------------------------------------------------- specs from files
@pytest.mark.parametrize("text,fragment", [
    ("name: x\ndatasets: [{name: mvtec}]\nbase: {epoch: 3}\n", "epoch"),
    ("name: x\ndatasets: [{name: mvtec}]\nbase: {image_size: big}\n", "'image_size' must be int"),
    ("name: x\ndatasets: [{name: mvtec, categories: 7}]\n", "datasets[0].categories"),
    ("name: x\ndatasets: [{name: mvtec}]\nvariants: {v: {flm: maybe}}\n", "variant 'v'"),
    ("name: [unclosed\n", "not valid YAML"),
])
def test_a_bad_spec_file_is_a_config_error_naming_the_file_and_key(tmp_path, text, fragment):
    path = tmp_path / "bad-spec.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_spec(str(path))
    assert str(path) in str(err.value) and fragment in str(err.value)


def test_shipped_specs_are_sized_as_documented():
    smoke = load_spec("smoke", spec_path()).configs()["mrkd"]
    assert (smoke.backbone, smoke.teacher_weights, smoke.image_size, smoke.batch_size) == ("resnet18", "none", 64, 4)
    assert 1 <= smoke.epochs <= 2 and len(load_spec("smoke", spec_path()).datasets[0].categories) == 2
    full = load_spec("mvtec-full", spec_path())
    assert full.datasets[0].name == "mvtec" and full.datasets[0].categories is None
    assert full.configs()["mrkd"] == MRKDConfig()  # the paper's defaults, nothing overridden
    demo = load_spec("demo", spec_path())  # the pretrained teacher that needs no download (issue 23)
    assert {(c.backbone, c.teacher_weights) for c in demo.configs().values()} == {("efficientnet_lite0", "imagenet")}
