"""The model registry: versions, the promotion rule, re-evaluating the champion, promote/rollback,
references, the promotions and history tables, ``mrkd models list``.

Most tests register stand-in results (a run directory with a manifest and a small
``model.pt``) so that they run in milliseconds; the re-evaluation and the engine tests use
a real ResNet18 model at 32 px.
"""

from __future__ import annotations

import io
import json
import os
import threading

import pandas as pd
import pytest
import torch

from mrkd_core.cli import main
from mrkd_core.config import MRKDConfig
from mrkd_core.errors import ConfigError, MRKDError
from mrkd_core.inspections import read_inspections
from mrkd_core.layout import run_dir
from mrkd_core.lineage import Lineage
from mrkd_core.model_io import MODEL_FORMAT
from mrkd_core.registry import promotion
from mrkd_core.registry.promotion import PromotionPolicy, compare, promote_version, rollback
from mrkd_core.registry.records import EntryKey, check_model_name, read_index, read_version
from mrkd_core.registry.reference import parse_reference, resolve_model_location
from mrkd_core.registry.tables import read_history, read_promotions
from mrkd_core.registry.tracking import RegistryOptions, track
from mrkd_core.results import ABSENT_COLUMN, METRIC_COLUMNS, write_manifest
from mrkd_core.specs import Task
from mrkd_core.storage import ArtifactStore

CFG = MRKDConfig(backbone="resnet18", teacher_weights="none", image_size=32, epochs=1, batch_size=4, num_workers=0,
                 progress=False, device="cpu")
OPTIONS = RegistryOptions()  # {spec}-{variant}, image and pixel AU-ROC at 0.5 points


def _file(calibration: dict | None = None) -> bytes:
    """A stand-in model file: what the registry reads of it is the stored record."""
    buf = io.BytesIO()
    torch.save({"format": MODEL_FORMAT, "extra": {}, **({"calibration": calibration} if calibration else {})}, buf)
    return buf.getvalue()


def _task(epochs: int = 1, category: str = "obj_disc", data_root: str = "/data") -> Task:
    return Task("folder", category, "mrkd", CFG.replace(epochs=epochs), data_root, spec="nightly")


def _result(store: ArtifactStore, task: Task, run_id: str, test_fp: str = "T1", absent: str | None = None,
            model: bytes | None = None, **metrics: float | None):
    """A complete run directory of ``task`` with the given metrics: (run dir, metrics row, lineage)."""
    d = run_dir(task, run_id)
    store.write_bytes(f"{d}/model.pt", model if model is not None else _file())
    lineage = Lineage(task.config.config_hash(), "f" * 64, test_fp)
    write_manifest(store, d, ["model.pt"], extra={"key": task.key, "run_id": run_id, "variant": task.variant,
                                                  **lineage.record()})
    row = {**dict.fromkeys(METRIC_COLUMNS), **metrics, ABSENT_COLUMN: absent, "mrkd_version": "0.1.0",
           "git_revision": "abc"}
    return d, row, lineage


def _track(store, task, run_id, samples=(), options=OPTIONS, status="trained", **kw):
    d, row, lineage = _result(store, task, run_id, **kw)
    return track(store, task, run_id, d, row, lineage, list(samples), options, status)


KEY = EntryKey("nightly-mrkd", "folder", "obj_disc")


@pytest.fixture(autouse=True)
def _quick_claims(request, monkeypatch):
    """A local store needs no settling time after writing a claim; the concurrency test keeps the real one."""
    from mrkd_core import claims

    if "concurrent" not in request.node.name:
        monkeypatch.setattr(claims, "SETTLE_S", 0.02)
    monkeypatch.setenv(claims.ENV_STALE, "4")  # waiters poll every second


# --------------------------------------------------------------------------- versions and the rule
def test_versions_are_numbered_and_a_result_is_registered_once(tmp_path):
    store = ArtifactStore(tmp_path)
    cal = {"image_threshold": 0.42, "policy": "f1"}
    first = _track(store, _task(1), "night-1", image_auroc=0.9, pixel_auroc=0.8, model=_file(cal))
    assert (first["version"], first["decision"], first["champion"]) == (1, "first", 1)
    assert first["model"] == "nightly-mrkd/folder/obj_disc" and not first["regressed"]
    second = _track(store, _task(2), "night-2", image_auroc=0.9, pixel_auroc=0.8)
    assert (second["version"], second["decision"], second["champion"]) == (2, "promoted", 2)

    record = read_version(store, KEY, 1)
    assert record["calibration"] == cal and read_version(store, KEY, 2)["calibration"] is None
    assert record["run_id"] == "night-1" and record["model"] == f"{run_dir(_task(1), 'night-1')}/model.pt"
    assert record["config_hash"] == _task(1).config.config_hash() and record["train_fingerprint"] == "f" * 64
    assert record["test_fingerprint"] == "T1" and record["training_revision"] >= 3
    assert record["code_version"] == {"mrkd_version": "0.1.0", "git_revision": "abc"} and record["registered_at"]

    # The same run directory again (a skipped key, a retried task): no new version, no decision.
    d = run_dir(_task(1), "night-1")
    again = track(store, _task(1), "night-3", d, {**dict.fromkeys(METRIC_COLUMNS), "image_auroc": 0.9,
                                                  "pixel_auroc": 0.8}, Lineage(_task(1).config.config_hash(),
                                                                               "f" * 64, "T1"), [], OPTIONS,
                  "skipped")
    assert (again["version"], again["decision"], again["champion"]) == (1, "unchanged", 2)
    assert [v["version"] for v in read_index(store, KEY).versions] == [1, 2]
    assert len(read_promotions(store)) == 2
    history = read_history(store)
    assert list(history["run_id"]) == ["night-1", "night-2", "night-3"]
    assert list(history["status"]) == ["trained", "trained", "skipped"]
    assert list(history["version"]) == [1, 2, 1] and list(history["champion_version"]) == [1, 2, 2]


def test_history_and_decisions_are_appended_never_rewritten(tmp_path):
    """A re-run of a night (same run id) adds its own history row; the first run's rows stay as written."""
    store = ArtifactStore(tmp_path)
    first = _track(store, _task(1), "night-1", image_auroc=0.9, pixel_auroc=0.8)
    files = {p: store.read_bytes(p) for p in store.list("tables", recursive=True)}
    d, row, lineage = _result(store, _task(1), "night-1", image_auroc=0.9, pixel_auroc=0.8)
    rerun = track(store, _task(1), "night-1", d, row, lineage, [], OPTIONS, "skipped")
    assert (first["decision"], rerun["decision"], rerun["version"]) == ("first", "first", 1)  # its own decision
    assert {p: store.read_bytes(p) for p in files} == files  # nothing written before changed
    history = read_history(store)
    assert list(history["status"]) == ["trained", "skipped"] and set(history["run_id"]) == {"night-1"}
    assert len(read_promotions(store)) == 1  # one decision about version 1
    # A person's decisions are appended too, however quickly they follow each other.
    _track(store, _task(2), "night-2", image_auroc=0.9, pixel_auroc=0.8)
    for version in (1, 2, 1):
        promote_version(store, KEY, version, by="qa@line")
    assert list(read_promotions(store)["decision"]) == ["first", "promoted", "promote", "promote", "promote"]


def test_a_result_of_a_run_that_did_not_register_is_never_registered_later(tmp_path):
    store = ArtifactStore(tmp_path)
    _track(store, _task(1), "night-1", image_auroc=0.9, pixel_auroc=0.8)
    d, row, lineage = _result(store, _task(2), "quick", image_auroc=1.0, pixel_auroc=1.0)
    manifest = store.read_json(f"{d}/manifest.json")
    store.write_json(f"{d}/manifest.json", {**manifest, "registering_run": False})  # as the engine records it
    met = track(store, _task(2), "night-2", d, row, lineage, [], OPTIONS, "skipped")
    assert (met["decision"], met["version"], met["champion"]) == ("not-registered", None, 1)
    assert "trained by run quick, which did not register" in met["reason"] and "--register NAME" in met["reason"]
    assert [v["version"] for v in read_index(store, KEY).versions] == [1] and len(read_promotions(store)) == 1
    last = read_history(store).iloc[-1]
    assert last["decision"] == "not-registered" and pd.isna(last["version"]) and last["run_dir"] == d


def test_a_version_whose_files_changed_is_refused_with_one_line(tmp_path):
    from mrkd_core.errors import StorageError

    store = ArtifactStore(tmp_path)
    _track(store, _task(1), "n1", image_auroc=0.9, pixel_auroc=0.8)
    _track(store, _task(2), "n2", image_auroc=0.9, pixel_auroc=0.8)
    record = read_version(store, KEY, 1)
    assert set(record["files"]) == {"model.pt"} and len(record["files"]["model.pt"]["sha256"]) == 64
    ref = f"{store.root}/models/nightly-mrkd/folder/obj_disc"
    assert resolve_model_location(f"{ref}@1") == store.uri(record["model"])
    store.write_bytes(record["model"], _file({"image_threshold": 1.0}))  # replaced under the version
    for call in (lambda: resolve_model_location(f"{ref}@1"), lambda: promote_version(store, KEY, 1),
                 lambda: rollback(store, KEY)):
        with pytest.raises(StorageError) as err:
            call()
        msg = str(err.value)
        assert "\n" not in msg and store.uri(record["model"]) in msg and "registered with" in msg, msg
    assert read_index(store, KEY).champion == 2
    # A record of before file hashes: its run directory's manifest must still name the data it was registered on.
    store.write_json(KEY.version_path(2), {k: v for k, v in read_version(store, KEY, 2).items() if k != "files"})
    assert resolve_model_location(f"{ref}@2").endswith("model.pt")
    d2 = run_dir(_task(2), "n2")
    store.write_json(f"{d2}/manifest.json", {**store.read_json(f"{d2}/manifest.json"), "train_fingerprint": "0" * 64})
    with pytest.raises(StorageError, match="was rewritten"):
        resolve_model_location(f"{ref}@2")


def test_worse_beyond_tolerance_is_kept_and_flagged_within_is_promoted(tmp_path):
    store = ArtifactStore(tmp_path)
    _track(store, _task(1), "n1", image_auroc=1.0, pixel_auroc=0.80)
    worse = _track(store, _task(2), "n2", image_auroc=1.0, pixel_auroc=0.60)
    assert (worse["decision"], worse["champion"], worse["regressed"]) == ("kept", 1, True)
    assert "pixel_auroc 80.0 → 60.0 (-20.0 points, tolerance 0.5)" in worse["regression"]
    assert "worse than champion v1" in worse["reason"]
    within = _track(store, _task(3), "n3", image_auroc=0.996, pixel_auroc=0.80)  # -0.4 points: not worse
    assert (within["decision"], within["champion"], within["regressed"]) == ("promoted", 3, False)

    rows = read_promotions(store)
    assert list(rows["decision"]) == ["first", "kept", "promoted"]
    kept = rows.iloc[1]
    assert (kept["version"], kept["champion_before"], kept["champion_after"]) == (2, 1, 1)
    assert (kept["candidate_pixel_auroc"], kept["champion_pixel_auroc"]) == (0.6, 0.8)
    assert json.loads(kept["tolerance"]) == {"image_auroc": 0.5, "pixel_auroc": 0.5}
    assert kept["compared"] == "image_auroc,pixel_auroc" and kept["decided_by"] == "auto"
    assert kept["run_id"] == "n2" and "worse than champion v1" in kept["reason"]
    history = read_history(store)
    assert list(history["regressed"]) == [False, True, False]
    assert history.iloc[1]["champion_pixel_auroc"] == 0.8 and history.iloc[1]["pixel_auroc"] == 0.6


def test_a_reused_result_worse_than_the_champion_is_flagged_again(tmp_path):
    store = ArtifactStore(tmp_path)
    _track(store, _task(1), "n1", image_auroc=1.0, pixel_auroc=0.8)
    _track(store, _task(2), "n2", image_auroc=1.0, pixel_auroc=0.5)
    d, row, lineage = _result(store, _task(2), "n2", image_auroc=1.0, pixel_auroc=0.5)
    still = track(store, _task(2), "n3", d, row, lineage, [], OPTIONS, "skipped")
    assert (still["decision"], still["version"], still["champion"], still["regressed"]) == ("unchanged", 2, 1, True)


def test_absent_pixel_metrics_compare_image_auroc_only(tmp_path):
    store = ArtifactStore(tmp_path)
    why = "image labels only: no pixel masks"
    _track(store, _task(1), "n1", absent=why, image_auroc=0.9)
    out = _track(store, _task(2), "n2", absent=why, image_auroc=0.95)
    assert out["decision"] == "promoted" and f"pixel_auroc not compared (absent: {why})" in out["reason"]
    row = read_promotions(store).iloc[-1]
    assert row["compared"] == "image_auroc" and pd.isna(row["candidate_pixel_auroc"])
    nothing = _track(store, _task(3), "n3", absent=why)  # no image AU-ROC either: nothing to compare
    assert nothing["decision"] == "kept" and "no metric" in nothing["reason"] and not nothing["regressed"]


def test_tolerances_are_configurable_and_checked():
    policy = PromotionPolicy.from_mapping({"image_auroc": 2.0})
    assert compare({"image_auroc": 0.90}, {"image_auroc": 0.915}, policy).worse == ()
    assert compare({"image_auroc": 0.90}, {"image_auroc": 0.925}, policy).worse[0].metric == "image_auroc"
    exact = compare({"image_auroc": 0.895}, {"image_auroc": 0.9}, PromotionPolicy())  # exactly the tolerance
    assert exact.worse == ()
    for bad in ({"au_roc": 1.0}, {"image_auroc": -1}, {"image_auroc": "1"}, {}):
        with pytest.raises(ConfigError, match="tolerance"):
            PromotionPolicy.from_mapping(bad)
    options = RegistryOptions.from_dict(RegistryOptions.from_parameters("x-{variant}", {"au_pro": 1}).to_dict())
    assert options.policy.as_dict() == {"au_pro": 1.0} and options.name_for(_task()) == "x-mrkd"
    assert RegistryOptions().name_for(_task()) == "nightly-mrkd"
    for bad in ("a/b", "a@b", "{nope}", " x"):
        with pytest.raises(ConfigError):
            RegistryOptions(bad).name_for(_task())
    with pytest.raises(ConfigError, match="no spec"):
        RegistryOptions().name_for(Task("folder", "c", "mrkd", CFG, "/d"))
    assert check_model_name("mvtec-full mrkd été") == "mvtec-full mrkd été"


def test_concurrent_registrations_of_one_model_get_distinct_versions(tmp_path):
    store = ArtifactStore(tmp_path)
    prepared = [_result(store, _task(e), f"run-{e}", image_auroc=0.5 + e / 100) for e in range(1, 5)]
    out: list[dict] = []
    errors: list[BaseException] = []

    def register(i: int) -> None:
        d, row, lineage = prepared[i]
        try:
            out.append(track(store, _task(i + 1), f"run-{i + 1}", d, row, lineage, [], OPTIONS, "trained"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert sorted(o["version"] for o in out) == [1, 2, 3, 4]
    index = read_index(store, KEY)
    assert sorted(v["version"] for v in index.versions) == [1, 2, 3, 4]
    assert {v["run_dir"] for v in index.versions} == {p[0] for p in prepared}
    assert len(read_promotions(store)) == 4 and not store.list("claims", recursive=True)


# --------------------------------------------------------------------------- the champion on new test data
@pytest.fixture(scope="module")
def real_model(tmp_path_factory):
    """A real ResNet18 model file (random weights) and a generated category to evaluate it on."""
    from mrkd_core.data import get_dataset
    from mrkd_core.data.synthetic import make_synthetic_mvtec
    from mrkd_core.model import build_mrkd
    from mrkd_core.model_io import model_bytes

    root = make_synthetic_mvtec(tmp_path_factory.mktemp("data"), ["obj_disc"], n_train=2, n_test_good=2,
                                n_test_defect=2, size=32)
    torch.manual_seed(0)
    return model_bytes(build_mrkd(CFG), CFG), get_dataset("folder").test_samples(str(root), "obj_disc")


def test_the_champion_is_re_evaluated_on_changed_test_data_once(tmp_path, real_model, monkeypatch):
    data, samples = real_model
    store = ArtifactStore(tmp_path)
    _track(store, _task(1), "n1", test_fp="OLD", model=data, image_auroc=0.7, pixel_auroc=0.7)
    out = _track(store, _task(2), "n2", samples, test_fp="NEW", image_auroc=0.0, pixel_auroc=0.0)
    assert out["champion_reevaluated"] and "champion re-evaluated" in out["reason"]
    cached = store.read_json(KEY.evaluation_path(1, "NEW"))
    assert cached["n_test"] == len(samples) and 0 <= cached["metrics"]["image_auroc"] <= 1
    row = read_promotions(store).iloc[-1]
    assert row["champion_reevaluated"] and row["test_fingerprint"] == "NEW"
    assert row["champion_image_auroc"] == cached["metrics"]["image_auroc"]  # not the recorded 0.7
    # The candidate scored 0 on both compared metrics: kept unless the champion is as bad on both.
    worse = any((cached["metrics"][m] or 0.0) > 0.005 for m in ("image_auroc", "pixel_auroc"))
    assert out["decision"] == ("kept" if worse else "promoted")

    def no_evaluation(*args, **kwargs):
        raise AssertionError("the stored re-evaluation should have been used")

    monkeypatch.setattr(promotion, "evaluate_version", no_evaluation)
    again = _track(store, _task(3), "n3", samples, test_fp="NEW", image_auroc=1.0, pixel_auroc=1.0)
    assert again["champion_reevaluated"] and again["decision"] == "promoted"


def test_a_champion_whose_model_is_gone_is_replaced_with_the_reason(tmp_path):
    store = ArtifactStore(tmp_path)
    _track(store, _task(1), "n1", test_fp="OLD", image_auroc=1.0)
    store.remove(f"{run_dir(_task(1), 'n1')}/model.pt")
    out = _track(store, _task(2), "n2", test_fp="NEW", image_auroc=0.5)
    assert out["decision"] == "promoted" and "could not be evaluated" in out["reason"]


# --------------------------------------------------------------------------- a person's decisions
def test_promote_and_rollback_are_recorded_and_rollback_walks_back(tmp_path):
    store = ArtifactStore(tmp_path)
    for e in (1, 2, 3):
        _track(store, _task(e), f"n{e}", image_auroc=0.9, pixel_auroc=0.9)  # each promoted: champion 3
    with pytest.raises(MRKDError, match="versions 1, 2, 3"):
        promote_version(store, KEY, 7)
    assert promote_version(store, KEY, 3)["changed"] is False
    out = promote_version(store, KEY, 1, reason="v2 and v3 drift on the line", by="ana@qa")
    assert out["champion"] == 1 and out["previous"] == 3
    assert rollback(store, KEY)["champion"] == 3      # undoes the promotion
    assert rollback(store, KEY)["champion"] == 2      # the champion before v3
    assert rollback(store, KEY)["champion"] == 1
    with pytest.raises(MRKDError, match="first champion"):
        rollback(store, KEY)
    rows = read_promotions(store)
    manual = rows[rows["decision"].isin(["promote", "rollback"])]
    assert list(manual["decision"]) == ["promote", "rollback", "rollback", "rollback"]
    assert list(manual["champion_after"]) == [1, 3, 2, 1]
    assert "v2 and v3 drift on the line" in manual.iloc[0]["reason"] and manual.iloc[0]["decided_by"] == "ana@qa"
    assert all(r.startswith(("promote-", "rollback-")) for r in manual["run_id"])


# --------------------------------------------------------------------------- references
def test_references_resolve_through_the_registry(tmp_path, caplog):
    store = ArtifactStore(tmp_path / "store")
    _track(store, _task(1), "n1", image_auroc=1.0, pixel_auroc=0.8)
    _track(store, _task(2), "n2", image_auroc=1.0, pixel_auroc=0.2)  # kept: champion stays v1
    base = f"{store.root}/models/nightly-mrkd/folder/obj_disc"
    v1 = store.uri(f"{run_dir(_task(1), 'n1')}/model.pt")
    v2 = store.uri(f"{run_dir(_task(2), 'n2')}/model.pt")
    with caplog.at_level("INFO"):
        assert resolve_model_location(f"{base}@champion") == v1
    assert "is version 1 of nightly-mrkd/folder/obj_disc" in caplog.text
    assert resolve_model_location(f"{base}@latest") == v2 and resolve_model_location(f"{base}@2") == v2
    assert resolve_model_location("some/dir/model.pt") == "some/dir/model.pt"  # not a reference: as it is
    with pytest.raises(MRKDError, match="no version '9'.*versions 1, 2"):
        resolve_model_location(f"{base}@9")
    with pytest.raises(MRKDError, match="no registered model other/folder/obj_disc"):
        resolve_model_location(f"{store.root}/models/other/folder/obj_disc@champion")
    ref = parse_reference("s3://bucket/pre/fix/models/mvtec-full-mrkd/mvtec/bottle@3")
    assert (ref.store, str(ref.key), ref.selector) == ("s3://bucket/pre/fix", "mvtec-full-mrkd/mvtec/bottle", "3")
    assert parse_reference("/data/models/x/runs/a@b/folder/c/h/model.pt") is None


def test_models_list_promote_and_rollback_commands(tmp_path, capsys):
    store = ArtifactStore(tmp_path / "store")
    _track(store, _task(1), "n1", image_auroc=1.0, pixel_auroc=0.8)
    _track(store, _task(2), "n2", image_auroc=1.0, pixel_auroc=0.2)
    assert main(["models", "list", "--store", str(tmp_path / "store")]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["MODEL", "DATASET", "CATEGORY", "VERSION"]
    assert lines[1].split()[:6] == ["nightly-mrkd", "folder", "obj_disc", "1", "champion", "n1"]
    assert lines[2].split()[:7] == ["nightly-mrkd", "folder", "obj_disc", "2", "-", "n2", "kept"]
    assert f"mrkd predict {store.root}/models/nightly-mrkd/folder/obj_disc@champion" in out
    ref = f"{store.root}/models/nightly-mrkd/folder/obj_disc"
    assert main(["models", "promote", f"{ref}@2", "--reason", "by hand"]) == 0
    assert json.loads(capsys.readouterr().out)["champion"] == 2
    assert main(["models", "rollback", ref]) == 0
    assert json.loads(capsys.readouterr().out)["champion"] == 1
    assert main(["models", "list", "--store", str(tmp_path / "store"), "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["champion"] == 1 and [v["aliases"] for v in entry["versions"]] == [["champion"], []]
    assert main(["models", "promote", ref]) == 2  # no version named: one line
    assert "name the version to promote" in capsys.readouterr().err
    assert main(["models", "list", "--store", str(tmp_path / "empty")]) == 0
    assert "no registered models" in capsys.readouterr().out


# --------------------------------------------------------------------------- through the engine and the CLI
def test_mrkd_train_registers_and_predict_resolves_the_champion(tmp_path, capsys, monkeypatch):
    from mrkd_core.data.synthetic import make_synthetic_mvtec
    from tests.datagen import FAST_CLI

    root = make_synthetic_mvtec(tmp_path / "data", ["obj_disc"], n_train=4, n_test_good=2, n_test_defect=2, size=32)
    store = tmp_path / "store"
    train = ["train", str(root), "-o", str(store), "-c", "obj_disc", "--register", "line-4", *FAST_CLI]
    assert main([*train, "--no-evaluate"]) == 2  # a version is promoted on its metrics
    assert "drop --no-evaluate" in capsys.readouterr().err
    assert main([*train, "--run-id", "r1"]) == 0
    first = json.loads(capsys.readouterr().out)["models"]["obj_disc"]
    assert first["registry"]["decision"] == "first" and first["registry"]["version"] == 1
    assert main([*train, "--run-id", "r2"]) == 0  # same inputs: reused, not a new version
    again = json.loads(capsys.readouterr().out)["models"]["obj_disc"]
    assert again["status"] == "skipped" and again["registry"]["decision"] == "unchanged"
    history = read_history(ArtifactStore(store))
    assert list(history["run_id"]) == ["r1", "r2"] and list(history["version"]) == [1, 1]

    images = str(root / "obj_disc" / "test")
    ref = f"{store}/models/line-4/folder/obj_disc@champion"
    assert main(["predict", ref, images, "-o", str(tmp_path / "by-ref"), "--batch-size", "1"]) == 0
    by_ref = capsys.readouterr().out
    # Every decision is recorded, as the service records its answers: the registry's store, the
    # version that decided, the bytes it saw; the call's own table says the same.
    decided = pd.read_parquet(tmp_path / "by-ref" / "predictions.parquet")
    recorded = read_inspections(ArtifactStore(store))
    assert len(recorded) == 4 and set(recorded["model"]) == {"obj_disc"} and set(recorded["model_version"]) == {1}
    assert recorded["request_id"].nunique() == 1 and recorded["request_id"][0].startswith("predict-")
    assert recorded["filename"].tolist() == decided["path"].tolist() and recorded["latency_ms"].isna().all()
    assert recorded["image_sha256"].tolist() == decided["image_sha256"].tolist()
    assert recorded["verdict"].tolist() == decided["verdict"].tolist() and set(decided["model_version"]) == {1}
    assert main(["predict", first["model"], images, "-o", str(tmp_path / "by-file"), "--batch-size", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[:-1] == by_ref.splitlines()[:-1]  # the same model, the same scores
    assert pd.read_parquet(tmp_path / "by-file" / "predictions.parquet")["model_version"].isna().all()
    assert main(["predict", ref, images, "-o", str(tmp_path / "none"), "--record", "none"]) == 0
    assert len(read_inspections(ArtifactStore(store))) == 4  # --record none: no new rows
    monkeypatch.chdir(tmp_path)  # a model named by a relative path is recorded by its absolute one
    relative = os.path.relpath(first["model"], tmp_path)
    assert main(["predict", relative, images, "-o", "elsewhere", "--record", "audit"]) == 0
    elsewhere = read_inspections(ArtifactStore(tmp_path / "audit"))
    assert len(elsewhere) == 4 and set(elsewhere["model"]) == {"obj_disc"} and elsewhere["model_version"].isna().all()
    assert set(elsewhere["model_source"]) == {first["model"]}
    # A record store that cannot be opened fails before anything is scored; one that fails to take the
    # rows fails after the verdicts are shown and written, naming where they are.
    (tmp_path / "a-file").write_text("")
    assert main(["predict", ref, images, "-o", "not-scored", "--record", "a-file"]) == 2
    assert not (tmp_path / "not-scored").exists() and "a-file" in capsys.readouterr().err
    (tmp_path / "broken" / "tables").mkdir(parents=True)
    (tmp_path / "broken" / "tables" / "inspections").write_text("")
    assert main(["predict", ref, images, "-o", "scored", "--record", "broken"]) == 2
    shown = capsys.readouterr()
    assert len(shown.out.splitlines()) == 5 and (tmp_path / "scored" / "predictions.parquet").is_file()
    (line,) = shown.err.strip().splitlines()
    assert "4 of 4 decisions" in line and "predictions.parquet holds them" in line and "--record none" in line
    assert main(["predict", f"{store}/models/line-4/folder/obj_disc@2", images]) == 2
    assert "no version '2'" in capsys.readouterr().err


def test_changed_test_data_trains_nothing_and_compares_on_the_new_data(tmp_path):
    """Only the test split changed: the key resumes at its last epoch (no training), its
    weights are evaluated on the new split, and the champion is re-evaluated on it too."""
    import dataclasses
    from pathlib import Path

    from mrkd_core.data import get_dataset
    from mrkd_core.engine import train_evaluate
    from tests.datagen import train_smoke_key

    store, task, first = train_smoke_key(tmp_path, register=OPTIONS)
    assert (first.status, first.registry["decision"]) == ("trained", "first")
    Path(get_dataset(task.dataset).test_samples(task.data_root, task.category)[0].path).unlink()
    again = train_evaluate(dataclasses.replace(task), store, "r2", register=OPTIONS)
    assert again.status == "trained" and again.resumed_from_epoch == task.config.epochs  # 0 epochs trained
    out = again.registry
    assert (out["version"], out["decision"], out["champion_reevaluated"]) == (2, "promoted", True)
    row = read_promotions(store).iloc[-1]
    for m in ("image_auroc", "pixel_auroc"):  # the same weights on the same new test data
        assert row[f"champion_{m}"] == pytest.approx(row[f"candidate_{m}"], abs=1e-12)
