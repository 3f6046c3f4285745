"""The `mrkd` command: train + evaluate + predict on an MVTec-layout folder, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mrkd_core.cli import main
from mrkd_core.data.synthetic import make_synthetic_mvtec

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
    assert len(lines) == 4
    pngs = sorted(out.glob("*_heatmap.png"))
    assert len(pngs) == 4 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert (out / "scores.csv").is_file()

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
