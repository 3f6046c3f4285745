"""ELPV (mrkd_core/data/elpv.py): the one-class protocol, its persisted split, the missing-package
error, and one test that reads the real installed package.

Everything but the last test runs on generated look-alikes of the package's layout
(``tests.datagen.make_elpv``: labels.csv in exactly the package's format, grey PNG cells):
no ELPV image is ever committed to this repository.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mrkd_core.cli import main
from mrkd_core.data import get_dataset
from mrkd_core.data.elpv import DEFECT_TYPES, ELPV_CATEGORIES, read_labels
from mrkd_core.data.io import load_image
from mrkd_core.data.validate import check_dataset
from mrkd_core.engine import train_evaluate
from mrkd_core.errors import DataError
from mrkd_core.metrics import PIXEL_METRICS
from mrkd_core.partitioned import read_metrics
from mrkd_core.results import ABSENT_COLUMN
from mrkd_core.specs import parse_spec
from mrkd_core.storage import ArtifactStore
from tests import datagen

COUNTS = datagen.ELPV_COUNTS
FAST = datagen.FAST_CLI


@pytest.fixture
def root(tmp_path):
    """A dataset root holding a copy of the data (labels.csv + images/), as a clone of the repository would."""
    return datagen.make_elpv(tmp_path / "elpv")


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """A stand-in elpv_dataset package on sys.path (the real one, if installed, is hidden)."""
    site = datagen.make_elpv_package(tmp_path / "site")
    real = sys.modules.pop("elpv_dataset", None)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    yield site / "elpv_dataset" / "data"
    sys.modules.pop("elpv_dataset", None)  # the stand-in must not outlive the test
    if real is not None:
        sys.modules["elpv_dataset"] = real


@pytest.fixture
def no_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "elpv_dataset", None)  # import elpv_dataset → ImportError


def _names(samples):
    return [Path(s.path).relative_to(Path(s.path).parents[1]).as_posix() for s in samples]


def test_labels_are_read_in_the_package_format(root):
    cells = read_labels(root / "labels.csv")
    assert Counter((c.kind, c.thirds) for c in cells) == Counter(COUNTS)
    assert (root / "labels.csv").read_text().splitlines()[0].count("  ") >= 2  # padded columns, no header


@pytest.mark.parametrize("category", ELPV_CATEGORIES)
def test_protocol_train_on_80_percent_of_p0_test_the_rest_and_p1(root, category):
    ds = get_dataset("elpv")
    n0, n3 = COUNTS[(category, 0)], COUNTS[(category, 3)]
    train, test = ds.train_samples(root, category), ds.test_samples(root, category)
    assert len(train) == int(0.8 * n0) and all(s.label == 0 and s.mask_path is None for s in train)
    good = [s for s in test if s.label == 0]
    bad = [s for s in test if s.label == 1]
    assert len(good) == n0 - int(0.8 * n0) and len(bad) == n3
    assert {s.defect_type for s in good} == {"good"} and {s.defect_type for s in bad} == {"defective"}
    assert not set(_names(train)) & set(_names(good))  # held out
    p0 = {c.name for c in read_labels(root / "labels.csv") if c.kind == category and c.thirds == 0}
    assert set(_names(train)) | set(_names(good)) == p0
    assert all(s.category == category and s.mask_path is None for s in test)
    assert not ds.ground_truth(root, category).pixel_masks


def test_uncertain_cells_are_excluded_or_counted_as_anomalous(root):
    plain = get_dataset("elpv").test_samples(root, "mono")
    every = get_dataset("elpv_any_defect").test_samples(root, "mono")
    assert Counter(s.defect_type for s in every) == Counter({
        "good": COUNTS[("mono", 0)] - int(0.8 * COUNTS[("mono", 0)]), DEFECT_TYPES[1]: COUNTS[("mono", 1)],
        DEFECT_TYPES[2]: COUNTS[("mono", 2)], DEFECT_TYPES[3]: COUNTS[("mono", 3)]})
    assert all(s.label == 1 for s in every if s.defect_type != "good")
    assert [s for s in every if s.defect_type in ("good", "defective")] == plain  # same split, same cells
    assert get_dataset("elpv_any_defect").train_samples(root, "mono") == get_dataset("elpv").train_samples(root, "mono")


def test_split_is_seeded_written_next_to_the_data_and_reused(root, caplog):
    ds = get_dataset("elpv")
    train = ds.train_samples(root, "poly")
    record = json.loads((root / "mrkd_split_poly.json").read_text())
    assert record["format"] == "mrkd-elpv-split/1" and record["seed"] == 0 and record["category"] == "poly"
    assert record["train"] == sorted(_names(train)) and len(record["labels_sha256"]) == 64
    assert not (root / "mrkd_split_mono.json").exists()  # one file per category, written on its first use
    # another process with another seed: the file wins, with a warning
    other = type(ds)()
    other.split_seed = 5
    with caplog.at_level("WARNING"):
        assert other.train_samples(root, "poly") == train
    assert "using the stored split" in caplog.text
    # deleting it draws again; the draw is a pure function of the names and the seed
    (root / "mrkd_split_poly.json").unlink()
    assert ds.train_samples(root, "poly") == train
    other.split_seed = 5
    (root / "mrkd_split_poly.json").unlink()
    assert other.train_samples(root, "poly") != train


def test_split_naming_a_cell_that_is_gone_is_an_error(root):
    ds = get_dataset("elpv")
    gone = ds.train_samples(root, "mono")[0]
    labels = root / "labels.csv"
    name = Path(gone.path).relative_to(root).as_posix()
    labels.write_text("".join(line + "\n" for line in labels.read_text().splitlines() if not line.startswith(name)))
    with pytest.raises(DataError, match=f"{name}: listed in .*mrkd_split_mono.json but not found"):
        ds.train_samples(root, "mono")
    assert sorted(p.kind for p in check_dataset("elpv", root, ["mono"])) == ["split_mismatch", "unexpected"]


def test_package_data_is_found_and_the_root_created_on_first_use(fake_package, tmp_path):
    root = tmp_path / "work" / "elpv"  # does not exist yet
    ds = get_dataset("elpv")
    assert ds.categories(root) == ["mono", "poly"]
    train = ds.train_samples(root, "mono")
    assert all(Path(s.path).parent == fake_package / "images" for s in train)
    assert (root / "mrkd_split_mono.json").is_file() and sorted(p.name for p in root.iterdir()) == ["mrkd_split_mono.json"]
    assert check_dataset("elpv", tmp_path / "elsewhere") == []  # a root that does not exist yet is fine


def test_missing_package_is_one_line_naming_the_extra(no_package, tmp_path, capsys):
    root = tmp_path / "elpv"
    with pytest.raises(DataError) as e:
        get_dataset("elpv").train_samples(root, "mono")
    msg = str(e.value)
    assert "\n" not in msg and "pip install 'mrkd[elpv]'" in msg and "elpv-dataset==1.0.0.post1" in msg
    for argv in (["train", str(root), "--dataset", "elpv", "-c", "mono", "-o", str(tmp_path / "m"), *FAST],
                 ["data", "check", str(root), "--dataset", "elpv"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "mrkd[elpv]" in err and "Traceback" not in err
    # every other dataset works without the extra
    assert get_dataset("folder").categories(datagen.make_mvtec(tmp_path / "mv")) == ["bottle", "grid"]


def test_check_reports_label_and_file_problems(root):
    assert check_dataset("elpv", root) == []
    labels = root / "labels.csv"
    lines = labels.read_text().splitlines()
    lines[2] = lines[2].replace("mono", "cdte").replace("poly", "cdte")
    lines[4] = lines[4].split()[0] + "  0.5  mono"
    labels.write_text("\n".join(lines) + "\n")
    gone = root / lines[0].split()[0]
    gone.unlink()
    stray = datagen.write_image(root / "images" / "extra.png", 8, 8, gray=True)
    upper = root / lines[1].split()[0]
    upper.rename(upper.with_suffix(".PNG"))  # listed as .png: still found
    found = {(p.kind, p.path) for p in check_dataset("elpv", root)}
    assert found == {("unreadable", f"{labels}:3"), ("unreadable", f"{labels}:5"),
                     ("missing_file", str(gone)), ("unexpected", str(stray))}
    with pytest.raises(DataError, match=r"labels.csv:3: module type 'cdte' is not one of mono, poly"):
        get_dataset("elpv").categories(root)


def test_cli_train_and_evaluate_as_the_user_types_it(fake_package, tmp_path):
    root, models = tmp_path / "elpv", tmp_path / "models"
    assert main(["train", str(root), "--dataset", "elpv", "-c", "mono", "-o", str(models), *FAST]) == 0
    assert main(["evaluate", str(root), "--dataset", "elpv", "-c", "mono", "-m", str(models),
                 "--num-workers", "0", "--evaluation-id", "ev"]) == 0
    (cat_dir,) = (models / "evaluations" / "ev" / "elpv" / "mono").iterdir()
    record = json.loads((cat_dir / "metrics.json").read_text())
    assert record["n_test"] == len(get_dataset("elpv").test_samples(root, "mono"))
    assert 0.0 <= record["metrics"]["image_auroc"] <= 1.0
    assert all(record["metrics"][m] is None and record["absent_metrics"][m] for m in PIXEL_METRICS)


def test_spec_tasks_run_through_the_engine(fake_package, tmp_path):
    """What a spec under flows/specs/ with `- name: elpv` fans out (default root <data_root>/elpv)."""
    spec = parse_spec({"name": "elpv-smoke", "datasets": [{"name": "elpv"}],
                       "base": {"backbone": "resnet18", "teacher_weights": "none", "image_size": 32, "epochs": 1,
                                "batch_size": 4, "num_workers": 0, "progress": False}}, "test")
    tasks = spec.tasks(str(tmp_path / "data"))
    assert [(t.dataset, t.category) for t in tasks] == [("elpv", "mono"), ("elpv", "poly")]
    assert tasks[0].data_root == str(tmp_path / "data" / "elpv")
    store = ArtifactStore(tmp_path / "store")
    assert train_evaluate(tasks[1], store, "r1").status == "trained"
    row = read_metrics(store, "r1").iloc[0]
    assert row["dataset"] == "elpv" and row["n_test_anomalous"] == COUNTS[("poly", 3)]
    assert row[ABSENT_COLUMN] and np.isnan(row["pixel_auroc"]) and 0.0 <= row["image_auroc"] <= 1.0


def test_the_real_installed_package():
    """Reads elpv-dataset itself (installed by `make test` / `make demo`: the extra 'elpv')."""
    try:
        importlib.import_module("elpv_dataset")
    except ImportError:
        pytest.fail("elpv-dataset is not installed: pip install 'elpv-dataset==1.0.0.post1' "
                    "(make test installs the extra 'elpv')")
    from mrkd_core.data.elpv import data_dir

    data = data_dir(Path("/nonexistent-root-without-labels"))
    cells = read_labels(data / "labels.csv")
    counts = Counter((c.kind, c.thirds) for c in cells)
    assert counts == {("mono", 0): 588, ("mono", 1): 117, ("mono", 2): 56, ("mono", 3): 313,
                      ("poly", 0): 920, ("poly", 1): 178, ("poly", 2): 50, ("poly", 3): 402}
    image = load_image(data / cells[0].name, None)
    assert image.shape == (300, 300, 3) and (image[..., 0] == image[..., 2]).all()


def test_the_demo_spec_on_elpv_lookalikes(tmp_path, monkeypatch):
    """`make demo`'s ELPV part (flows/specs/demo.yaml, narrowed to 1 epoch at 32 px): subsampled as the spec
    declares, keyed apart from the whole data, and reported with the subsample named and real-cell heatmaps."""
    from mrkd_core.partitioned import read_scores
    from mrkd_core.report import write_report
    from mrkd_core.results import read_maps
    from mrkd_core.specs import load_spec

    counts = {("mono", 0): 130, ("mono", 3): 80, ("poly", 0): 5, ("poly", 3): 2}  # 104 train, 26 + 80 test
    site = datagen.make_elpv_package(tmp_path / "site", counts=counts)
    real = sys.modules.pop("elpv_dataset", None)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    try:
        spec = load_spec("demo", [Path(__file__).resolve().parents[2] / "flows" / "specs"]).narrow(epochs=1, image_size=32)
        tasks = [t for t in spec.tasks(str(tmp_path / "data")) if t.dataset == "elpv"]
        assert [(t.category, t.variant) for t in tasks] == [("mono", "mrkd"), ("mono", "baseline")]
        assert all((t.config.train_subsample, t.config.test_subsample) == (96, 100) for t in tasks)
        whole = tasks[0].config.replace(train_subsample=0, test_subsample=0)
        assert whole.config_hash() != tasks[0].config.config_hash()
        store = ArtifactStore(tmp_path / "store")
        runs = {}
        for task in tasks[:1]:  # the baseline differs only in its config
            task = dataclasses.replace(task, config=task.config.replace(num_workers=0, eval_batch_size=50))
            runs[task.variant] = train_evaluate(task, store, "demo").run_dir
        metrics = read_metrics(store, "demo")
        assert set(metrics["n_train"]) == {96} and set(metrics["n_test"]) == {100}
        triples = read_maps(store, runs["mrkd"])
        assert [m is None for _, m, _ in triples] == [True] * len(triples)
        out = write_report(store, "demo", metrics, read_scores(store, "demo"),
                           maps_provider=lambda dataset, cat: read_maps(store, runs["mrkd"]))
    finally:
        sys.modules.pop("elpv_dataset", None)
        if real is not None:
            sys.modules["elpv_dataset"] = real
    md = store.read_bytes("reports/demo/measured.md").decode()
    assert "elpv/mono: 96 training images (train_subsample=96), 100 test images (test_subsample=100)" in md
    assert "| efficientnet_lite0 |" in md and "| imagenet |" in md and "teacher_weights=none" not in md
    assert any(p.endswith("heatmaps_elpv_mono.png") for p in out["figures"])
    page = store.read_bytes(out["html"]).decode()
    assert "rows, where the test set has them: anomalous, anomalous, normal" in page
