"""VisA, MVTec AD 2 and MVTec LOCO AD read in their published layouts; every layout recognised; their checks.

The trees are ``tests/datagen.py``'s copies of the published layouts (a few generated images
per category): VisA's split file and instance-labelled masks, MVTec AD 2's validation and
private sets, LOCO's ground-truth folders with one PNG per defect and ``defects_config.json``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mrkd_core.cli import main
from mrkd_core.data import get_dataset
from mrkd_core.data.detect import recognise
from mrkd_core.data.fingerprint import fingerprint_samples
from mrkd_core.data.io import load_mask
from mrkd_core.data.validate import check_dataset, computed_metrics
from mrkd_core.errors import DataError
from mrkd_core.metrics import METRIC_NAMES, SaturatedRegion, au_spro
from tests import datagen


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("benchmark-trees")
    return {"visa": datagen.make_visa(base / "visa"), "mvtec_ad2": datagen.make_mvtec_ad2(base / "mvtec_ad2"),
            "mvtec_loco": datagen.make_mvtec_loco(base / "mvtec_loco")}


def _copy(trees, name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trees[name], tmp_path / name))


# --------------------------------------------------------------------------- reading the layouts
def test_visa_follows_the_published_split_and_binarises_instance_masks(trees):
    root, visa = trees["visa"], get_dataset("visa")
    assert visa.categories(root) == list(datagen.VISA_OBJECTS)
    train, test = visa.train_samples(root, "pcb1"), visa.test_samples(root, "pcb1")
    assert [Path(s.path).relative_to(root).as_posix() for s in train] == [
        f"pcb1/Data/Images/Normal/{i:04d}.JPG" for i in range(3)]
    assert [(s.label, s.defect_type) for s in test] == [(0, "good")] * 2 + [(1, "anomaly")] * 2
    first = test[2]
    assert first.mask_path.endswith("pcb1/Data/Masks/Anomaly/000.png")
    raw = np.asarray(Image.open(first.mask_path))
    assert set(np.unique(raw)) == {0, 1, 2}  # two instances
    assert load_mask(first.mask_path, None).sum() == (raw > 0).sum()  # every instance is defect


def test_mvtec_ad2_splits(trees):
    root, ad2 = trees["mvtec_ad2"], get_dataset("mvtec_ad2")
    assert ad2.categories(root) == list(datagen.MVTEC_AD2_SCENARIOS)
    test = ad2.test_samples(root, "vial")
    assert [(s.label, s.defect_type) for s in test] == [(0, "good")] * 2 + [(1, "bad")] * 2
    assert test[2].mask_path.endswith("vial/test_public/ground_truth/bad/000_regular_mask.png")
    assert len(ad2.validation_samples(root, "vial")) == 2
    private = ad2.private_samples(root, "vial", "test_private_mixed")
    assert [Path(s.path).name for s in private] == ["000_mixed.png", "001_mixed.png"]
    protocol = ad2.evaluation_protocol(root, "vial")
    assert protocol.inputs() == ad2.validation_samples(root, "vial")  # fingerprinted with the test split


def test_loco_masks_are_the_union_of_each_folder(trees):
    root, loco = trees["mvtec_loco"], get_dataset("mvtec_loco")
    test = loco.test_samples(root, "pushpins")
    assert [s.defect_type for s in test] == ["good"] * 2 + ["logical_anomalies"] * 2 + ["structural_anomalies"] * 2
    folder = Path(test[2].mask_path)
    assert folder.is_dir() and [p.name for p in sorted(folder.iterdir())] == ["000.png", "001.png"]
    union = np.zeros((40, 48), dtype=bool)
    for png in folder.iterdir():
        union |= np.asarray(Image.open(png)) > 0
    assert (load_mask(folder, None) == union).all() and union.sum() < 160 + 192  # the two defects overlap


def test_a_changed_defect_png_changes_the_test_fingerprint(trees, tmp_path):
    root = _copy(trees, "mvtec_loco", tmp_path)
    loco = get_dataset("mvtec_loco")
    before = fingerprint_samples(loco.test_samples(root, "screw_bag"), root).digest
    datagen.write_valued_mask(root / "screw_bag/ground_truth/logical_anomalies/000/001.png", 48, 40,
                              [(0, 0, 5, 5, 252)])
    assert fingerprint_samples(loco.test_samples(root, "screw_bag"), root).digest != before


# --------------------------------------------------------------------------- recognising layouts
def test_every_layout_is_recognised(trees, tmp_path):
    made = {
        "mvtec": datagen.make_mvtec(tmp_path / "mvtec", grayscale=()),
        "btad": datagen.make_btad(tmp_path / "btad"),
        "mtd": datagen.make_mtd(tmp_path / "mtd", n_free=3, n_per_defect=1),
        "elpv": datagen.make_elpv(tmp_path / "elpv"),
        "folder": datagen.make_mvtec(tmp_path / "parts", categories=("bracket",)),
        **trees,
    }
    for name, root in made.items():
        assert recognise(root).name == name, name
    shutil.rmtree(tmp_path / "parts" / "bracket" / "ground_truth")
    assert recognise(tmp_path / "parts") .name == "folder"
    assert "image-labelled" in recognise(tmp_path / "parts").why
    with pytest.raises(DataError, match="no known dataset layout"):
        recognise(tmp_path / "elpv" / "images")


def test_data_check_on_loco_names_the_layout_and_what_evaluate_computes(trees, capsys):
    root = trees["mvtec_loco"]
    assert main(["data", "check", str(root), "-c", "juice_bottle"]) == 0  # default --dataset auto
    out = capsys.readouterr().out
    assert f"{root}: layout mvtec_loco, recognised by" in out
    assert "juice_bottle: pixel masks (ground_truth/<type>/<id>/*.png, one PNG per defect" in out
    assert "evaluate computes " + ", ".join(computed_metrics("mvtec_loco", root, "juice_bottle")) in out
    assert "AU-sPRO (FPR 0.05) per anomaly type" in out and "no problems found" in out
    # Asked to read it as a plain folder, it says what the folder is instead of calling every
    # mask missing without a word (issue 27, item 2).
    assert main(["data", "check", str(root), "--dataset", "folder", "-c", "juice_bottle"]) == 1
    assert "looks like mvtec_loco" in capsys.readouterr().out


def test_computed_metrics_per_layout(trees):
    assert computed_metrics("visa", trees["visa"], "candle") == METRIC_NAMES
    assert computed_metrics("mvtec_ad2", trees["mvtec_ad2"], "can")[-3:] == ("au_pro_005", "seg_f1", "seg_threshold")
    assert computed_metrics("mvtec_loco", trees["mvtec_loco"], "pushpins")[-1] == "au_spro_mean_types"


# --------------------------------------------------------------------------- checks
def test_visa_check_finds_missing_and_unlisted_files(trees, tmp_path):
    root = _copy(trees, "visa", tmp_path)
    (root / "candle/Data/Images/Anomaly/001.JPG").unlink()
    datagen.write_image(root / "candle/Data/Images/Normal/9999.JPG", 48, 40)
    (root / "candle/Data/Masks/Anomaly/000.png").unlink()
    kinds = {(Path(p.path).name, p.kind) for p in check_dataset("visa", root, ["candle"])}
    assert kinds == {("001.JPG", "missing_file"), ("9999.JPG", "unexpected"), ("000.png", "missing_mask")}
    (root / "split_csv" / "1cls.csv").write_text("object,split,label,image,mask\ncandle,train,anomaly,x.JPG,\n")
    with pytest.raises(DataError, match=r"1cls.csv:2: .* is not a split row"):
        get_dataset("visa").train_samples(root, "candle")


def test_loco_check_finds_bad_mask_values_orphan_folders_and_a_missing_config(trees, tmp_path):
    root = _copy(trees, "mvtec_loco", tmp_path)
    cat = root / "pushpins"
    datagen.write_valued_mask(cat / "ground_truth/structural_anomalies/001/000.png", 48, 40, [(2, 2, 9, 9, 77)])
    (cat / "ground_truth/logical_anomalies/007").mkdir()
    datagen.write_valued_mask(cat / "ground_truth/logical_anomalies/007/000.png", 48, 40, [(2, 2, 9, 9, 251)])
    problems = check_dataset("mvtec_loco", root, ["pushpins"])
    assert {(Path(p.path).relative_to(cat).as_posix(), p.kind) for p in problems} == {
        ("ground_truth/structural_anomalies/001/000.png", "mask_value"),
        ("ground_truth/logical_anomalies/007", "unexpected"),
    }
    assert "pixel value 77 is no defect type" in problems[0].message + problems[1].message
    (cat / "defects_config.json").unlink()
    assert [p.kind for p in check_dataset("mvtec_loco", root, ["pushpins"])].count("missing_file") == 1
    with pytest.raises(DataError, match="defects_config.json: not found"):
        get_dataset("mvtec_loco").evaluation_protocol(root, "pushpins")


def test_loco_config_entries_are_checked_as_the_evaluation_code_does(trees, tmp_path):
    root = _copy(trees, "mvtec_loco", tmp_path)
    config = root / "pushpins" / "defects_config.json"
    entries = json.loads(config.read_text())
    entries[0]["saturation_threshold"] = 0.5  # absolute thresholds are whole pixels
    config.write_text(json.dumps(entries))
    with pytest.raises(DataError, match="entry 0 .* is not a defect type"):
        get_dataset("mvtec_loco").evaluation_protocol(root, "pushpins")


def test_ad2_check_finds_missing_validation_and_stray_private_folders(trees, tmp_path):
    root = _copy(trees, "mvtec_ad2", tmp_path)
    shutil.rmtree(root / "rice" / "validation" / "good")
    (root / "rice" / "test_private" / "good").mkdir()
    problems = {(Path(p.path).relative_to(root / "rice").as_posix(), p.kind)
                for p in check_dataset("mvtec_ad2", root, ["rice"])}
    assert problems == {("validation/good", "missing_file"), ("test_private/good", "unexpected")}
    with pytest.raises(DataError, match="no validation images"):
        get_dataset("mvtec_ad2").evaluation_protocol(root, "rice")


# --------------------------------------------------------------------------- LOCO's protocol
def test_loco_protocol_equals_au_spro_on_its_channels(trees):
    """Per type: that type's images and the good ones; each PNG its own region, saturation from the config
    (the absolute one scaled from original to evaluated pixels); means of the two types."""
    root, loco = trees["mvtec_loco"], get_dataset("mvtec_loco")
    samples = loco.test_samples(root, "breakfast_box")
    protocol = loco.evaluation_protocol(root, "breakfast_box")
    rng = np.random.default_rng(3)
    size = 24
    maps = rng.random((len(samples), size, size)).astype(np.float32)
    scores = maps.reshape(len(samples), -1).max(axis=1)
    got = protocol.compute(maps, np.zeros_like(maps, dtype=np.uint8), scores, samples, lambda s: None)
    scale = size * size / (48 * 40)
    expected = {}
    for kind, folder in (("logical", "logical_anomalies"), ("structural", "structural_anomalies")):
        keep = [i for i, s in enumerate(samples) if s.defect_type in ("good", folder)]
        regions = []
        for j, i in enumerate(keep):
            if samples[i].label == 0:
                continue
            for png in sorted(Path(samples[i].mask_path).iterdir()):
                raw = np.asarray(Image.open(png))
                small = np.asarray(Image.fromarray(raw > 0).resize((size, size), Image.Resampling.NEAREST))
                value, area = int(raw.max()), int(small.sum())
                sat = {251: min(30 * scale, area), 252: max(int(0.5 * area), 1), 253: float(area)}[value]
                regions.append(SaturatedRegion(j, small, sat))
        expected[f"au_spro_{kind}"] = au_spro(maps[keep], regions, 0.05)
    for kind in ("logical", "structural"):
        assert got[f"au_spro_{kind}"] == pytest.approx(expected[f"au_spro_{kind}"], abs=1e-12)
    assert got["au_spro_mean_types"] == pytest.approx((expected["au_spro_logical"] + expected["au_spro_structural"]) / 2)
    assert got["image_auroc_mean_types"] == pytest.approx(
        (got["image_auroc_logical"] + got["image_auroc_structural"]) / 2)
