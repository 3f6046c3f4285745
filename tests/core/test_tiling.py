"""Tiling (issue 26, docs/tiling.md): one module cuts, stitches and smooths for every path.

Tiny frames (96×80, tiles of 32 px every 24 px: overlapping, the last column of tiles
aligned to the right edge) and an untrained ResNet18 at 32 px: every property here is
about the geometry and the paths, not about detection (the benchmark in docs/tiling.md is).
"""

from __future__ import annotations

import csv
import json
import re
import runpy
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mrkd_core.cli import main
from mrkd_core.config import MRKDConfig
from mrkd_core.data.base import Sample
from mrkd_core.data.io import load_image
from mrkd_core.data.torch_datasets import decode_train_images, normalize
from mrkd_core.errors import ConfigError, DataError
from mrkd_core.evaluate import evaluate, infer
from mrkd_core.inference import Predictor, calibrate_model, predict_images
from mrkd_core.inference.export import KEY_PREPROCESSING, onnx_metadata
from mrkd_core.model import build_mrkd
from mrkd_core.model_io import load_model_file, save_model
from mrkd_core.specs import parse_spec
from mrkd_core.storage import ArtifactStore
from mrkd_core.tiling import Tiling, tile_starts
from tests.datagen import make_mvtec

torch.set_num_threads(2)
ROOT = Path(__file__).resolve().parents[2]
CFG = MRKDConfig(backbone="resnet18", teacher_weights="none", image_size=32, tile_size=32, tile_stride=24,
                 num_workers=0, device="cpu", progress=False, eval_batch_size=5)
HEIGHT, WIDTH = 80, 96


def frame(seed: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """A smooth random RGB frame (noise would make every tile alike to the eye, not to the test)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    big = np.array(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR))
    return np.clip(big.astype(int) + rng.integers(-8, 9, big.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def tiled(tmp_path_factory):
    """(model, calibrated model.pt, frame paths) of an untrained tiled model calibrated on those two frames."""
    base = tmp_path_factory.mktemp("tiling")
    frames = []
    for i in range(2):
        frames.append(base / "good" / f"g{i}.png")
        frames[-1].parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(frame(i)).save(frames[-1])
    torch.manual_seed(0)
    model = build_mrkd(CFG).eval()
    cal = calibrate_model(model, CFG, good_folder=base / "good")
    pt = save_model(model, CFG, ArtifactStore(base), "model.pt", calibration=cal.to_dict())
    return model, pt, [str(p) for p in frames]


@pytest.fixture(scope="module")
def predictor(tiled):
    return Predictor.load(tiled[1], device="cpu", batch_size=7)


@pytest.fixture(scope="module")
def predictions(tiled, predictor):
    """The PyTorch Predictor's predictions of the two frames (7 tiles per pass: batches span frames)."""
    return list(predictor.predict(tiled[2]))


# --------------------------------------------------------------------------- geometry
def test_tiles_cover_a_non_square_frame_whose_sides_are_not_multiples_of_the_stride():
    tiling = Tiling.of(CFG)
    grid = tiling.grid(HEIGHT, WIDTH)
    assert grid.ys == (0, 24, 48) and grid.xs == (0, 24, 48, 64)  # 64: the last tile ends at the right edge
    assert (grid.tile_h, grid.tile_w) == (32, 32) and len(grid) == 12
    assert grid.coverage().min() >= 1 and grid.coverage().shape == (HEIGHT, WIDTH)
    assert tile_starts(32, 32, 24) == (0,) and tile_starts(20, 20, 24) == (0,)
    small = tiling.grid(20, 50)  # a side shorter than a tile is one tile of that side
    assert (small.tile_h, small.tile_w, small.ys, small.xs) == (20, 32, (0,), (0, 18))
    assert tiling.sigma(grid) == (4.0, 4.0) and tiling.sigma(small) == (4.0 * 20 / 32, 4.0)


def test_stitching_of_overlapping_tiles_is_exact_on_a_constant_map():
    tiling = Tiling.of(CFG)
    for value in (0.1, 0.7312345, 3.0):
        ((_, stitched, _),) = tiling.stitched_maps(
            [("f", frame(0))], lambda tiles, v=value: torch.full((len(tiles), 2, 32, 32), v), batch_size=5)
        assert stitched.shape == (2, HEIGHT, WIDTH) and stitched.dtype == torch.float32
        assert bool((stitched == torch.tensor(value, dtype=torch.float32)).all())
    # Overlaps are averaged: tile k's map is the constant k, so a pixel is the mean of the tiles over it.
    counter = iter(range(100))
    ((_, stitched, grid),) = tiling.stitched_maps(
        [("f", frame(0))], lambda tiles: torch.stack([torch.full((1, 32, 32), float(next(counter)))
                                                      for _ in tiles]), batch_size=5)
    for y, x in ((0, 0), (30, 30), (79, 95), (50, 70)):
        over = [k for k, (ty, tx) in enumerate(grid.origins) if ty <= y < ty + 32 and tx <= x < tx + 32]
        assert stitched[0, y, x].item() == pytest.approx(np.mean(over), abs=1e-6)


def test_frames_are_read_in_order_one_at_a_time_and_tiles_run_in_batches():
    """Bounded memory: a frame is yielded once its tiles are placed, before later frames are read."""
    tiling = Tiling.of(CFG)
    read, sizes = [], []

    def frames():
        for i in range(3):
            read.append(i)
            yield i, frame(i)

    def tile_maps(tiles):
        sizes.append(len(tiles))
        return torch.zeros(len(tiles), 1, 32, 32)

    for key, _, _ in tiling.stitched_maps(frames(), tile_maps, batch_size=12):
        assert read[-1] == key  # 12 tiles per frame, batches of 12: nothing read ahead
    assert sizes == [12, 12, 12]


# --------------------------------------------------------------------------- the same tiles everywhere
@pytest.mark.parametrize("tile_size", [32, 48])
def test_a_tile_of_a_frame_gives_the_map_of_the_same_pixels_fed_as_an_image(tiled, tmp_path, tile_size):
    """Each tile the network sees equals the crop saved as a file and loaded as an image (the dataset
    loaders' LANCZOS), in training data and at test time; its map equals that image's map."""
    model = tiled[0]
    cfg = CFG.replace(tile_size=tile_size, tile_stride=24)
    tiling = Tiling.of(cfg)
    image = frame(5)
    grid = tiling.grid(HEIGHT, WIDTH)
    path = tmp_path / "frame.png"
    Image.fromarray(image).save(path)
    trained_on = decode_train_images([Sample(str(path), None, 0, "good", "c")], 32, "c", tiling)
    seen: list[tuple[np.ndarray, torch.Tensor]] = []

    def tile_maps(tiles):
        maps = infer(model, torch.stack([normalize(t, cfg.normalize_mean, cfg.normalize_std) for t in tiles]), cfg)
        seen.extend(zip(tiles, maps))
        return maps

    list(tiling.stitched_maps([("f", image)], tile_maps, batch_size=5))
    assert len(seen) == len(trained_on) == len(grid)
    for k, (y, x) in enumerate(grid.origins):
        crop = tmp_path / f"crop{k}.png"
        Image.fromarray(image[y:y + tile_size, x:x + tile_size]).save(crop)
        as_image = load_image(crop, 32)
        np.testing.assert_array_equal(seen[k][0], as_image)
        np.testing.assert_array_equal(trained_on[k], as_image)
    for k in (0, len(grid) - 1):  # the first tile and the last, aligned to both far edges
        alone = infer(model, normalize(seen[k][0], cfg.normalize_mean, cfg.normalize_std)[None], cfg)[0]
        np.testing.assert_allclose(seen[k][1].numpy(), alone.numpy(), rtol=0, atol=1e-6)


def test_full_resolution_outputs_for_a_non_square_frame(tiled, predictor, predictions, tmp_path):
    """Map, mask and overlay at the frame's 96×80; score = the maximum of the smoothed stitched map;
    decoded frames (the service) give the files' outputs."""
    for pred in predictions:
        assert (pred.width, pred.height) == (WIDTH, HEIGHT)
        assert pred.anomaly_map.shape == pred.mask.shape == (HEIGHT, WIDTH)
        assert pred.score == float(pred.anomaly_map.max())
    (row,) = predict_images(predictor, tiled[2][:1], tmp_path).predictions
    assert Image.open(row.mask_path).size == Image.open(row.overlay_path).size == (WIDTH, HEIGHT)
    assert row.score == pytest.approx(predictions[0].score, abs=1e-6)  # other batches: float32 rounding at most
    # the HTTP service's door (decoded images, Predictor.predict_decoded): the same tiles, the same outputs
    decoded = predictor.predict_decoded([(p, load_image(p, None)) for p in tiled[2]])
    for got, want in zip(decoded, predictions, strict=True):
        assert got.anomaly_map.shape == (HEIGHT, WIDTH)
        np.testing.assert_allclose(got.anomaly_map, want.anomaly_map, rtol=0, atol=1e-6)
        assert got.score == pytest.approx(want.score, abs=1e-6)


def test_calibration_on_tiled_scores_is_at_the_frames_resolution(tiled, predictor, predictions, tmp_path):
    """The thresholds come from the stitched full-resolution maps the Predictor gives those same images."""
    model, _, frames = tiled
    cal = predictor.calibration
    maps = np.stack([p.anomaly_map for p in predictions])
    assert maps.shape == (2, HEIGHT, WIDTH)
    assert cal.pixel_max == pytest.approx(float(maps.max()), abs=1e-6)
    assert cal.pixel_min == pytest.approx(float(maps.min()), abs=1e-6)
    assert cal.image_max == pytest.approx(max(p.score for p in predictions), abs=1e-6)
    assert cal.achieved_pixel_false_alarm_rate == pytest.approx(float((maps > cal.pixel_threshold).mean()))
    samples = [Sample(p, None, 0, "good", "c") for p in frames]
    result = evaluate(model, CFG, samples, keep_maps=True, metrics=False)
    np.testing.assert_allclose(result.maps, maps, rtol=0, atol=1e-6)
    # one evaluation set, one frame size: another size is named before it is scored, not padded or resized
    odd = str(tmp_path / "odd.png")
    Image.fromarray(frame(9, 64, 96)).save(odd)
    with pytest.raises(DataError, match=r"odd\.png: 96×64 px .* share one size"):
        evaluate(model, CFG, [samples[0], Sample(odd, None, 0, "good", "c")], metrics=False)


def test_onnx_parity_for_a_tiled_model_on_frames_of_any_size(tiled, predictor, predictions, tmp_path):
    pytest.importorskip("onnxruntime")
    _, pt, frames = tiled
    onnx_path = tmp_path / "tiled.onnx"
    assert main(["-q", "export", pt, "--format", "onnx", "-o", str(onnx_path)]) == 0
    pre = json.loads(onnx_metadata(onnx_path)[KEY_PREPROCESSING])
    assert pre["tiling"]["tile_size"] == 32 and pre["tiling"]["tile_stride"] == 24
    other = tmp_path / "other.png"  # another size again: 70×50, a side shorter than two tiles
    Image.fromarray(frame(11, 50, 70)).save(other)
    paths = [*frames, str(other)]
    ref = [*predictions, *predictor.predict([other])]
    engines = ["onnxruntime"] + (["openvino"] if _has("openvino") else [])
    for engine in engines:
        ours = list(Predictor.load(str(onnx_path), engine=engine, batch_size=8).predict(paths))
        for a, b in zip(ours, ref, strict=True):
            assert a.anomaly_map.shape == b.anomaly_map.shape == (b.height, b.width)
            np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, rtol=0, atol=1e-4)
            assert a.score == pytest.approx(b.score, abs=1e-4)
            # (the threshold is these very frames' largest score, where float32 rounding may tip it)
            assert a.verdict == b.verdict or abs(b.score - predictor.calibration.image_threshold) < 1e-4


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- config and data check
def test_tile_size_zero_keeps_every_stored_hash_and_the_fields_are_checked():
    assert MRKDConfig(tile_size=0, tile_stride=0).config_hash() == "4facc73f56d158fc"  # tests/core/test_config.py
    small = MRKDConfig(backbone="resnet18", image_size=64, teacher_weights="none", epochs=1)
    assert small.config_hash() == "d291478eee0b1eb2" and not {"tile_size", "tile_stride"} & set(small.hashed_dict())
    tiled = small.replace(tile_size=256)
    assert tiled.config_hash() != small.config_hash() and tiled.stride == 256
    assert small.replace(tile_size=256, tile_stride=256) == tiled  # one spelling: the stride defaults to the tile
    assert small.replace(tile_size=256, tile_stride=128).config_hash() != tiled.config_hash()
    assert MRKDConfig.from_json(tiled.to_json()) == tiled
    spec = parse_spec({"name": "hr", "datasets": [{"name": "folder", "root": "hr", "categories": ["plate"],
                                                   "generate": {"size": 1024, "defect_px": [4, 16]}}],
                       "base": {"image_size": 128}, "variants": {"whole": {}, "tiled": {"tile_size": 256}}}, "spec")
    assert {k: c.tile_size for k, c in spec.configs().items()} == {"whole": 0, "tiled": 256}
    for fields, name in (({"tile_size": 8}, "tile_size"), ({"tile_size": -1}, "tile_size"),
                         ({"tile_stride": 16}, "tile_stride"), ({"tile_size": 64, "tile_stride": 65}, "tile_stride")):
        with pytest.raises(ConfigError, match=f"'{name}'"):
            MRKDConfig(**fields)


def test_data_check_says_what_a_small_defect_becomes_without_tiles(tmp_path, capsys):
    make_mvtec(tmp_path / "big", categories=("plate",), n_train=2, n_good=1, n_per_defect=1, size=(1000, 800))
    assert main(["data", "check", str(tmp_path / "big")]) == 0
    out = capsys.readouterr().out
    assert "images of 1000×800 px are resized whole to 256×256: a defect 10 px across becomes 2.6×3.2 px" in out
    assert "--tile-size 256 keeps every pixel (16 tiles per image)" in out
    assert "--tile-size 512 halves them (4 tiles per image, the defect 5.0 px" in out
    assert "no problems found (the warning above is advice" in out  # not a problem: it trains as it is
    assert main(["data", "check", str(tmp_path / "big"), "--tile-size", "256", "--tile-stride", "200"]) == 0
    out = capsys.readouterr().out
    assert "20 tiles of 256×256 px (stride 200) per 1000×800 frame" in out and "warning" not in out
    assert out.rstrip().endswith("no problems found")


# --------------------------------------------------------------------------- the README, as typed
def test_the_readmes_tiled_training_and_prediction_run_as_written(tmp_path):
    """README's "Large frames" block, every command in order (the one tiny tiled training of the suite), in
    the folder of ``bench/try_folder.py --large`` with frames of 512 px (four 256-px tiles each) where the
    README's are 1024 px."""
    from tests.core.test_readme_recipe import run_recipe

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### Large frames"):]
    block = re.search(r"```bash\n(.*?)```", section, re.DOTALL).group(1)
    commands = [t for t in (shlex.split(raw, comments=True) for raw in block.replace("\\\n", " ").splitlines()) if t]
    try_folder = runpy.run_path(str(ROOT / "bench" / "try_folder.py"))
    try_folder["make_large_frames"](tmp_path, size=512, n_train=10, n_good=1, n_defect=2, defect_px=(4, 8))

    printed = run_recipe(commands, tmp_path)

    checks = [out for line, out in printed.items() if line.startswith("mrkd data check")]
    assert "a defect 10 px across becomes 2.5×2.5 px" in checks[0] and "4 tiles of 256×256 px" in checks[1]
    (model,) = (tmp_path / "tiled-models" / "runs" / "t1").rglob("model.pt")
    trained = json.loads((model.parent / "train.json").read_text())
    assert trained["log"][0]["images_per_second"] * trained["log"][0]["seconds"] == pytest.approx(8 * 4)  # tiles
    assert load_model_file(str(model), build=False).calibration["source"] == "held-out train/good"
    torch_rows = list(csv.DictReader((tmp_path / "tiled-out" / "predictions.csv").open()))
    onnx_rows = list(csv.DictReader((tmp_path / "tiled-out-onnx" / "predictions.csv").open()))
    assert len(torch_rows) == len(onnx_rows) == 3
    for a, b in zip(torch_rows, onnx_rows):
        assert (a["width"], a["height"]) == ("512", "512") and abs(float(a["score"]) - float(b["score"])) < 1e-4
        assert Image.open(a["mask_path"] if Path(a["mask_path"]).is_absolute() else tmp_path / a["mask_path"]).size \
            == (512, 512)
