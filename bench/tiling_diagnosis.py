"""Why a tiled model's image score lags its pixel maps: where the maxima of defect-free frames lie.

For each stored tiled model of a run (``bench/tiling_benchmark.py`` trains them), on its test
split, at the frames' resolution:

1. the share of defect-free frames whose map maximum (the image score, Eq. 6) lies within
   ``--band`` px of a tile border inside the frame, against the share of the frame those bands
   cover (tile borders are where each tile's network sees its zero padding);
2. image AU-ROC, pixel AU-ROC and AU-PRO (pixel metrics where the dataset has masks) of the same
   weights scored with other test-time tilings: the stride trained with, half of it (overlapping
   tiles averaged, so a tile's border is averaged with another tile's interior), and ``--sigmas``
   for the Gaussian of Eq. 5.

Diagnosis only: a model is meant to be scored with its own ``tile_stride``; the tiles of a
half stride are tiles of the same frames at other origins.

    nice -n 10 python bench/tiling_diagnosis.py --store artifacts/tiling --run hr-tiled \\
        --root artifacts/tiling/data-hr
    nice -n 10 python bench/tiling_diagnosis.py --store artifacts/tiling --run elpv-tiled --dataset elpv
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrkd_core.data import get_dataset  # noqa: E402
from mrkd_core.data.io import load_image, load_mask  # noqa: E402
from mrkd_core.evaluate import fused_tile_maps  # noqa: E402
from mrkd_core.layout import find_models, task_samples  # noqa: E402
from mrkd_core.metrics import compute_all  # noqa: E402
from mrkd_core.model_io import load_model_file  # noqa: E402
from mrkd_core.specs import Task  # noqa: E402
from mrkd_core.storage import ArtifactStore  # noqa: E402
from mrkd_core.tiling import Tiling  # noqa: E402


def border_band(grid, band: int) -> np.ndarray:
    """H×W bool: within ``band`` px of a tile border that lies inside the frame."""
    near = np.zeros((grid.height, grid.width), dtype=bool)
    for y in {*grid.ys[1:], *(y + grid.tile_h for y in grid.ys[:-1])}:
        near[max(y - band, 0):y + band] = True
    for x in {*grid.xs[1:], *(x + grid.tile_w for x in grid.xs[:-1])}:
        near[:, max(x - band, 0):x + band] = True
    return near


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--run", default="hr-tiled")
    parser.add_argument("--dataset", default="folder")
    parser.add_argument("--root", default=None, help="dataset root (default: the model's data_root)")
    parser.add_argument("--band", type=int, default=16)
    parser.add_argument("--sigmas", type=float, nargs="+", default=[4.0, 2.0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    store = ArtifactStore(args.store)
    print(f"run {args.run}; maxima within {args.band} px of an inner tile border\n")
    print("| category | backbone, teacher | test-time stride | σ (network px) | good frames' maxima at a border | "
          "border share of the frame | image AU-ROC | pixel AU-ROC | AU-PRO |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for stored in find_models(store, args.dataset, run_id=args.run):
        record = load_model_file(store, stored.model, runtime={"device": "cpu"})
        cfg, model = record.config, record.model
        root = args.root or record.extra.get("data_root")
        samples = task_samples(Task(args.dataset, stored.category, "mrkd", cfg, root)).test
        frames = [load_image(s.path, None) for s in samples]
        masks = (np.stack([load_mask(s.mask_path, None) if s.mask_path else np.zeros(f.shape[:2], np.uint8)
                           for s, f in zip(samples, frames)])
                 if get_dataset(args.dataset).ground_truth(root, stored.category).pixel_masks else None)
        teacher = f"{cfg.backbone}, {'random' if cfg.teacher_weights == 'none' else cfg.teacher_weights}"
        labels = np.array([s.label for s in samples])

        tile_maps = fused_tile_maps(model, cfg, [cfg.score_scales])
        for stride in (cfg.stride, cfg.stride // 2):
            base = Tiling(cfg.tile_size, stride, cfg.image_size, cfg.gaussian_sigma)
            stitched = list(base.stitched_maps(enumerate(frames), tile_maps, cfg.eval_batch_size))
            for sigma in args.sigmas:
                tiling = Tiling(cfg.tile_size, stride, cfg.image_size, sigma)
                maps = np.stack([tiling.anomaly_map(s, g).numpy() for _, s, g in stitched])
                scores = maps.reshape(len(maps), -1).max(axis=1)
                near = border_band(Tiling(cfg.tile_size, cfg.stride, cfg.image_size, 0).grid(*maps.shape[1:]),
                                   args.band)
                at_border = [near.flat[int(m.argmax())] for m, y in zip(maps, labels) if y == 0]
                metrics = compute_all(scores, labels, maps, masks)
                print(f"| {stored.category} | {teacher} | {stride} | {sigma:g} | {np.mean(at_border):.0%} | "
                      f"{near.mean():.0%} | {_pct(metrics['image_auroc'])} | {_pct(metrics['pixel_auroc'])} | "
                      f"{_pct(metrics['au_pro'])} |", flush=True)
    return 0


def _pct(v: float) -> str:
    return "absent" if math.isnan(v) else f"{100 * v:.1f}"


if __name__ == "__main__":
    raise SystemExit(main())
