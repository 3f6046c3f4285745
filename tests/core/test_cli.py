"""The `mrkd` command: train + evaluate + predict on an MVTec-layout folder, and its errors."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys

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
    models = tmp_path / "models"
    assert main(["train", str(data_root), "-o", str(models), *FAST]) == 0
    for cat in ("tex_stripes", "obj_disc"):
        assert (models / cat / "model.pt").is_file()
        assert json.loads((models / cat / "config.json").read_text())["backbone"] == "resnet18"
        # What it was trained on: the same fingerprint the runner keys its results with.
        samples = get_dataset("folder").train_samples(str(data_root), cat)
        assert json.loads((models / cat / "train.json").read_text())["train_fingerprint"] == \
            fingerprint_samples(samples, data_root).digest
    assert main(["evaluate", str(data_root), "-m", str(models), "--num-workers", "0"]) == 0
    summary = json.loads((models / "metrics.json").read_text())
    assert set(summary["categories"]) == {"tex_stripes", "obj_disc"}
    for m in summary["categories"].values():
        assert {"image_auroc", "pixel_auroc", "au_pro", "au_pro_per_image"} <= set(m)
        assert 0.0 <= m["image_auroc"] <= 1.0
    per_cat = json.loads((models / "obj_disc" / "metrics.json").read_text())
    assert per_cat["teacher_weights"] == "none" and per_cat["n_test"] == 4
    assert (models / "obj_disc" / "scores.csv").read_text().startswith("path,category,defect_type,label,score")

    out = tmp_path / "pred"
    images = data_root / "obj_disc" / "test"
    capsys.readouterr()
    assert main(["predict", str(models / "obj_disc" / "model.pt"), str(images), "-o", str(out), "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    pngs = sorted(out.glob("*_heatmap.png"))
    assert len(pngs) == 4 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert (out / "scores.csv").is_file()


def test_train_refuses_a_checkpoint_of_other_images_and_no_resume_replaces_it(data_root, tmp_path, capsys):
    import torch

    data = tmp_path / "data"
    shutil.copytree(data_root, data)
    out = tmp_path / "models"
    args = ["train", str(data), "-o", str(out), "-c", "obj_disc", *FAST]
    assert main(args) == 0
    image = sorted((data / "obj_disc" / "train" / "good").iterdir())[1]
    write_image(image, 64, 64, seed=77)  # one training image changed
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "trained on other data" in err and "--no-resume" in err
    assert (out / "obj_disc" / "checkpoints" / "epoch-0001.pt").is_file()  # nothing stored was lost
    good = image.read_bytes()
    image.write_bytes(b"")  # a bad image fails before --no-resume replaces anything
    assert main([*args, "--no-resume"]) == 2 and "the file is empty" in capsys.readouterr().err
    assert (out / "obj_disc" / "checkpoints" / "epoch-0001.pt").is_file()
    image.write_bytes(good)

    assert main([*args, "--no-resume"]) == 0
    state = torch.load(io.BytesIO((out / "obj_disc" / "checkpoints" / "epoch-0001.pt").read_bytes()),
                       weights_only=True)
    info = json.loads((out / "obj_disc" / "train.json").read_text())
    assert state["train_fingerprint"] == info["train_fingerprint"] and info["resumed_from_epoch"] == 0
    assert main(args) == 0  # the same images again: resumes (nothing left to train)
    assert json.loads((out / "obj_disc" / "train.json").read_text())["resumed_from_epoch"] == 1


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
