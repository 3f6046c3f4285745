"""Inference: thresholds, calibration, and predictions that depend on the image and the model only.

A tiny untrained ResNet18 at 64 px is enough: every property here is about the
inference path, not about how well the model detects.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mrkd_core.data import get_dataset
from mrkd_core.data.io import load_image, load_image_bytes
from mrkd_core.errors import DataError
from mrkd_core.evaluate import evaluate
from mrkd_core.inference import Calibration, Predictor, calibrate_model, predict_images
from mrkd_core.inference.calibration import (
    CalibrationData,
    CalibrationSet,
    calibrate,
    expected_false_alarm_rate,
    f1_threshold,
    false_alarm_threshold,
    normalize,
    rate_above,
)
from mrkd_core.inference.images import read_image
from mrkd_core.inference.overlays import mask_png, overlay
from mrkd_core.metrics import f1_max_image
from mrkd_core.model import build_mrkd
from mrkd_core.model_io import load_model_file, save_model, write_calibration
from mrkd_core.storage import ArtifactStore
from tests.datagen import plant_truncated, write_image
from tests.tiny import TINY_CFG, tiny_category

torch.set_num_threads(2)
CFG = TINY_CFG


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tiny_category(tmp_path_factory, "inference-data", n_train=4, n_test_good=4, n_test_defect=4, seed=7)


@pytest.fixture(scope="module")
def test_samples(data_root):
    return get_dataset("folder").test_samples(str(data_root), "obj_disc")


@pytest.fixture(scope="module")
def model_files(tmp_path_factory, test_samples):
    """(uncalibrated model.pt, calibrated model.pt): the same weights."""
    folder = tmp_path_factory.mktemp("inference-models")
    torch.manual_seed(0)
    model = build_mrkd(CFG).eval()
    store = ArtifactStore(folder)
    plain = save_model(model, CFG, store, "plain/model.pt", extra={"category": "obj_disc"})
    cal = calibrate_model(model, CFG, test_samples=test_samples, category="obj_disc")
    calibrated = save_model(model, CFG, store, "calibrated/model.pt", extra={"category": "obj_disc"},
                            calibration=cal.to_dict())
    return plain, calibrated


# ---------------------------------------------------------------- thresholds (pure)
def test_false_alarm_threshold_reaches_the_target_rate_on_generated_scores():
    """Calibrated on n defect-free scores, the rate on fresh ones is the target within sampling error."""
    rng = np.random.default_rng(0)
    q, n, m = 0.01, 3000, 400_000
    for shape in (2.0, 9.0):  # skewed and near-normal score distributions
        good = rng.gamma(shape, 1.0, n)
        t = false_alarm_threshold(good, q)
        fresh = rng.gamma(shape, 1.0, m)
        achieved = rate_above(fresh, t)
        # the threshold's own sampling error (n calibration scores) dominates the fresh sample's
        sigma = np.sqrt(q * (1 - q) / n) + np.sqrt(q * (1 - q) / m)
        assert abs(achieved - q) < 3 * sigma, (shape, achieved)
        assert rate_above(good, t) <= q  # never more false alarms than asked on the calibration set


def test_false_alarm_threshold_is_conservative_on_average_and_flags_small_sets():
    """Over many calibrations the mean rate lies in [q − 1/(n+1), q] (the split-conformal bound)."""
    rng = np.random.default_rng(1)
    q, n = 0.05, 199
    rates = [rate_above(rng.normal(size=20_000), false_alarm_threshold(rng.normal(size=n), q)) for _ in range(150)]
    assert q - 1 / (n + 1) - 0.003 < np.mean(rates) <= q + 0.003
    assert expected_false_alarm_rate(n, q) <= q
    assert expected_false_alarm_rate(20, 0.01) == pytest.approx(1 / 21)  # too few images for 1 %
    assert false_alarm_threshold([1.0, 2.0, 3.0], 0.01) == 3.0


def test_f1_threshold_is_the_metric_f1_and_separates_the_calibration_set():
    scores = np.array([0.1, 0.2, 0.35, 0.3, 0.8, 0.9])
    labels = np.array([0, 0, 0, 1, 1, 1])
    t, f1 = f1_threshold(scores, labels)
    assert f1 == pytest.approx(f1_max_image(scores, labels))
    assert 0.2 < t < 0.3  # half-way between 0.2 and the smallest positive reaching the best F1
    with pytest.raises(ValueError, match="positive"):
        f1_threshold(scores, np.zeros(6))


def test_normalisation_puts_the_threshold_at_one_half():
    out = normalize([0.0, 1.0, 2.0, 10.0], threshold=1.0, low=0.0, high=2.0)
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0, 1.0])


def test_calibrate_false_alarm_policy_records_how_it_was_obtained():
    rng = np.random.default_rng(2)
    n = 300
    data = CalibrationData(scores=rng.gamma(3.0, 1.0, n), labels=np.zeros(n, dtype=int),
                           maps=rng.gamma(3.0, 0.1, (n, 8, 8)).astype(np.float32),
                           masks=np.zeros((n, 8, 8), dtype=np.uint8), paths=[f"g{i}.png" for i in range(n)])
    cset = CalibrationSet([], "held-out train/good", "validation_fraction 0.2 of train/good, seed 111")
    cal = calibrate(data, "false_alarm_rate", cset, 0.01)
    assert cal.policy == cal.pixel_policy == "false_alarm_rate" and cal.target_false_alarm_rate == 0.01
    assert cal.achieved_false_alarm_rate <= 0.01 and cal.achieved_pixel_false_alarm_rate <= 0.01
    assert cal.achieved_pixel_false_alarm_rate > 0.009  # 19,200 pixels resolve 1 %
    assert not cal.on_evaluation_images and cal.n_good == n and len(cal.images) == n
    assert float(cal.normalize_score(cal.image_threshold)) == 0.5
    assert Calibration.from_dict(cal.to_dict()) == cal
    few = CalibrationData(data.scores[:20], data.labels[:20], data.maps[:20], data.masks[:20], data.paths[:20])
    small = calibrate(few, "false_alarm_rate", cset, 0.01)
    assert any("cannot resolve" in note for note in small.notes)


# ---------------------------------------------------------------- images in, maps out
def test_the_network_sees_what_the_dataset_loaders_feed_it(tmp_path):
    rgb = write_image(tmp_path / "wide.png", 160, 64)
    grey = write_image(tmp_path / "grey.png", 48, 96, gray=True)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 65535, (40, 70), dtype=np.uint16)).save(deep)
    for path, (w, h) in ((rgb, (160, 64)), (grey, (48, 96)), (deep, (70, 40))):
        original, net = read_image(path, 64)
        assert original.shape == (h, w, 3)
        np.testing.assert_array_equal(net, load_image(path, 64))
    # The loaders' decoding rules (mrkd_core.data.io): EXIF orientation applied, 16-bit TIFF
    # scaled by its container's range, palettes expanded; the input's size is the upright one.
    pixels = np.random.default_rng(1).integers(0, 256, (40, 70, 3), dtype=np.uint8)
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 70×40, shown rotated 90° clockwise: 40×70
    Image.fromarray(pixels).save(rotated, exif=exif, quality=95)
    tiff = tmp_path / "deep.tif"
    Image.fromarray(np.random.default_rng(2).integers(0, 65535, (40, 70), dtype=np.uint16)).save(tiff)
    palette = tmp_path / "palette.png"
    Image.fromarray(pixels).convert("P").save(palette)
    for path, (w, h) in ((rotated, (40, 70)), (tiff, (70, 40)), (palette, (70, 40))):
        original, net = read_image(path, 64)
        assert original.shape == (h, w, 3)
        np.testing.assert_array_equal(original, load_image(path, None))
        np.testing.assert_array_equal(net, load_image(path, 64))


def test_calibration_on_the_test_split_says_so(model_files):
    cal = load_model_file(model_files[1], build=False).calibration
    assert cal["policy"] == "f1" and cal["source"] == "test split" and cal["on_evaluation_images"]
    assert any("test split" in n for n in cal["notes"]) and cal["n_defective"] == 4


# ---------------------------------------------------------------- predictions
def _outputs(report):
    return {p.path: (p.score, open(p.overlay_path, "rb").read(), open(p.mask_path, "rb").read())
            for p in report.predictions}


def test_an_image_gives_the_same_outputs_whatever_the_other_files(model_files, test_samples, tmp_path):
    """Alone, among 7 others, in another order, at batch sizes 1/3/16: the same score and map up
    to float32 rounding (relative 1e-6: no padding, and the CPU convolutions round a pass of one
    small image differently from a pass of several), bitwise for passes of the same size in any order.
    An overlay or mask pixel can differ only where that rounding crosses a colour step or the
    pixel threshold (the colour scale itself is fixed at calibration)."""
    paths = [s.path for s in test_samples]
    x = paths[5]
    alone = _outputs(predict_images(model_files[1], [x], tmp_path / "alone", device="cpu"))
    crowd = _outputs(predict_images(model_files[1], paths[:7], tmp_path / "crowd", device="cpu"))
    shuffled = _outputs(predict_images(model_files[1], paths[:7][::-1], tmp_path / "shuffled", device="cpu"))
    backwards = _outputs(predict_images(model_files[1], paths[::-1], tmp_path / "back", device="cpu"))
    assert alone == _outputs(predict_images(model_files[1], [x], tmp_path / "again", device="cpu"))
    assert crowd == shuffled  # score, overlay and mask bytes: the same passes' sizes, another order
    for p in paths:
        assert crowd.get(p, backwards[p])[0] == pytest.approx(backwards[p][0], rel=1e-6, abs=0)
    assert alone[x][0] == pytest.approx(crowd[x][0], rel=1e-6, abs=0)

    predictor = Predictor.load(model_files[1], device="cpu")
    cal = predictor.calibration
    (one,) = predictor.predict([x])
    among = {p.path: p for p in predictor.predict(paths[:7])}[x]
    scale = float(np.abs(among.anomaly_map).max())
    np.testing.assert_allclose(one.anomaly_map, among.anomaly_map, rtol=0, atol=1e-6 * scale)
    flipped = one.mask != among.mask
    assert np.all(np.abs(among.anomaly_map[flipped] - cal.pixel_threshold) <= 1e-6 * scale)
    a, b = (overlay(p.image, cal.normalize_map(p.anomaly_map)).astype(int) for p in (one, among))
    moved = np.any(a != b, axis=2)
    assert moved.mean() <= 0.01 and np.abs(a - b).max() <= 4  # at most one step of the colour scale
    written = np.asarray(Image.open(tmp_path / "alone" / f"{Path(x).stem}_overlay.png"))
    np.testing.assert_array_equal(a, written)
    # other batch sizes: float32 rounding apart
    for b in (1, 3, 16):
        report = predict_images(model_files[1], paths, tmp_path / f"b{b}", device="cpu", batch_size=b)
        np.testing.assert_allclose([p.score for p in report.predictions], [backwards[p][0] for p in paths],
                                   rtol=1e-6, atol=0)


def test_one_image_costs_one_image_whatever_the_batch_size(model_files, test_samples):
    """No padding: a forward pass holds the images there are, up to batch_size."""
    paths = [s.path for s in test_samples]
    predictor = Predictor.load(model_files[1], device="cpu", batch_size=3)
    seen: list[int] = []
    run = predictor.backend.run
    predictor.backend.run = lambda batch: (seen.append(len(batch)), run(batch))[1]
    list(predictor.predict(paths[:1]))
    list(predictor.predict(paths[:7]))
    predictor.predict_array(np.zeros((40, 50, 3), dtype=np.uint8))
    predictor.predict_decoded([(p, load_image(p, None)) for p in paths[:4]])
    assert seen == [1, 3, 3, 1, 1, 3, 1]


def test_images_decoded_in_memory_get_the_outputs_of_their_files(model_files, test_samples, tmp_path):
    """The HTTP service's door: bytes → load_image_bytes → predict_decoded equals predict on the files."""
    paths = [s.path for s in test_samples[:5]]
    predictor = Predictor.load(model_files[1], device="cpu")
    from_files = list(predictor.predict(paths))
    decoded = predictor.predict_decoded([(p, load_image_bytes(Path(p).read_bytes(), p)) for p in paths])
    report = predict_images(predictor, paths, tmp_path / "out")
    for a, b, row in zip(from_files, decoded, report.predictions):
        assert (a.path, a.width, a.height, a.score, a.verdict) == (b.path, b.width, b.height, b.score, b.verdict)
        np.testing.assert_array_equal(a.mask, b.mask)
        assert b.defect_area_fraction == pytest.approx(float(b.mask.mean()))
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(mask_png(b.mask)))),
                                      np.asarray(Image.open(row.mask_path)))


def test_predict_and_evaluate_give_the_same_scores_and_maps(model_files, test_samples):
    predictor = Predictor.load(model_files[1], device="cpu")
    preds = list(predictor.predict([s.path for s in test_samples]))
    record = load_model_file(model_files[1])
    ev = evaluate(record.model, CFG, test_samples, keep_maps=True, metrics=False)
    np.testing.assert_allclose([p.score for p in preds], [s["score"] for s in ev.scores], rtol=1e-6, atol=0)
    np.testing.assert_allclose(np.stack([p.anomaly_map for p in preds]), ev.maps, rtol=1e-6, atol=1e-6)
    cal = predictor.calibration
    assert [p.verdict for p in preds] == [cal.verdict(s["score"]) for s in ev.scores]
    assert all((p.normalized_score >= 0.5) == (p.verdict == "defective") for p in preds)


def test_non_square_inputs_give_outputs_of_their_own_size(model_files, tmp_path):
    wide = write_image(tmp_path / "in" / "wide.png", 160, 64)
    tall = write_image(tmp_path / "in" / "tall.png", 48, 96, gray=True)
    report = predict_images(model_files[1], [wide, tall], tmp_path / "out", device="cpu")
    for p, (w, h) in zip(report.predictions, ((160, 64), (48, 96))):
        assert (p.width, p.height) == (w, h)
        for png in (p.mask_path, p.overlay_path):
            assert Image.open(png).size == (w, h)
    arrays = list(Predictor.load(model_files[1], device="cpu").predict([wide]))
    assert arrays[0].anomaly_map.shape == arrays[0].mask.shape == (64, 160)


def test_unreadable_files_stop_the_call_or_are_listed_with_the_reason(model_files, test_samples, tmp_path):
    bad = plant_truncated(write_image(tmp_path / "broken.png", 64, 64))
    paths = [test_samples[0].path, str(bad), test_samples[1].path]
    with pytest.raises(DataError, match="broken.png"):
        predict_images(model_files[1], paths, tmp_path / "stop", device="cpu")
    assert not (tmp_path / "stop").exists()  # a call that stops leaves no partial output
    kept = tmp_path / "earlier"
    (kept / "notes.txt").parent.mkdir()
    (kept / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="broken.png"):
        predict_images(model_files[1], paths, kept, device="cpu")
    assert [p.name for p in kept.iterdir()] == ["notes.txt"]  # what was there stays; what it wrote goes
    report = predict_images(model_files[1], paths, tmp_path / "skip", device="cpu", skip_unreadable=True)
    assert report.n_skipped == 1 and [p.path for p in report.predictions] == paths
    skipped = report.predictions[1]
    assert "broken.png" in skipped.error and "cannot read image" in skipped.error and skipped.score is None
    assert all(p.verdict in ("good", "defective") for p in (report.predictions[0], report.predictions[2]))
    import pandas as pd

    table = pd.read_parquet(report.parquet_path)
    assert list(table.columns) == ["path", "width", "height", "score", "normalized_score", "verdict", "threshold",
                                   "mask_path", "overlay_path", "error", "defect_area_fraction", "image_sha256",
                                   "model_source", "model_version", "engine", "predicted_at"]
    assert table["error"].isna().tolist() == [True, False, True]
    csv = pd.read_csv(report.csv_path)
    assert csv.loc[1, "error"] == skipped.error and csv["score"].isna().tolist() == [False, True, False]


def test_a_model_without_calibration_predicts_scores_only_with_a_warning(model_files, test_samples, tmp_path,
                                                                          caplog):
    with caplog.at_level(logging.WARNING):
        report = predict_images(model_files[0], [test_samples[0].path], tmp_path, device="cpu")
    p = report.predictions[0]
    assert p.score > 0 and p.normalized_score is None and p.verdict is None and p.mask_path is None
    assert "mrkd calibrate" in caplog.text
    assert not list(tmp_path.glob("*.png"))


def test_recalibrating_keeps_the_weights_and_the_previous_calibration(model_files, tmp_path):
    src = load_model_file(model_files[1])
    store = ArtifactStore(tmp_path)
    path = save_model(src.model, src.config, store, "model.pt", extra=src.extra, calibration=src.calibration)
    new = {**src.calibration, "image_threshold": 123.0}
    write_calibration(path, new, path)  # a model file of no run directory may be recalibrated in place
    again = load_model_file(path)
    assert again.calibration["image_threshold"] == 123.0
    assert again.calibration_history == [src.calibration]
    for a, b in zip(again.model.state_dict().values(), src.model.state_dict().values()):
        assert torch.equal(a, b)


def test_predict_and_calibration_folders_take_the_images_the_loaders_would(tmp_path):
    from mrkd_core.inference.calibration import folder_samples
    from mrkd_core.inference.commands import collect_images

    for rel in ("b.png", "a/c.PNG", "a/d.jpg", "._b.png", ".ipynb_checkpoints/e.png", "notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    expected = [tmp_path / "a/c.PNG", tmp_path / "a/d.jpg", tmp_path / "b.png"]
    assert collect_images([str(tmp_path)]) == expected  # macOS ._ companions and dot-folders are not images
    assert [s.path for s in folder_samples(tmp_path)] == [str(p) for p in expected]
    assert collect_images([str(tmp_path / "._b.png")]) == [tmp_path / "._b.png"]  # a file named is taken as given
