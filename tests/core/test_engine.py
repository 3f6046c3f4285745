"""The engine: stored outputs, manifests, skipping complete work, hash collisions."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mrkd_core.engine import train_evaluate
from mrkd_core.errors import StorageError
from mrkd_core.layout import find_complete, read_maps, run_dir
from mrkd_core.results import METRICS_SCHEMA, read_metrics, read_scores, verify_manifest
from mrkd_core.revision import TRAINING_REVISION
from mrkd_core.storage import ArtifactStore
from tests.datagen import train_smoke_key


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return train_smoke_key(tmp_path_factory.mktemp("engine"))


def test_outputs_and_manifest(setup):
    store, task, first = setup
    assert first["status"] == "trained"
    d = run_dir(task, "r1")
    manifest = store.read_json(f"{d}/manifest.json")
    assert set(manifest["files"]) == {"model.pt", "metrics.parquet", "scores.parquet", "maps.npz",
                                      "config.json", "train.json"}
    assert verify_manifest(store, d) == []
    assert json.loads(store.read_bytes(f"{d}/config.json"))["image_size"] == 32
    m = read_metrics(store, "r1")
    assert list(m.columns) == METRICS_SCHEMA.names and len(m) == 1
    row = m.iloc[0]
    assert row["teacher_weights"] == "none" and bool(row["narrowed"]) and row["cfg_backbone"] == "resnet18"
    assert 0 <= row["image_auroc"] <= 1 and row["n_test"] == 6
    s = read_scores(store, "r1")
    assert len(s) == 6 and set(s["label"]) == {0, 1}
    triples = read_maps(store, d)
    assert triples and triples[0][0].shape == (32, 32, 3) and triples[0][2].shape == (32, 32)


def test_second_run_skips_and_reports(setup):
    store, task, _ = setup
    again = train_evaluate(task, store, "r2")
    assert again["status"] == "skipped" and again["run_dir"] == run_dir(task, "r1")
    assert len(read_metrics(store, "r2")) == 1
    assert set(read_metrics(store)["run_id"]) == {"r1", "r2"}


def test_manifest_detects_missing_and_changed_objects(setup, tmp_path):
    store, task, _ = setup
    d = run_dir(task, "r1")
    copy = ArtifactStore(tmp_path)
    for rel in store.list(d):
        copy.write_bytes(rel, store.read_bytes(rel))
    assert verify_manifest(copy, d) == []
    copy.write_bytes(f"{d}/scores.parquet", b"tampered")
    copy.remove(f"{d}/maps.npz")
    problems = verify_manifest(copy, d)
    assert any("scores.parquet" in p and "differs" in p for p in problems)
    assert any("maps.npz" in p and "missing" in p for p in problems)
    assert find_complete(copy, task) is None  # readers ignore it


def test_result_of_an_older_training_revision_is_not_reused(setup, tmp_path, caplog):
    """A complete run written before revision 2 (no revision in its manifest) stays, unused."""
    store, task, _ = setup
    d = run_dir(task, "r1")
    copy = ArtifactStore(tmp_path)
    for rel in store.list(d):
        copy.write_bytes(rel, store.read_bytes(rel))
    assert find_complete(copy, task) == d
    manifest = copy.read_json(f"{d}/manifest.json")
    assert manifest["training_revision"] == TRAINING_REVISION
    del manifest["training_revision"]
    copy.write_json(f"{d}/manifest.json", manifest)
    with caplog.at_level("INFO"):
        assert find_complete(copy, task) is None
    assert "training revision 1" in caplog.text
    assert verify_manifest(copy, d) == []  # kept intact as history


def test_run_without_manifest_is_ignored(setup):
    store, task, _ = setup
    d = run_dir(task, "r0-crashed")
    store.write_json(f"{d}/config.json", task.config.to_dict())
    assert find_complete(store, task) == run_dir(task, "r1")


def test_hash_collision_is_refused_and_nothing_overwritten(setup):
    store, task, _ = setup
    d = run_dir(task, "r3")
    forged = task.config.replace(flm_ratio=0.5).to_dict()
    store.write_json(f"{d}/config.json", forged)
    with pytest.raises(StorageError, match="hash collision"):
        train_evaluate(task, store, "r3", force=True)
    assert store.read_json(f"{d}/config.json") == forged


def test_tables_read_with_pandas_and_duckdb(setup):
    store, _, _ = setup
    df = pd.read_parquet(store.uri("tables/metrics"))
    assert {"run_id", "dataset", "image_auroc"} <= set(df.columns) and len(df) >= 1
    duckdb = pytest.importorskip("duckdb")
    n = duckdb.sql(
        f"select count(*) from read_parquet('{store.uri('tables/metrics')}/*/*/*.parquet', hive_partitioning=true)"
    ).fetchall()[0][0]
    assert n == len(df)


def test_without_a_test_split_a_model_is_stored_unevaluated_then_evaluated_when_asked(tmp_path):
    """`mrkd train --no-evaluate`: a folder of good parts only. The stored run satisfies later calls that do
    not evaluate; an evaluating call (the flows, plain `mrkd train`) resumes from the key's checkpoints
    (no epoch retrained) and evaluates into its own run."""
    import shutil

    from mrkd_core.config import MRKDConfig
    from mrkd_core.data.synthetic import make_synthetic_mvtec
    from mrkd_core.errors import DataError
    from mrkd_core.layout import find_models
    from mrkd_core.specs import Task

    make_synthetic_mvtec(tmp_path / "full", categories=("obj_disc",), n_train=4, n_test_good=2, n_test_defect=2,
                         size=32, seed=1)
    shutil.copytree(tmp_path / "full" / "obj_disc" / "train", tmp_path / "data" / "obj_disc" / "train")
    cfg = MRKDConfig(backbone="resnet18", teacher_weights="none", image_size=32, epochs=1, batch_size=4,
                     num_workers=0, progress=False, device="cpu")
    task = Task("folder", "obj_disc", "mrkd", cfg, str(tmp_path / "data"))
    store = ArtifactStore(tmp_path / "store")
    with pytest.raises(DataError, match="test folder not found"):
        train_evaluate(task, store, "r0")
    assert not store.exists("runs") and not store.exists("checkpoints")  # failed before training: nothing stored

    progress = []
    first = train_evaluate(task, store, "r1", evaluate=False, on_epoch=progress.append)
    assert first["status"] == "trained" and not first["evaluated"] and first["rows"] == []
    assert [(p.epoch, p.epochs) for p in progress] == [(1, 1)]
    assert set(store.read_json(f"{first['run_dir']}/manifest.json")["files"]) == {"model.pt", "config.json",
                                                                                  "train.json"}
    assert train_evaluate(task, store, "r2", evaluate=False)["status"] == "skipped"
    assert find_complete(store, task) is None  # not a result for callers that need metrics

    for part in ("test", "ground_truth"):
        shutil.copytree(tmp_path / "full" / "obj_disc" / part, tmp_path / "data" / "obj_disc" / part)
    again = train_evaluate(task, store, "r3")
    assert again["status"] == "trained" and again["evaluated"] and again["resumed_from_epoch"] == 1
    assert again["rows"] and 0.0 <= again["rows"][0]["image_auroc"] <= 1.0
    assert [m.run_id for m in find_models(store, "folder", "obj_disc")] == ["r3"]  # newest of the key
