"""The engine: stored outputs, manifests, skipping complete work, hash collisions."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from mrkd_core.checkpoint import CheckpointMode
from mrkd_core.data import get_dataset
from mrkd_core.engine import train_evaluate
from mrkd_core.errors import StorageError
from mrkd_core.layout import find_complete, run_dir, task_inputs
from mrkd_core.partitioned import read_metrics, read_scores
from mrkd_core.results import METRICS_SCHEMA, read_maps, verify_manifest
from mrkd_core.revision import EVALUATION_REVISION, TRAINING_REVISION
from mrkd_core.storage import ArtifactStore
from tests.datagen import train_smoke_key, write_image
from tests.tiny import EpochRecorder


def _copied(store: ArtifactStore, folder, *prefixes: str) -> ArtifactStore:
    """A store in ``folder`` holding a copy of everything under ``prefixes`` (none = all)."""
    copy = ArtifactStore(folder)
    for prefix in prefixes or ("",):
        for rel in store.list(prefix, recursive=True):
            copy.write_bytes(rel, store.read_bytes(rel))
    return copy


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return train_smoke_key(tmp_path_factory.mktemp("engine"))


def test_outputs_and_manifest(setup):
    store, task, first = setup
    assert first.status == "trained"
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
    rid = "0002 essai-été"  # any text naming a folder; its partition reads back as written
    again = train_evaluate(task, store, rid)
    assert again.status == "skipped" and again.run_dir == run_dir(task, "r1")
    assert len(read_metrics(store, rid)) == 1 and len(read_scores(store, rid)) == 6
    assert set(read_metrics(store)["run_id"]) == {"r1", rid}
    assert store.exists("tables/metrics/folder/0002%20essai-%C3%A9t%C3%A9")


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


@pytest.mark.parametrize("field,current", [("training_revision", TRAINING_REVISION),
                                           ("evaluation_revision", EVALUATION_REVISION)])
def test_result_of_an_older_revision_is_not_reused(setup, tmp_path, caplog, field, current):
    """A complete run written before revision 2 (no revision in its manifest) stays, unused.

    Training revision: the same config trains differently now; evaluation revision: the
    same weights score differently now (test-time masks fixed per model since revision 2).
    """
    store, task, _ = setup
    d = run_dir(task, "r1")
    copy = _copied(store, tmp_path, d)
    assert find_complete(copy, task) == d
    manifest = copy.read_json(f"{d}/manifest.json")
    assert manifest[field] == current
    del manifest[field]
    copy.write_json(f"{d}/manifest.json", manifest)
    with caplog.at_level("INFO"):
        assert find_complete(copy, task) is None
    assert f"{field.split('_')[0]} revision 1" in caplog.text
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
        train_evaluate(task, store, "r3", CheckpointMode.FORCED_RUN)
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


def test_the_stored_model_is_calibrated_and_the_scores_carry_verdicts(setup):
    from mrkd_core.model_io import load_model_file

    store, task, _ = setup
    d = run_dir(task, "r1")
    cal = load_model_file(store, f"{d}/model.pt", build=False).calibration
    assert cal["policy"] == "f1" and cal["on_evaluation_images"] and cal["source"] == "test split"
    s = read_scores(store, "r1")
    assert set(s["verdict"]) <= {"good", "defective"} and s["normalized_score"].between(0, 1).all()
    assert ((s["score"] > cal["image_threshold"]) == (s["verdict"] == "defective")).all()
    assert (s["threshold"] == cal["image_threshold"]).all() and s["on_evaluation_images"].eq(True).all()


def test_the_report_says_when_thresholds_were_chosen_on_the_test_split(setup):
    """What the flows' report task does (read the run's tables, write the report): the
    engine calibrated on the test split (no held-out images), and the report says so."""
    from mrkd_core.report import write_report

    store, task, _ = setup
    write_report(store, "r1", read_metrics(store, "r1"), read_scores(store, "r1"))
    md = store.read_bytes("reports/r1/measured.md").decode()
    assert f"- Verdicts of {task.dataset}/{task.category} ({task.variant}) " in md
    assert "chosen on the test split these metrics are measured on" in md


def test_scores_rows_stored_before_the_verdict_columns_stay_readable(setup, tmp_path):
    """A partition file of an older run, without normalized_score/verdict, reads with nulls there."""
    import pyarrow.parquet as pq

    store, task, _ = setup
    copy = _copied(store, tmp_path)
    for f in copy.list("tables/scores", recursive=True):
        if f.endswith(".parquet"):
            table = pq.read_table(copy.uri(f)).drop_columns(["normalized_score", "verdict"])
            pq.write_table(table, copy.uri(f))
    s = read_scores(copy)
    assert len(s) and s["verdict"].isna().all() and s["normalized_score"].isna().all()
    assert s["score"].notna().all()


# ----------------------------------------------------------------------------- inputs in every key
def _copy_store(store: ArtifactStore, dest) -> ArtifactStore:
    return _copied(store, dest, "runs/r1", "checkpoints")


def _checkpoint(store: ArtifactStore, task) -> dict:
    ckpt = store.sub(f"checkpoints/{task.key}")
    (name,) = [p for p in ckpt.list("") if p.endswith(".pt")]
    return torch.load(io.BytesIO(ckpt.read_bytes(name)), weights_only=True)


def test_inputs_are_recorded_with_model_checkpoint_manifest_and_metrics(setup):
    store, task, _ = setup
    lineage = task_inputs(task).lineage
    d = run_dir(task, "r1")
    manifest = store.read_json(f"{d}/manifest.json")
    assert manifest["train_fingerprint"] == lineage.train_fingerprint and len(lineage.train_fingerprint) == 64
    assert manifest["test_fingerprint"] == lineage.test_fingerprint != lineage.train_fingerprint
    assert manifest["config_hash"] == task.config.config_hash() and manifest["training_revision"] == TRAINING_REVISION
    row = read_metrics(store, "r1").iloc[0]
    assert (row["train_fingerprint"], row["test_fingerprint"], row["training_revision"]) == (
        lineage.train_fingerprint, lineage.test_fingerprint, TRAINING_REVISION)
    model = torch.load(io.BytesIO(store.read_bytes(f"{d}/model.pt")), weights_only=True)
    assert model["extra"]["train_fingerprint"] == lineage.train_fingerprint
    assert _checkpoint(store, task)["train_fingerprint"] == lineage.train_fingerprint


def test_a_changed_training_image_retrains_the_key_from_scratch(setup, tmp_path, caplog):
    """Same config, same revision, one training image changed: neither the complete result
    nor the key's checkpoint (trained on the old images) is reused."""
    store, task, _ = setup
    copy = _copy_store(store, tmp_path / "store")
    moved = dataclasses.replace(task, data_root=str(tmp_path / "data"))
    shutil.copytree(task.data_root, moved.data_root)
    assert find_complete(copy, moved) == run_dir(task, "r1")  # the same images elsewhere: same inputs

    image = Path(get_dataset(task.dataset).train_samples(moved.data_root, task.category)[2].path)
    write_image(image, 64, 64, seed=1234)
    with caplog.at_level("INFO"):
        assert find_complete(copy, moved) is None
    assert "trained on other data" in caplog.text

    again = train_evaluate(moved, copy, "r-new-data")
    assert again.status == "trained" and again.resumed_from_epoch == 0  # not r1's finished checkpoint
    assert "training starts from scratch" in caplog.text
    new_fp = task_inputs(moved).lineage.train_fingerprint
    assert _checkpoint(copy, moved)["train_fingerprint"] == new_fp
    assert copy.read_json(f"{again.run_dir}/manifest.json")["train_fingerprint"] == new_fp
    assert verify_manifest(copy, run_dir(task, "r1")) == []  # the old result stays, as history
    assert train_evaluate(moved, copy, "r-unchanged").status == "skipped"  # unchanged: nothing trains
    fps = read_metrics(copy).set_index("run_id")["train_fingerprint"]
    assert fps["r-new-data"] == fps["r-unchanged"] == new_fp


def test_a_result_evaluated_on_other_test_data_is_not_reused(setup, tmp_path, caplog):
    store, task, _ = setup
    copy = _copy_store(store, tmp_path / "store")
    moved = dataclasses.replace(task, data_root=str(tmp_path / "data"))
    shutil.copytree(task.data_root, moved.data_root)
    test_image = Path(get_dataset(task.dataset).test_samples(moved.data_root, task.category)[0].path)
    test_image.unlink()
    with caplog.at_level("INFO"):
        assert find_complete(copy, moved) is None
    assert "evaluated on other test data" in caplog.text


def test_a_result_without_recorded_fingerprints_is_not_reused(setup, tmp_path, caplog):
    """What a store written before fingerprints holds: kept, never taken for today's data."""
    store, task, _ = setup
    copy = _copy_store(store, tmp_path / "store")
    d = run_dir(task, "r1")
    manifest = copy.read_json(f"{d}/manifest.json")
    for key in ("train_fingerprint", "test_fingerprint", "config_hash"):
        del manifest[key]
    copy.write_json(f"{d}/manifest.json", manifest)
    with caplog.at_level("INFO"):
        assert find_complete(copy, task) is None
    assert "trained on unrecorded data" in caplog.text


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

    progress = EpochRecorder()
    first = train_evaluate(task, store, "r1", evaluate=False, reporters=[progress])
    assert first.status == "trained" and not first.evaluated and first.rows == ()
    assert [(p.epoch, p.epochs) for p in progress] == [(1, 1)]
    assert set(store.read_json(f"{first.run_dir}/manifest.json")["files"]) == {"model.pt", "config.json",
                                                                                  "train.json"}
    assert train_evaluate(task, store, "r2", evaluate=False).status == "skipped"
    assert find_complete(store, task) is None  # not a result for callers that need metrics

    for part in ("test", "ground_truth"):
        shutil.copytree(tmp_path / "full" / "obj_disc" / part, tmp_path / "data" / "obj_disc" / part)
    again = train_evaluate(task, store, "r3")
    assert again.status == "trained" and again.evaluated and again.resumed_from_epoch == 1
    assert again.rows and 0.0 <= again.rows[0]["image_auroc"] <= 1.0
    assert [m.run_id for m in find_models(store, "folder", "obj_disc")] == ["r3"]  # newest of the key


def test_recalibrating_a_stored_model_writes_a_new_file_and_never_changes_the_run(setup, tmp_path):
    """A run directory's model.pt is never rewritten: the recalibrated model is a new file."""
    from mrkd_core.errors import StorageError
    from mrkd_core.model_io import load_model_file, write_calibration

    store, task, _ = setup
    d = run_dir(task, "r1")
    copy = _copied(store, tmp_path, d)
    before = copy.read_bytes(f"{d}/model.pt")
    cal = load_model_file(copy, f"{d}/model.pt", build=False).calibration
    with pytest.raises(StorageError, match="part of a complete run directory"):
        write_calibration(copy.uri(f"{d}/model.pt"), {**cal, "image_threshold": 9.0}, copy.uri(f"{d}/model.pt"))
    out = write_calibration(copy.uri(f"{d}/model.pt"), {**cal, "image_threshold": 9.0}, str(tmp_path / "line.pt"))
    assert copy.read_bytes(f"{d}/model.pt") == before and verify_manifest(copy, d) == []
    again = load_model_file(out, build=False)
    assert again.calibration["image_threshold"] == 9.0 and again.calibration_history == [cal]
    assert again.extra["calibrated_from"] == copy.uri(f"{d}/model.pt")


def test_the_training_fingerprint_covers_the_images_trained_on_after_the_hold_out(setup, tmp_path):
    """validation_fraction holds train/good images out for calibration: the key's training
    fingerprint (manifest, model, checkpoint, metrics row) is that of the images trained on,
    and a rerun with the same inputs reuses the result."""
    from mrkd_core.data.fingerprint import fingerprint_samples
    from mrkd_core.data.selection import holdout_split

    _, task, _ = setup
    held_task = dataclasses.replace(task, config=task.config.replace(validation_fraction=0.5))
    inputs = task_inputs(held_task)
    lineage, trained, held = inputs.lineage, list(inputs.samples.trained), list(inputs.samples.held_out)
    train_samples = get_dataset(task.dataset).train_samples(task.data_root, task.category)
    assert (trained, held) == holdout_split(train_samples, 0.5, held_task.config.seed)  # the seeded hold-out
    assert held and len(trained) + len(held) == len(train_samples)
    assert lineage.train_fingerprint == fingerprint_samples(trained, task.data_root).digest
    assert lineage.train_fingerprint != task_inputs(task).lineage.train_fingerprint  # all of train/good

    store = ArtifactStore(tmp_path / "store")
    result = train_evaluate(held_task, store, "r-held")
    assert result.status == "trained" and "held-out train/good" in result.calibration
    d = result.run_dir
    assert store.read_json(f"{d}/manifest.json")["train_fingerprint"] == lineage.train_fingerprint
    assert store.read_json(f"{d}/train.json")["n_train"] == len(trained)
    model = torch.load(io.BytesIO(store.read_bytes(f"{d}/model.pt")), weights_only=True)
    assert model["extra"]["train_fingerprint"] == lineage.train_fingerprint
    assert _checkpoint(store, held_task)["train_fingerprint"] == lineage.train_fingerprint
    assert read_metrics(store, "r-held").iloc[0]["train_fingerprint"] == lineage.train_fingerprint
    assert train_evaluate(held_task, store, "r-again").status == "skipped"
    # thresholds from held-out images: the scores say so, and the report has nothing to flag
    assert not read_scores(store, "r-held")["on_evaluation_images"].eq(True).any()
    from mrkd_core.report import threshold_note

    assert threshold_note(read_scores(store, "r-held")) is None
