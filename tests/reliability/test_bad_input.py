"""Bad input: one clear line naming the file or field, exit code 2, and nothing stored is lost.

Each case goes through a user-facing path — the ``mrkd`` CLI (``cli.main``) and/or
``engine.train_evaluate`` (what the flows run) — against a store that already holds a
finished run; the sha256 of every object of that run is compared before and after.

The loaders' own checks are unit-tested in tests/core: test_data.py
(``test_bad_image_files_give_one_clear_error``, ``test_decompression_bomb_guard_checks_header_before_decoding``,
``test_mask_of_other_size_names_both_sizes``, ``test_missing_mask_is_one_clear_error``,
``test_missing_or_empty_train_folder``), test_specs.py / test_config.py (bad specs and
configs) and test_engine.py (``test_hash_collision_is_refused_and_nothing_overwritten``).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from PIL import Image

from mrkd_core.cli import main
from mrkd_core.data.synthetic import make_synthetic_mvtec
from mrkd_core.engine import train_evaluate
from mrkd_core.errors import ConfigError, DataError, MRKDError, StorageError
from mrkd_core.layout import find_complete, run_dir
from mrkd_core.results import write_manifest
from mrkd_core.specs import load_spec
from tests.datagen import plant_text_as_image, plant_truncated, plant_wrong_size_mask, plant_zero_byte
from tests.reliability.relkit import CATEGORY, make_task, snapshot, tree

FAST = ["--backbone", "resnet18", "--teacher-weights", "none", "--image-size", "32", "--epochs", "1",
        "--batch-size", "4", "--num-workers", "0", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def bomb_png(tmp_path_factory) -> Path:
    """A real 20000×20000 PNG (1-bit, ~50 KB on disk, 400 M pixels decoded)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("1", (20000, 20000)).save(path)
    return path


@pytest.fixture(scope="module")
def models(data_root, tmp_path_factory) -> Path:
    """`mrkd train` then `mrkd evaluate` on clean data: the results a bad input must not touch."""
    out = tmp_path_factory.mktemp("cli") / "models"
    assert main(["-q", "train", str(data_root), "-o", str(out), "-c", CATEGORY, *FAST]) == 0
    assert main(["-q", "evaluate", str(data_root), "-m", str(out), "--num-workers", "0"]) == 0
    assert len(list(out.glob(f"runs/*/folder/{CATEGORY}/*/model.pt"))) == 1
    assert len(list(out.glob("evaluations/*/metrics.json"))) == 1
    return out


def _bad_copy(data_root: Path, tmp_path: Path, name: str = CATEGORY) -> tuple[Path, Path]:
    root = tmp_path / "bad-data"
    shutil.copytree(data_root / CATEGORY, root / name)
    return root, root / name


def _first(cat: Path, pattern: str) -> Path:
    return sorted(cat.glob(pattern))[0]


# Each case: (plant(cat, bomb) -> the file the message must name, command, fragment of the message)
Plant = Callable[[Path, Path], Path]


def _bomb(cat: Path, bomb: Path) -> Path:
    return Path(shutil.copy(bomb, cat / "train" / "good" / "huge.png"))


def _no_mask(cat: Path, bomb: Path) -> Path:
    mask = _first(cat, "ground_truth/*/*_mask.png")
    mask.unlink()
    return mask


def _no_train(cat: Path, bomb: Path) -> Path:
    for p in (cat / "train" / "good").iterdir():
        p.unlink()
    return cat / "train" / "good"


def _wrong_mask(cat: Path, bomb: Path) -> Path:
    return plant_wrong_size_mask(_first(cat, "ground_truth/*/*_mask.png"), 20, 10)


def _bad_test_image(cat: Path, bomb: Path) -> Path:
    return plant_truncated(_first(cat, "test/good/*.png"), keep=0.3)


CASES = {
    "corrupt-png": (lambda cat, b: plant_truncated(_first(cat, "train/good/*.png"), keep=0.3), "train",
                    "cannot read image ("),
    "zero-byte": (lambda cat, b: plant_zero_byte(_first(cat, "train/good/*.png")), "train", "the file is empty, 0 bytes"),
    "text-named-png": (lambda cat, b: plant_text_as_image(_first(cat, "train/good/*.png")), "train",
                       "cannot identify image file"),
    "20000x20000-png": (_bomb, "train", "decompression-bomb guard"),
    "category-without-training-images": (_no_train, "train", "no training images"),
    "mask-of-wrong-size": (_wrong_mask, "evaluate", "mask is 20×10 but its image"),
    "defect-image-without-mask": (_no_mask, "evaluate", "mask missing"),
    "corrupt-test-image-in-a-dataloader-worker": (_bad_test_image, "evaluate", "cannot read image ("),
    # Found before the first epoch, not by the evaluation after the training (issue 25 item 5).
    "mask-of-wrong-size-before-training": (_wrong_mask, "train", "mask is 20×10 but its image"),
    "corrupt-test-image-before-training": (_bad_test_image, "train", "cannot read image ("),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_file_through_the_cli_is_one_line_naming_it_and_loses_nothing(case, data_root, models, bomb_png,
                                                                        tmp_path, capsys):
    plant, command, fragment = CASES[case]
    root, cat = _bad_copy(data_root, tmp_path)
    bad = plant(cat, bomb_png)
    before = tree(models)
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    if command == "train":
        # --no-resume: it replaces the key's checkpoints, and must fail on the bad file before it does
        # (without it the bad file fails too: other images, so the complete model is not reused); the
        # unchanged store below shows that no epoch ran (one would have replaced them).
        argv = ["train", str(root), "-o", str(models), "-c", CATEGORY, "--no-resume", *FAST]
    else:  # default output = the models store, which already holds an evaluation of the clean data
        workers = "2" if "worker" in case else "0"  # worker processes cost seconds to start and stop
        argv = ["evaluate", str(root), "-m", str(models), "--num-workers", workers]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("mrkd: error: ") and str(bad) in err and fragment in err, err
    assert tree(models) == before
    # A failed DataLoader's workers are stopped before the error is printed, not left to the garbage
    # collector (which waited 5 s for each): none of the processes this call started is still running.
    left = [p for p in psutil.Process().children(recursive=True)
            if p.pid not in children and p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, left


BAD_CONFIGS = {
    "unknown-key": ({"flm_ration": 0.2}, "flm_ration"),
    "wrong-type": ({"epochs": "ten"}, "'epochs' must be int"),
    "not-json": ("{nope", "not valid JSON"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_file_through_the_cli_names_file_and_field(case, data_root, models, tmp_path, capsys):
    content, fragment = BAD_CONFIGS[case]
    path = tmp_path / "config.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    before = tree(models)
    assert main(["train", str(data_root), "-o", str(models), "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and fragment in err, err
    assert tree(models) == before


def test_bad_experiment_spec_file_names_file_and_key(tmp_path):
    """The flows read specs with load_spec; more cases in tests/core/test_specs.py and
    tests/flows/test_store_integrity.py."""
    for text, fragment in (("name: x\ndatasets: [{name: folder}]\nbogus: 1\n", "unknown key(s) ['bogus']"),
                           ("name: x\ndatasets: [{name: folder}]\nbase: {epochs: many}\n", "'epochs' must be int"),
                           ("name: x\ndatasets: [{name: folder, categories: 3}]\n", "datasets[0].categories")):
        path = tmp_path / "spec.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError) as err:
            load_spec(str(path))
        msg = str(err.value)
        assert "\n" not in msg and str(path) in msg and fragment in msg, msg


def test_another_config_into_a_trained_output_trains_beside_it_and_loses_nothing(data_root, models, capsys):
    """Same store, different config: in the unified layout (issue 17) every config has its own key, so the
    CLI trains it beside the first one (as the flows do with a spec's variants) and changes nothing stored."""
    before = tree(models)
    capsys.readouterr()
    assert main(["-q", "train", str(data_root), "-o", str(models), "-c", CATEGORY, *FAST, "--flm-ratio", "0.4"]) == 0
    printed = json.loads(capsys.readouterr().out)["models"][CATEGORY]
    after = tree(models)
    assert {k: after.get(k) for k in before} == before  # nothing stored was changed or lost
    assert printed["status"] == "trained" and Path(printed["model"]).is_file()
    assert json.loads((Path(printed["model"]).parent / "config.json").read_text())["flm_ratio"] == 0.4
    assert len(list(models.glob(f"runs/*/folder/{CATEGORY}/*/model.pt"))) == 2


# --------------------------------------------------------------------------- the runner (what the flows run)
RUNNER_CASES = ("corrupt-png", "20000x20000-png", "category-without-training-images", "defect-image-without-mask",
                "mask-of-wrong-size-before-training")


@pytest.mark.parametrize("case", RUNNER_CASES)
def test_bad_file_through_the_runner_is_one_data_error_and_the_stored_run_is_untouched(
        case, data_root, reference, bomb_png, tmp_path):
    plant, _, fragment = CASES[case]
    root, cat = _bad_copy(data_root, tmp_path, name="victim")
    bad = plant(cat, bomb_png)
    before = snapshot(reference.store)
    task = make_task(root, epochs=1, category="victim")
    with pytest.raises(DataError) as err:
        train_evaluate(task, reference.store, f"bad-{case}")
    msg = str(err.value)
    assert "\n" not in msg and str(bad) in msg and fragment in msg, msg
    after = snapshot(reference.store)
    assert {k: after.get(k) for k in before} == before  # nothing stored was changed or lost
    assert set(after) == set(before)  # checked before anything is stored: no claim, checkpoint or run file
    assert find_complete(reference.store, task) is None


def test_config_hash_collision_is_refused_and_nothing_is_overwritten(data_root, reference, tmp_path):
    """A forged complete result: another config stored under this task's hash, with a valid manifest.

    The runner refuses to take it as this task's result and writes nothing (also in
    tests/core/test_engine.py for the same run dir and tests/flows/test_store_integrity.py)."""
    task = make_task(data_root, epochs=1, seed=11)
    d = run_dir(task, "forged")
    store = reference.store
    store.write_json(f"{d}/config.json", task.config.replace(flm_ratio=0.5).to_dict())
    write_manifest(store, d, ["config.json"])
    before = snapshot(store)
    with pytest.raises(StorageError) as err:
        train_evaluate(task, store, "another-run")
    msg = str(err.value)
    assert "\n" not in msg and "config hash collision" in msg and f"{d}/config.json" in msg, msg
    assert snapshot(store) == before and not store.exists("runs/another-run")
    assert isinstance(err.value, MRKDError)  # the CLI and flows print it as one line


# --------------------------------------------------------------------------- settings that cannot train
def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and err.startswith("mrkd: error: "), err
    return err


@pytest.mark.parametrize("epochs", [1, 2], ids=["weights-broken-by-the-last-step", "loss-nan-in-epoch-2"])
def test_a_diverging_training_is_one_line_with_the_field_to_change_and_stores_no_model(epochs, data_root, tmp_path,
                                                                                      capsys):
    """`--lr 1e12`: after one epoch the loss was still finite but the last step broke the weights (the
    evaluation then stopped on NaN scores); after two the loss is NaN. Both: one line, exit 2, no model."""
    out = tmp_path / "models"
    capsys.readouterr()
    assert main(["train", str(data_root), "-o", str(out), "-c", CATEGORY, *FAST, "--epochs", str(epochs),
                 "--lr", "1e12"]) == 2
    err = _one_line_error(capsys)
    assert f"{CATEGORY}: the training diverged" in err and "lower lr (now 1e+12" in err, err
    assert ("the loss became nan in epoch 2" if epochs == 2 else "features are not finite (NaN or infinite) after the last step") in err, err
    assert not list(out.glob("runs/**/model.pt")) and not list(out.glob("runs/**/manifest.json"))


@pytest.fixture(scope="module")
def few_images(tmp_path_factory) -> Callable[[int], Path]:
    def make(n_train: int) -> Path:
        root = tmp_path_factory.mktemp(f"{n_train}-images")
        make_synthetic_mvtec(root, categories=(CATEGORY,), n_train=n_train, n_test_good=1, n_test_defect=1, size=32,
                             seed=3)
        return root
    return make


@pytest.mark.parametrize("n_train, fix", [(5, "--batch-size 3"), (1, "add training images")],
                         ids=["5-images-in-batches-of-4", "1-image"])
def test_a_batch_of_one_image_at_32_px_is_refused_before_training_naming_the_fields(n_train, fix, few_images,
                                                                                    tmp_path, capsys):
    """At 32 px f_B is 1×1: BatchNorm cannot train on a batch of one image (docs/fidelity.md, "Partial batches")."""
    root, out = few_images(n_train), tmp_path / "models"
    capsys.readouterr()
    assert main(["train", str(root), "-o", str(out), *FAST]) == 2  # FAST: 32 px, batch 4
    err = _one_line_error(capsys)
    assert f"{n_train} training image(s) in batches of 4 leave a batch of one image" in err, err
    assert "--image-size 64" in err and fix in err, err
    assert not list(out.glob("runs/**/model.pt")) and not list(out.glob("checkpoints/**/*.pt"))  # refused, not trained


@pytest.mark.parametrize("command", ["train", "evaluate", "predict", "export"])
def test_an_output_path_blocked_by_a_file_is_one_line_naming_it_and_loses_nothing(command, data_root, models,
                                                                                  tmp_path, capsys):
    """A file where the output folder belongs (the kind of every file-system refusal: permissions, a full disk)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    model = str(next(models.glob(f"runs/*/folder/{CATEGORY}/*/model.pt")))
    argv = {"train": ["train", str(data_root), "-o", str(blocker / "store"), "-c", CATEGORY, *FAST],
            "evaluate": ["evaluate", str(data_root), "-m", str(models), "-o", str(blocker / "ev"), "--num-workers", "0"],
            "predict": ["predict", model, str(data_root / CATEGORY / "test" / "good"), "-o", str(blocker)],
            "export": ["export", model, "-o", str(blocker / "part.onnx")]}[command]
    before = tree(models)
    capsys.readouterr()
    assert main(argv) == 2
    err = _one_line_error(capsys)
    assert str(blocker) in err and ("a file is where a folder is needed" in err or "cannot create its folder" in err), err
    assert tree(models) == before and blocker.read_text() == "not a folder"
