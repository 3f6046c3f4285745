"""Dataset registry, loaders (MVTec AD, BTAD, MTD, folder), image I/O, torch datasets, validation."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from mrkd_core.data import DATASETS, Sample, get_dataset
from mrkd_core.data.base import DatasetLayout
from mrkd_core.data.catalog import catalogued
from mrkd_core.data.io import load_image, load_mask, load_pair
from mrkd_core.data.mtd import MTD, draw_split, load_or_create_split
from mrkd_core.data.torch_datasets import TestDataset, TrainImages
from mrkd_core.data.validate import PROBLEM_KINDS, check_dataset, format_problems
from mrkd_core.errors import ConfigError, DataError
from tests import datagen

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture
def mvtec(tmp_path):
    return datagen.make_mvtec(tmp_path / "mvtec")


@pytest.fixture
def btad(tmp_path):
    return datagen.make_btad(tmp_path / "btad")


@pytest.fixture
def mtd(tmp_path):
    return datagen.make_mtd(tmp_path / "mtd", n_free=10, n_per_defect=2)


def _one_line_error(excinfo, *fragments: str) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for f in fragments:
        assert f in msg, (f, msg)
    return msg


# --------------------------------------------------------------------------- registry
def test_registry_names_and_download_capability():
    assert {"mvtec", "visa", "mvtec_ad2", "mvtec_loco", "btad", "mtd", "folder"} <= set(DATASETS)
    for name in ("mvtec", "visa", "mvtec_ad2", "mvtec_loco", "btad", "mtd"):
        assert callable(get_dataset(name).download)
    assert not hasattr(get_dataset("folder"), "download")  # the CLI relies on this
    assert get_dataset("mvtec").known_categories == (
        "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
        "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper")
    assert get_dataset("btad").known_categories == ("01", "02", "03")
    with pytest.raises(ConfigError, match="unknown dataset 'kolektor'"):
        get_dataset("kolektor")


def test_catalogued_decorator_adds_a_dataset_in_one_place():
    try:
        @catalogued("toy-extra")
        class Toy(DatasetLayout):
            def categories(self, root):
                return ["a"]

            def train_samples(self, root, category):
                return []

            def test_samples(self, root, category):
                return []

            def check(self, root, categories=None):
                return []

        assert get_dataset("toy-extra").categories("/x") == ["a"]
        assert get_dataset("toy-extra").name == "toy-extra"
    finally:
        DATASETS.pop("toy-extra", None)


# --------------------------------------------------------------------------- MVTec AD
def test_mvtec_splits_counts_labels_masks(mvtec):
    ds = get_dataset("mvtec")
    assert ds.categories(mvtec) == ["bottle", "grid"]  # canonical order, only those present
    train = ds.train_samples(mvtec, "bottle")
    assert len(train) == 3
    assert all(s.label == 0 and s.mask_path is None and s.defect_type == "good" for s in train)
    assert [s.path.rsplit("/", 1)[1] for s in train] == ["000.png", "001.png", "002.png"]
    test = ds.test_samples(mvtec, "grid")
    assert len(test) == 2 + 2 * 2
    assert [s.defect_type for s in test] == ["good", "good", "crack", "crack", "scratch", "scratch"]
    assert [s.label for s in test] == [0, 0, 1, 1, 1, 1]
    for s in test:
        assert s.category == "grid"
        if s.label:
            assert s.mask_path.endswith(f"ground_truth/{s.defect_type}/{s.path.rsplit('/', 1)[1][:3]}_mask.png")
        else:
            assert s.mask_path is None


def test_mvtec_unknown_or_absent_category(mvtec):
    ds = get_dataset("mvtec")
    with pytest.raises(DataError) as e:
        ds.train_samples(mvtec, "bagel")
    _one_line_error(e, "not a mvtec category", "bottle")
    with pytest.raises(DataError) as e:
        ds.train_samples(mvtec, "screw")
    _one_line_error(e, "screw", "category folder not found", "available: bottle, grid")
    with pytest.raises(DataError, match="dataset folder not found"):
        ds.categories(mvtec / "nope")


def test_folder_discovers_categories_and_matches_mvtec(mvtec):
    (mvtec / "not_a_category").mkdir()
    ds = get_dataset("folder")
    assert ds.categories(mvtec) == ["bottle", "grid"]
    assert ds.test_samples(mvtec, "bottle") == [
        Sample(s.path, s.mask_path, s.label, s.defect_type, "bottle")
        for s in get_dataset("mvtec").test_samples(mvtec, "bottle")
    ]


def test_missing_mask_is_one_clear_error(mvtec):
    mask = mvtec / "bottle" / "ground_truth" / "crack" / "001_mask.png"
    mask.unlink()
    with pytest.raises(DataError) as e:
        get_dataset("mvtec").test_samples(mvtec, "bottle")
    _one_line_error(e, "bottle/test/crack/001.png", "mask missing", str(mask))


def test_missing_or_empty_train_folder(mvtec):
    for p in (mvtec / "bottle" / "train" / "good").iterdir():
        p.unlink()
    with pytest.raises(DataError) as e:
        get_dataset("mvtec").train_samples(mvtec, "bottle")
    _one_line_error(e, "bottle/train/good", "no training images")
    (mvtec / "bottle" / "train" / "good").rmdir()
    with pytest.raises(DataError, match="training folder not found"):
        get_dataset("mvtec").train_samples(mvtec, "bottle")


# --------------------------------------------------------------------------- BTAD
def test_btad_products_formats_and_masks(btad):
    ds = get_dataset("btad")
    assert ds.categories(btad) == ["01", "02", "03"]
    for product, (img_ext, mask_ext) in datagen.BTAD_FORMATS.items():
        train = ds.train_samples(btad, product)
        assert len(train) == 3 and all(s.path.endswith(img_ext) and s.defect_type == "ok" for s in train)
        test = ds.test_samples(btad, product)
        assert [(s.defect_type, s.label) for s in test] == [("ok", 0)] * 2 + [("ko", 1)] * 2
        for s in test[2:]:
            assert s.mask_path.endswith(f"ground_truth/ko/{s.path.rsplit('/', 1)[1][:-4]}{mask_ext}")
    s = ds.test_samples(btad, "03")[-1]
    image, mask = load_pair(s.path, s.mask_path, 24)
    assert image.shape == (24, 24, 3) and mask.shape == (24, 24) and set(np.unique(mask)) == {0, 1}


# --------------------------------------------------------------------------- MTD
def test_mtd_split_is_80_percent_seeded_persisted(mtd):
    ds = get_dataset("mtd")
    assert ds.categories(mtd) == ["mtd"]
    train, test = ds.train_samples(mtd, "mtd"), ds.test_samples(mtd, "mtd")
    assert len(train) == 8  # floor(0.8 · 10)
    assert len(test) == 2 + 5 * 2
    assert {s.path for s in train}.isdisjoint(s.path for s in test)
    assert sum(s.label for s in test) == 10
    assert {s.defect_type for s in test} == {"good", "blowhole", "break", "crack", "fray", "uneven"}
    for s in test:
        assert (s.mask_path is None) == (s.label == 0)
        if s.mask_path:
            assert s.mask_path == s.path[:-4] + ".png"
    stored = json.loads((mtd / "mrkd_split.json").read_text())
    assert stored["seed"] == 0 and stored["train_fraction"] == 0.8
    assert sorted(stored["train"]) == sorted(s.path[len(str(mtd)) + 1:] for s in train)
    assert len(stored["test_good"]) == 2


def test_mtd_split_file_wins_over_seed(mtd, caplog):
    first = load_or_create_split(mtd, seed=0)
    other_seed = draw_split(list(first.train + first.test_good), seed=1)
    assert other_seed.train != first.train  # the seed matters when drawing ...

    class MTD7(MTD):
        split_seed = 7

    with caplog.at_level(logging.WARNING, logger="mrkd_core.data.mtd"):
        reused = MTD7().train_samples(mtd, "mtd")
    assert [s.path for s in reused] == [s.path for s in get_dataset("mtd").train_samples(mtd, "mtd")]
    assert "using the stored split (seed 0" in caplog.text  # ... but the stored file wins, loudly
    assert draw_split(list(first.train + first.test_good), seed=0) == first  # deterministic


def test_mtd_differnet_counts():
    names = [f"MT_Free/Imgs/{i}.jpg" for i in range(952)]
    split = draw_split(names, seed=0)
    assert (len(split.train), len(split.test_good)) == (761, 191)  # DifferNet lists 761


def test_mtd_missing_listed_file_and_variable_sizes(mtd):
    ds = get_dataset("mtd")
    train = ds.train_samples(mtd, "mtd")
    sizes = {Image.open(s.path).size for s in train}
    assert len(sizes) > 3  # variable sizes on disk ...
    assert all(load_image(s.path, 32).shape == (32, 32, 3) for s in train)  # ... one size loaded
    gone = train[0].path
    os.remove(gone)
    with pytest.raises(DataError) as e:
        ds.train_samples(mtd, "mtd")
    _one_line_error(e, gone, "mrkd_split.json", "delete the split file")
    with pytest.raises(DataError, match="one category"):
        ds.train_samples(mtd, "tiles")


# --------------------------------------------------------------------------- io
def test_load_image_matches_official_preprocessing(mvtec):
    rgb = mvtec / "bottle" / "train" / "good" / "000.png"
    gray = mvtec / "grid" / "train" / "good" / "000.png"
    assert Image.open(gray).mode == "L"
    for path in (rgb, gray):
        ours = load_image(path, 24)
        official = np.asarray(Image.open(path).convert("RGB").resize((24, 24), Image.Resampling.LANCZOS))
        assert ours.dtype == np.uint8 and ours.shape == (24, 24, 3)
        np.testing.assert_array_equal(ours, official)
    g = load_image(gray, None)
    assert g.shape == (32, 40, 3) and (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()


def test_load_mask_binary_nearest(mvtec):
    mask_path = mvtec / "bottle" / "ground_truth" / "crack" / "000_mask.png"
    full = load_mask(mask_path, None)
    assert full.shape == (32, 40) and full.dtype == np.uint8
    assert set(np.unique(full)) == {0, 1} and int(full.sum()) == 20 * 16  # central quarter
    small = load_mask(mask_path, 16)
    assert small.shape == (16, 16) and set(np.unique(small)) == {0, 1}
    assert small.sum() == 8 * 8  # NEAREST keeps the quarter exactly at an even scale


@pytest.mark.parametrize("plant,fragment", [
    (datagen.plant_zero_byte, "the file is empty, 0 bytes"),
    (datagen.plant_text_as_image, "cannot read image (UnidentifiedImageError"),
    (datagen.plant_truncated, "cannot read image ("),
])
def test_bad_image_files_give_one_clear_error(mvtec, plant, fragment):
    path = plant(mvtec / "bottle" / "train" / "good" / "001.png")
    with pytest.raises(DataError) as e:
        load_image(path, 16)
    _one_line_error(e, str(path), fragment, "replace or remove the file")


def test_decompression_bomb_guard_checks_header_before_decoding(tmp_path, mvtec):
    bomb = datagen.png_with_header_size(tmp_path / "bomb.png", 12_000, 9_000)  # 108 M pixels, 70 bytes
    with pytest.raises(DataError) as e:
        load_image(bomb, 16)
    _one_line_error(e, str(bomb), "12000×9000", "over the limit of 100,000,000", "decompression-bomb")
    small = mvtec / "bottle" / "train" / "good" / "000.png"
    with pytest.raises(DataError, match="over the limit of 1,000"):
        load_image(small, 16, max_pixels=1_000)
    assert load_image(small, 16, max_pixels=40 * 32).shape == (16, 16, 3)


def test_mask_of_other_size_names_both_sizes(mvtec):
    s = next(s for s in get_dataset("mvtec").test_samples(mvtec, "bottle") if s.label)
    datagen.plant_wrong_size_mask(s.mask_path, 20, 10)
    with pytest.raises(DataError) as e:
        load_pair(s.path, s.mask_path, 16)
    _one_line_error(e, s.mask_path, "20×10", "40×32", s.path)


def test_the_check_before_training_reads_headers_only_and_names_every_problem(mvtec, monkeypatch, tmp_path):
    """What the engine checks before the first epoch (validate.require_trainable): sizes and PNG integrity
    from the files' headers and chunks, no pixel decoded."""
    from PIL import ImageFile

    from mrkd_core.data import io as data_io
    from mrkd_core.data.validate import check_samples, require_trainable

    samples = get_dataset("mvtec").test_samples(mvtec, "bottle")
    wrong = next(s for s in samples if s.label)
    datagen.plant_wrong_size_mask(wrong.mask_path, 20, 10)
    cut = datagen.plant_truncated(samples[0].path, keep=0.5)

    def no_decoding(*args, **kwargs):
        raise AssertionError("a pixel was decoded")

    monkeypatch.setattr(data_io, "open_image", no_decoding)
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    problems = check_samples(samples)
    assert [(p.path, p.kind) for p in problems] == [(str(cut), "unreadable"), (wrong.mask_path, "mask_size")]
    assert "mask is 20×10 but its image" in problems[1].message and "40×32" in problems[1].message
    with pytest.raises(DataError) as e:
        require_trainable(samples, "mvtec", str(mvtec), "bottle")
    _one_line_error(e, str(cut), "cannot read image (", "and 1 more problem(s): mrkd data check",
                    "nothing was trained")
    assert check_samples(get_dataset("mvtec").test_samples(mvtec, "grid")) == []


# --------------------------------------------------------------------------- torch datasets
def test_test_dataset_items_and_batches(mvtec):
    samples = get_dataset("mvtec").test_samples(mvtec, "grid")
    ds = TestDataset(samples, 32, MEAN, STD)
    assert len(ds) == 6
    good, bad = ds[0], ds[2]
    assert good["image"].shape == (3, 32, 32) and good["image"].dtype == torch.float32
    restored = good["image"] * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
    expected = torch.from_numpy(load_image(samples[0].path, 32)).permute(2, 0, 1).float() / 255
    assert torch.allclose(restored, expected, atol=1e-5)
    assert good["mask"].shape == (1, 32, 32) and good["mask"].sum() == 0 and good["label"] == 0
    assert bad["mask"].sum() == 16 * 16 and bad["label"] == 1 and bad["defect_type"] == "crack"
    assert bad["path"] == samples[2].path and bad["category"] == "grid"
    batch = next(iter(DataLoader(ds, batch_size=4, num_workers=0)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["label"].tolist() == [0, 0, 1, 1]


def test_train_images_are_uint8_and_bad_file_names_itself(mvtec):
    samples = get_dataset("mvtec").train_samples(mvtec, "grid")
    images = TrainImages(samples, 32)
    assert len(images) == 3
    img = images[1]
    assert isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.shape == (32, 32, 3)
    datagen.plant_zero_byte(samples[2].path)
    with pytest.raises(DataError, match=samples[2].path):
        images[2]
    with pytest.raises(DataError, match=samples[2].path):
        TestDataset(samples, 32, MEAN, STD)[2]


# --------------------------------------------------------------------------- validation
def test_clean_layouts_have_no_problems(mvtec, btad, mtd):
    get_dataset("mtd").train_samples(mtd, "mtd")  # writes mrkd_split.json, which must not be reported
    (mvtec / "license.txt").write_text("CC BY-NC-SA 4.0")
    assert check_dataset("mvtec", mvtec, categories=["bottle", "grid"]) == []
    assert check_dataset("folder", mvtec) == []
    assert check_dataset("btad", btad) == []
    assert check_dataset("mtd", mtd) == []
    assert format_problems([]) == "no problems found"


def test_check_reports_every_problem_at_once(mvtec):
    cat = mvtec / "bottle"
    zero = datagen.plant_zero_byte(cat / "train" / "good" / "000.png")
    text = datagen.plant_text_as_image(cat / "test" / "good" / "001.png")
    (cat / "ground_truth" / "crack" / "001_mask.png").unlink()
    wrong = datagen.plant_wrong_size_mask(cat / "ground_truth" / "scratch" / "000_mask.png", 10, 10)
    stray = cat / "test" / "good" / "notes.docx"
    stray.write_text("x")
    (mvtec / "grid" / "train" / "good").rename(mvtec / "grid" / "train" / "goood")
    (mvtec / "cable" / "train" / "good").mkdir(parents=True)
    (mvtec / "cable" / "test").mkdir()

    problems = check_dataset("mvtec", mvtec, categories=["bottle", "grid", "cable", "screw"])
    found = {(p.kind, p.path) for p in problems}
    assert found == {
        ("empty_file", str(zero)),
        ("unreadable", str(text)),
        ("missing_mask", str(cat / "test" / "crack" / "001.png")),
        ("mask_size", str(wrong)),
        ("unexpected", str(stray)),
        ("unexpected", str(mvtec / "grid" / "train" / "goood")),
        ("no_train_images", str(mvtec / "grid" / "train" / "good")),
        ("empty_category", str(mvtec / "cable")),
        ("missing_category", str(mvtec / "screw")),
    }
    assert all(p.kind in PROBLEM_KINDS for p in problems)
    by_kind = {p.kind: p for p in problems}
    assert "10×10" in by_kind["mask_size"].message and "40×32" in by_kind["mask_size"].message
    assert by_kind["missing_mask"].expected == str(cat / "ground_truth" / "crack" / "001_mask.png")
    report = format_problems(problems)
    assert report.startswith("9 problem(s) found:") and report.count("\n") == 10
    assert f"{zero}: image file is empty (0 bytes) — expected a readable image" in report


def test_check_mvtec_lists_missing_categories_and_strays(mvtec):
    (mvtec / "bottle.zip").write_bytes(b"PK")
    (mvtec / "extra").mkdir()
    problems = check_dataset("mvtec", mvtec)
    kinds = [p.kind for p in problems]
    assert kinds.count("missing_category") == 13  # 15 categories, 2 present
    assert {p.path for p in problems if p.kind == "unexpected"} == {str(mvtec / "bottle.zip"), str(mvtec / "extra")}
    assert check_dataset("mvtec", mvtec / "nowhere")[0].kind == "missing_root"


def test_check_mtd_problems(mtd):
    get_dataset("mtd").train_samples(mtd, "mtd")
    split = json.loads((mtd / "mrkd_split.json").read_text())
    (mtd / split["train"][0]).unlink()
    crack = sorted((mtd / "MT_Crack" / "Imgs").glob("*.jpg"))
    crack[0].with_suffix(".png").unlink()
    datagen.plant_wrong_size_mask(crack[1].with_suffix(".png"), 5, 5)
    (mtd / "MT_Other").mkdir()
    found = {(p.kind, p.path) for p in check_dataset("mtd", mtd)}
    assert found == {
        ("split_mismatch", str(mtd / split["train"][0])),
        ("missing_mask", str(crack[0])),
        ("mask_size", str(crack[1].with_suffix(".png"))),
        ("unexpected", str(mtd / "MT_Other")),
        ("unexpected", str(mtd / split["train"][0][:-4]) + ".png"),  # its mask is now an orphan
    }


# --------------------------------------------------------------------------- file names
def _upper_ext(path):
    """Rename ``path`` to the same name with its extension in upper case."""
    return path.rename(path.with_name(path.stem + path.suffix.upper()))


def test_mvtec_and_folder_match_masks_whatever_the_case_of_extensions(mvtec):
    """The issue's example: test/dent/001.BMP with ground_truth/dent/001_mask.PNG is one pair."""
    cat = mvtec / "bottle"
    image = datagen.write_image(cat / "test" / "dent" / "001.BMP", 40, 32)
    mask = datagen.write_mask(cat / "ground_truth" / "dent" / "001_mask.PNG", 40, 32)
    upper_img = _upper_ext(cat / "test" / "crack" / "000.png")
    upper_mask = _upper_ext(cat / "ground_truth" / "crack" / "001_mask.png")
    for name in ("mvtec", "folder"):
        assert check_dataset(name, mvtec, categories=["bottle"]) == [], name
        by_path = {s.path: s.mask_path for s in get_dataset(name).test_samples(mvtec, "bottle")}
        assert by_path[str(image)] == str(mask)
        assert by_path[str(upper_img)] == str(cat / "ground_truth" / "crack" / "000_mask.png")
        assert by_path[str(cat / "test" / "crack" / "001.png")] == str(upper_mask)


def test_btad_and_mtd_match_masks_whatever_the_case_of_extensions(btad, mtd):
    _upper_ext(btad / "03" / "test" / "ko" / "0000.bmp")
    _upper_ext(btad / "03" / "ground_truth" / "ko" / "0001.bmp")
    _upper_ext(btad / "01" / "ground_truth" / "ko" / "0000.png")
    assert check_dataset("btad", btad) == []
    ko = [s for p in ("01", "03") for s in get_dataset("btad").test_samples(btad, p) if s.label == 1]
    assert len(ko) == 4 and all(s.mask_path and os.path.isfile(s.mask_path) for s in ko)

    crack = sorted((mtd / "MT_Crack" / "Imgs").glob("*.jpg"))
    _upper_ext(crack[0].with_suffix(".png"))
    _upper_ext(crack[1])
    assert check_dataset("mtd", mtd) == []
    masks = {s.path: s.mask_path for s in get_dataset("mtd").test_samples(mtd, "mtd") if s.defect_type == "crack"}
    assert masks == {str(crack[0]): str(crack[0].with_suffix(".PNG")),
                     str(crack[1].with_suffix(".JPG")): str(crack[1].with_suffix(".png"))}


def test_a_mask_in_two_cases_is_used_once_and_the_other_reported(mvtec):
    cat = mvtec / "bottle"
    twin = datagen.write_mask(cat / "ground_truth" / "crack" / "000_mask.PNG", 40, 32)
    problems = check_dataset("folder", mvtec, categories=["bottle"])
    assert [(p.kind, p.path) for p in problems] == [("unexpected", str(twin))]
