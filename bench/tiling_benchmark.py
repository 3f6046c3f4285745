"""Tiled against whole-image MRKD on high-resolution frames with small defects (docs/tiling.md).

Trains through ``mrkd train`` (``mrkd_core.cli.main``: what users run), one run per variant,
at the same ``--image-size`` and ``--epochs``:

- ``whole``: each frame resized whole to ``--image-size`` (``tile_size`` 0, the paper's setting);
- ``tiled``: tiles of ``--tile`` px every ``--stride`` px, each resized to ``--image-size``;
- ``whole-long`` (``--long``): the whole image again with ``epochs × tiles per frame`` epochs,
  so that it sees as many network inputs as ``tiled`` (rules out "it merely trained less").

Then scores every model's test images through the Predictor (what ``mrkd predict`` and the
service run) and computes the metrics **at the frames' own resolution** for every variant:
a whole-image model's map is resized up to the frame as ``mrkd predict`` does it, against
the original masks (``mrkd evaluate`` scores a whole-image model at ``image_size``, where the
masks are NEAREST-resized and a 4-pixel defect may lose every pixel). Prints the table of
docs/tiling.md and writes heatmap sheets (frame crop around the defect | each model's map,
one colour scale per model) to ``STORE/figures/``.

Datasets: ``--data hr`` generates the high-resolution benchmark (``make_synthetic_mvtec`` with
``defect_px``: 1024 px frames, defects 4-16 px across); ``--data elpv`` trains on the real ELPV
cells at full resolution (300 px, image labels only: image metrics; ``elpv-dataset`` package).

::

    nice -n 10 python bench/tiling_benchmark.py --data hr --store artifacts/tiling --epochs 10 --long
    nice -n 10 python bench/tiling_benchmark.py --data elpv --store artifacts/tiling --image-size 128 \\
        --tile 150 --epochs 8 --train-subsample 60 --test-subsample 120 --categories mono --long

(the commands of docs/tiling.md's tables; ``bench/tiling_diagnosis.py`` then looks at the
stored tiled models).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrkd_core.cli import main as mrkd  # noqa: E402
from mrkd_core.data import get_dataset  # noqa: E402
from mrkd_core.data.io import load_image, load_mask  # noqa: E402
from mrkd_core.data.synthetic import make_synthetic_mvtec  # noqa: E402
from mrkd_core.inference import Predictor  # noqa: E402
from mrkd_core.layout import find_models  # noqa: E402
from mrkd_core.metrics import compute_all  # noqa: E402
from mrkd_core.model_io import load_model_file  # noqa: E402
from mrkd_core.storage import ArtifactStore  # noqa: E402
from mrkd_core.tiling import Tiling  # noqa: E402

log = logging.getLogger("tiling_benchmark")

HR_CATEGORIES = ("tex_stripes", "obj_disc")
HR = {"n_train": 12, "n_test_good": 8, "n_test_defect": 12, "size": 1024, "seed": 0, "defect_px": (4, 16)}


def generate(root: Path, categories) -> Path:
    """The high-resolution benchmark: 1024 px frames, defects 4-16 px across (a no-op when there)."""
    return make_synthetic_mvtec(root, categories=tuple(categories), **HR)


def train_variant(args: argparse.Namespace, data: Path, dataset: str, variant: str, tiles: int) -> list[str]:
    """``mrkd train`` of one variant (skipped by the engine when already complete); the command line."""
    epochs = args.epochs * tiles if variant == "whole-long" else args.epochs
    argv = ["train", str(data), "--dataset", dataset, "-o", args.store, "--run-id", f"{args.data}-{variant}",
            "--backbone", args.backbone, "--teacher-weights", args.teacher_weights, "--image-size", str(args.image_size),
            "--epochs", str(epochs), "--num-workers", "0", "--no-progress", "--checkpoint-every", str(max(epochs, 1))]
    for c in args.categories:
        argv += ["-c", c]
    if variant == "tiled":
        argv += ["--tile-size", str(args.tile), "--tile-stride", str(args.stride or args.tile)]
    if args.train_subsample:
        argv += ["--train-subsample", str(args.train_subsample)]
    if args.test_subsample:
        argv += ["--test-subsample", str(args.test_subsample)]
    log.info("mrkd %s", " ".join(argv))
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = mrkd(["-q", *argv])
    if code:
        raise SystemExit(f"mrkd {' '.join(argv)} exited {code}")
    log.info("%s trained in %.0f s", variant, time.perf_counter() - t0)
    return argv


def full_resolution_metrics(model_path: str, samples, pixel_masks: bool) -> tuple[dict, list]:
    """Metrics at the frames' own resolution from the Predictor's maps (a whole-image model's map is
    resized up to the frame, as `mrkd predict` does), and the predictions (maps kept)."""
    predictor = Predictor.load(model_path, device="cpu", batch_size=16)
    preds = list(predictor.predict([s.path for s in samples]))
    scores = np.array([p.score for p in preds])
    labels = np.array([s.label for s in samples])
    maps = np.stack([p.anomaly_map for p in preds]) if pixel_masks else scores[:, None, None]
    masks = (np.stack([load_mask(s.mask_path, None) if s.mask_path else np.zeros(maps.shape[1:], np.uint8)
                       for s in samples]) if pixel_masks else None)
    return compute_all(scores, labels, maps, masks), preds


def heatmap_sheet(path: Path, samples, by_variant: dict[str, list], n: int = 3, half: int = 96) -> None:
    """Per defective image: the frame crop around its defect, then each variant's map of that crop
    (each variant on one colour scale: its own min-max over the crops shown) and the mask outline."""
    rows = []
    picks = [i for i, s in enumerate(samples) if s.label == 1][:n]
    for i in picks:
        s = samples[i]
        mask = load_mask(s.mask_path, None) if s.mask_path else None
        image = load_image(s.path, None)
        h, w = image.shape[:2]
        cy, cx = ((int(np.mean(a)) for a in np.nonzero(mask)) if mask is not None and mask.any() else (h // 2, w // 2))
        y0, x0 = min(max(cy - half, 0), h - 2 * half), min(max(cx - half, 0), w - 2 * half)
        crop = (slice(y0, y0 + 2 * half), slice(x0, x0 + 2 * half))
        cells = [image[crop]]
        for preds in by_variant.values():
            amap = preds[i].anomaly_map[crop]
            lo, hi = float(preds[i].anomaly_map.min()), float(preds[i].anomaly_map.max())
            grey = np.clip((amap - lo) / max(hi - lo, 1e-12) * 255, 0, 255).astype(np.uint8)
            cell = np.repeat(grey[..., None], 3, axis=2)
            if mask is not None:
                edge = mask[crop].astype(bool) & ~_eroded(mask[crop].astype(bool))
                cell[edge] = (255, 0, 0)
            cells.append(cell)
        rows.append(np.concatenate(cells, axis=1))
    if rows:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def _eroded(m: np.ndarray) -> np.ndarray:
    e = m.copy()
    e[1:] &= m[:-1]
    e[:-1] &= m[1:]
    e[:, 1:] &= m[:, :-1]
    e[:, :-1] &= m[:, 1:]
    return e


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("hr", "elpv"), default="hr")
    parser.add_argument("--store", required=True, help="artifact store for the models and figures")
    parser.add_argument("--root", help="dataset root (default: STORE/data-hr for hr, STORE/elpv-split for elpv)")
    parser.add_argument("--categories", nargs="+")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--stride", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--long", action="store_true", help="also train whole-long (the same network inputs)")
    parser.add_argument("--train-subsample", type=int, default=0)
    parser.add_argument("--test-subsample", type=int, default=0)
    parser.add_argument("--backbone", default="resnet18", help="teacher backbone (default resnet18)")
    parser.add_argument("--teacher-weights", default="none",
                        help="none (a random teacher, the default of the measured tables) or imagenet")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: on a shared, oversubscribed machine 2 mostly wait for each other)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    store = ArtifactStore(args.store)
    if args.data == "hr":
        args.categories = args.categories or list(HR_CATEGORIES)
        data = generate(Path(args.root or f"{args.store}/data-hr"), args.categories)
        dataset, frame = "folder", (HR["size"], HR["size"])
    else:
        args.categories = args.categories or ["mono"]
        data, dataset, frame = Path(args.root or f"{args.store}/elpv-split"), "elpv", (300, 300)
    tiles = len(Tiling(args.tile, args.stride or args.tile, args.image_size, 4.0).grid(*frame))
    variants = ["whole", "tiled"] + (["whole-long"] if args.long else [])
    commands = {v: train_variant(args, data, dataset, v, tiles) for v in variants}
    layout = get_dataset(dataset)
    rows = []
    for category in args.categories:
        per_variant, results = {}, {}
        samples = None
        for variant in variants:
            (stored,) = find_models(store, dataset, category, run_id=f"{args.data}-{variant}")
            record = load_model_file(store, stored.model, build=False)
            if samples is None:
                from mrkd_core.layout import task_samples
                from mrkd_core.specs import Task

                samples = task_samples(Task(dataset, category, "mrkd", record.config, str(data))).test
                pixel = layout.ground_truth(str(data), category).pixel_masks
            metrics, preds = full_resolution_metrics(store.uri(stored.model), samples, pixel)
            per_variant[variant], results[variant] = preds, metrics
            train = store.read_json(f"{stored.run_dir}/train.json")
            rows.append({"category": category, "variant": variant, **metrics,
                         "train_s": train["train_seconds"], "epochs": record.config.epochs,
                         "inputs_per_epoch": train["log"][-1]["images_per_second"] * train["log"][-1]["seconds"]
                         if train.get("log") else float("nan")})
        heatmap_sheet(Path(args.store) / "figures" / f"{args.data}-{category}.png", samples, per_variant)
    print(f"\n{args.data}: {args.backbone}, teacher weights {args.teacher_weights}, image_size {args.image_size}, "
          "metrics at the frames' resolution\n")
    print("| category | variant | epochs | image AU-ROC | pixel AU-ROC | AU-PRO | training s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['category']} | {r['variant']} | {r['epochs']} | {100 * r['image_auroc']:.1f} | "
              f"{_pct(r['pixel_auroc'])} | {_pct(r['au_pro'])} | {r['train_s']:.0f} |")
    print("\ncommands:")
    for v, argv in commands.items():
        print(f"  {v}: mrkd {' '.join(argv)}")
    (Path(args.store) / f"{args.data}-results.json").write_text(json.dumps(rows, indent=2, default=float))
    return 0


def _pct(v: float) -> str:
    return "absent" if math.isnan(v) else f"{100 * v:.1f}"


if __name__ == "__main__":
    raise SystemExit(main())
