"""The `mrkd` command: train + evaluate + predict on an MVTec-layout folder, and its errors."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mrkd_core.cli import main
from mrkd_core.data import get_dataset
from mrkd_core.data.fingerprint import fingerprint_samples
from mrkd_core.data.synthetic import make_synthetic_mvtec
from tests.datagen import write_image

FAST = ["--backbone", "resnet18", "--teacher-weights", "none", "--image-size", "64", "--epochs", "1",
        "--batch-size", "4", "--num-workers", "0", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-data")
    make_synthetic_mvtec(root, categories=("tex_stripes", "obj_disc"), n_train=4, n_test_good=2,
                         n_test_defect=2, size=64, seed=5)
    return root


def test_train_evaluate_predict(data_root, tmp_path, capsys):
    """The unified layout: `mrkd train` stores runs/<run_id>/<dataset>/<category>/<config_hash>/ (as the flows
    do) and prints where each model is; `mrkd evaluate -m` finds them; `mrkd predict` takes the printed path."""
    models = tmp_path / "models"
    capsys.readouterr()
    assert main(["train", str(data_root), "-o", str(models), "--run-id", "first", *FAST]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["run_id"] == "first" and printed["store"] == str(models)
    for cat in ("tex_stripes", "obj_disc"):
        info = printed["models"][cat]
        model = Path(info["model"])
        assert info["status"] == "trained" and model.is_file() and model.name == "model.pt"
        assert model.parent.parent == models / "runs" / "first" / "folder" / cat
        assert json.loads((model.parent / "config.json").read_text())["backbone"] == "resnet18"
        # What it was trained on: the same fingerprint the engine keys its results with.
        samples = get_dataset("folder").train_samples(str(data_root), cat)
        assert json.loads((model.parent / "train.json").read_text())["train_fingerprint"] == \
            fingerprint_samples(samples, data_root).digest
        assert 0.0 <= info["metrics"]["image_auroc"] <= 1.0  # `mrkd train` evaluates, like the flows
    assert main(["evaluate", str(data_root), "-m", str(models), "--num-workers", "0", "--evaluation-id", "ev1"]) == 0
    summary = json.loads((models / "evaluations" / "ev1" / "metrics.json").read_text())
    assert set(summary["categories"]) == {"tex_stripes", "obj_disc"}
    for m in summary["categories"].values():
        assert {"image_auroc", "pixel_auroc", "au_pro", "au_pro_per_image"} <= set(m)
        assert 0.0 <= m["image_auroc"] <= 1.0
    (cat_dir,) = (models / "evaluations" / "ev1" / "folder" / "obj_disc").iterdir()
    per_cat = json.loads((cat_dir / "metrics.json").read_text())
    assert per_cat["teacher_weights"] == "none" and per_cat["n_test"] == 4
    assert per_cat["model"] == printed["models"]["obj_disc"]["model"]
    assert (cat_dir / "scores.csv").read_text().startswith(
        "run_id,dataset,category,config_hash,variant,path,defect_type,label,score")

    out = tmp_path / "pred"
    images = data_root / "obj_disc" / "test"
    capsys.readouterr()
    model = printed["models"]["obj_disc"]["model"]
    assert main(["predict", model, str(images), "-o", str(out), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5  # one per image, then where the tables are
    assert all(line.split()[-1] in ("good", "defective") for line in lines[:4])
    for kind in ("mask", "overlay"):
        pngs = sorted(out.glob(f"*_{kind}.png"))
        assert len(pngs) == 4 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    header = (out / "predictions.csv").read_text().splitlines()[0]
    assert header.replace('"', "") == ("path,width,height,score,normalized_score,verdict,threshold,mask_path,"
                                       "overlay_path,error,defect_area_fraction,image_sha256,model_source,"
                                       "model_version,engine,predicted_at")
    assert (out / "predictions.parquet").is_file() and not (out / "scores.csv").exists()
    # who decided, on which bytes, when: a model file has no registry version, and no record store by default
    table = pd.read_parquet(out / "predictions.parquet")
    assert table["image_sha256"].tolist() == [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in table["path"]]
    assert set(table["model_source"]) == {model} and set(table["engine"]) == {"pytorch"}
    assert table["model_version"].isna().all() and table["predicted_at"].notna().all()
    assert table["defect_area_fraction"].between(0, 1).all()
    assert not (models / "tables" / "inspections").exists()

    # The same config again: the complete model is reused, not retrained, and printed again.
    assert main(["train", str(data_root), "-o", str(models), "-c", "obj_disc", "--run-id", "again", *FAST]) == 0
    again = json.loads(capsys.readouterr().out)["models"]["obj_disc"]
    assert again["status"] == "skipped" and again["model"] == printed["models"]["obj_disc"]["model"]


def test_the_store_defaults_to_mrkd_store_and_is_required(data_root, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MRKD_STORE", raising=False)
    assert main(["train", str(data_root), *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--output" in err and "MRKD_STORE" in err
    assert main(["evaluate", str(data_root)]) == 2
    assert "--models" in capsys.readouterr().err
    monkeypatch.setenv("MRKD_STORE", str(tmp_path / "store"))
    assert main(["evaluate", str(data_root)]) == 2  # an empty store: nothing trained yet
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no complete 'folder' model" in err and str(tmp_path / "store") in err


def test_train_after_an_image_changed_trains_a_new_model_from_scratch_and_a_bad_image_changes_nothing(
        data_root, tmp_path, capsys):
    """The same `mrkd train` after a training image changed: not refused, not resumed from the old images'
    checkpoints, a new model (issue 25 item 4; the run directories: tests/reliability/test_stored_results.py)."""
    import torch

    data = tmp_path / "data"
    shutil.copytree(data_root, data)
    out = tmp_path / "models"
    args = ["train", str(data), "-o", str(out), "-c", "obj_disc", *FAST]
    assert main([*args, "--run-id", "r1"]) == 0
    first = json.loads(capsys.readouterr().out)["models"]["obj_disc"]
    (key_checkpoints,) = (out / "checkpoints" / "folder" / "obj_disc").iterdir()  # checkpoints/<key>
    checkpoint = key_checkpoints / "epoch-0001.pt"
    old_checkpoint = checkpoint.read_bytes()
    image = sorted((data / "obj_disc" / "train" / "good").iterdir())[1]
    write_image(image, 64, 64, seed=77)  # one training image changed
    changed = image.read_bytes()
    image.write_bytes(b"")  # a bad image fails before anything is replaced
    capsys.readouterr()
    assert main([*args, "--run-id", "r2"]) == 2 and "the file is empty" in capsys.readouterr().err
    assert checkpoint.read_bytes() == old_checkpoint and not (out / "runs" / "r2").exists()
    image.write_bytes(changed)

    assert main([*args, "--run-id", "r2"]) == 0
    printed = json.loads(capsys.readouterr().out)["models"]["obj_disc"]
    done = Path(printed["run_dir"])
    assert printed["status"] == "trained" and done != Path(first["run_dir"])
    assert printed["replaces"]["changes"]["modified"] == [f"obj_disc/train/good/{image.name}"]
    state = torch.load(io.BytesIO(checkpoint.read_bytes()), weights_only=True)
    info = json.loads((done / "train.json").read_text())
    assert state["train_fingerprint"] == info["train_fingerprint"] and info["resumed_from_epoch"] == 0
    assert main([*args, "--run-id", "r3"]) == 0  # the same images again: r2's model is reused
    assert json.loads(capsys.readouterr().out)["models"]["obj_disc"]["status"] == "skipped"
    (done / "manifest.json").unlink()  # without it, the checkpoint of these images resumes (nothing left to train)
    assert main([*args, "--run-id", "r4"]) == 0
    assert json.loads((out / "runs" / "r4" / "folder" / "obj_disc" / done.name / "train.json").read_text())[
        "resumed_from_epoch"] == 1


def test_model_summary_json(capsys):
    assert main(["model-summary", "--backbone", "resnet18", "--image-size", "64"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["parameters"]["generation"] > 0 if "parameters" in data else data


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["train", "{root}", "-o", "{tmp}", "--backbone", "vgg"], "backbone"),
        (["train", "{root}", "-o", "{tmp}", "--flm-ratio", "1.0"], "flm_ratio"),
        (["train", "{tmp}/missing", "-o", "{tmp}"], "does not exist"),
        (["train", "{root}", "-o", "{tmp}", "--device", "cuda", *FAST[:-2]], "no CUDA GPU"),
        (["train", "{root}", "-o", "{tmp}", "-c", "nope"], "category 'nope' not found"),
        (["model-summary", "--backbone", "alexnet"], "alexnet"),
    ],
)
def test_user_errors_are_one_line(argv, fragment, data_root, tmp_path, capsys):
    argv = [a.format(root=data_root, tmp=tmp_path) for a in argv]
    if "cuda" in argv:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err and "Traceback" not in err


def test_unreadable_image_names_the_file(data_root, tmp_path, capsys):
    import shutil

    root = tmp_path / "bad"
    shutil.copytree(data_root / "tex_stripes", root / "tex_stripes")
    bad = root / "tex_stripes" / "train" / "good" / "broken.png"
    bad.write_text("not an image")
    assert main(["train", str(root), "-o", str(tmp_path / "m"), *FAST]) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "Traceback" not in err


def test_console_script_exit_code(tmp_path):
    """The real process: exit code ≠ 0 and no traceback."""
    proc = subprocess.run([sys.executable, "-m", "mrkd_core.cli", "train", str(tmp_path / "x"), "-o", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr


def test_train_holds_out_and_calibrates_then_calibrate_and_models_info(data_root, tmp_path, capsys):
    """train --validation-fraction: thresholds at a 1 % false-alarm rate on held-out train/good."""
    models = tmp_path / "models"
    capsys.readouterr()
    assert main(["train", str(data_root), "-o", str(models), "-c", "obj_disc", "--validation-fraction", "0.5",
                 *FAST]) == 0
    printed = json.loads(capsys.readouterr().out)["models"]["obj_disc"]
    model = printed["model"]
    assert "held-out train/good" in printed["calibration"]
    assert json.loads((Path(model).parent / "train.json").read_text())["n_train"] == 2  # 4 train/good − 2
    assert main(["models", "info", model, "--images"]) == 0
    info = json.loads(capsys.readouterr().out)
    cal = info["calibration"]
    assert cal["policy"] == "false_alarm_rate" and cal["source"] == "held-out train/good"
    assert cal["target_false_alarm_rate"] == 0.01 and not cal["on_evaluation_images"]
    assert len(cal["images"]) == 2 and all("/train/good/" in p for p in cal["images"])
    assert info["thresholds"] == {"image": cal["image_threshold"], "pixel": cal["pixel_threshold"],
                                  "normalized_image": 0.5}
    assert info["config"]["validation_fraction"] == 0.5 and info["calibration_history"] == 0
    # what the model is, apart from where it ran (a loaded model's progress bars are always off)
    assert not {"device", "num_workers", "progress"} & set(info["config"]) and "progress" not in info["trained_with"]
    assert info["trained_with"]["device"] == "cpu" and info["trained_with"]["num_workers"] == 0
    # recalibrate on the labelled test split: F1, and the report says where it was chosen; into a new
    # file, never over the stored model.pt (a registered version may point at it)
    stored = Path(model).read_bytes()
    calibrate = ["calibrate", model, str(data_root), "--policy", "f1", "--num-workers", "0", "--device", "cpu"]
    assert main([*calibrate, "-o", model]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "part of a complete run directory" in err and "-o FILE.pt" in err, err
    recalibrated = tmp_path / "recalibrated.pt"
    assert main([*calibrate, "-o", str(recalibrated)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == str(recalibrated) and Path(model).read_bytes() == stored
    assert out["calibration"]["policy"] == "f1" and out["calibration"]["on_evaluation_images"]
    assert out["calibration"]["source"] == "test split"
    assert main(["models", "info", str(recalibrated)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["calibration"]["policy"] == "f1" and info["calibration_history"] == 1


def test_predict_skip_unreadable_exits_3_and_lists_the_reason(data_root, tmp_path, capsys):
    import shutil

    models = tmp_path / "models"
    capsys.readouterr()
    assert main(["train", str(data_root), "-o", str(models), "-c", "obj_disc", *FAST]) == 0
    model = json.loads(capsys.readouterr().out)["models"]["obj_disc"]["model"]
    folder = tmp_path / "incoming"
    shutil.copytree(data_root / "obj_disc" / "test" / "good", folder)
    (folder / "truncated.png").write_bytes((folder / "000.png").read_bytes()[:200])
    assert main(["predict", model, str(folder), "-o", str(tmp_path / "a"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "truncated.png" in err
    assert main(["predict", model, str(folder), "-o", str(tmp_path / "b"), "--device", "cpu",
                 "--skip-unreadable"]) == 3
    captured = capsys.readouterr()
    assert "truncated.png  skipped: " in captured.out and "1 of 3 files were unreadable" in captured.err
    rows = (tmp_path / "b" / "predictions.csv").read_text().splitlines()
    assert len(rows) == 4 and "cannot read image" in [r for r in rows if "truncated" in r][0]


@pytest.mark.parametrize("argv,fragment", [
    (["calibrate", "{tmp}/missing.pt", "{root}", "-o", "{tmp}/out.pt"], "model file not found"),
    (["calibrate", "{tmp}/m.onnx", "{root}", "-o", "{tmp}/out.pt"], "export it again"),
    (["export", "{tmp}/missing.pt", "-o", "{tmp}/x.onnx"], "model file not found"),
    (["predict", "{tmp}/missing.onnx", "{root}"], "file not found"),
    (["models", "info", "{tmp}/missing.pt"], "model file not found"),
])
def test_inference_command_errors_are_one_line(argv, fragment, data_root, tmp_path, capsys):
    argv = [a.format(root=data_root, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err and "Traceback" not in err
