"""Scoring new images with a trained model: a score per image and a heatmap overlay PNG.

For inspection engineers: no dataset layout needed, any list of image files.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from mrkd_core.data.io import load_image
from mrkd_core.data.torch_datasets import normalize
from mrkd_core.device import resolve_device
from mrkd_core.evaluate import infer
from mrkd_core.model_io import load_model
from mrkd_core.score import fuse_maps, image_score

log = logging.getLogger(__name__)


def overlay(image: np.ndarray, amap: np.ndarray, vmax: float, alpha: float = 0.5) -> np.ndarray:
    """Jet-coloured anomaly map blended over the RGB image; ``vmax`` fixes the colour scale."""
    norm = np.clip(amap / max(vmax, 1e-12), 0.0, 1.0)
    heat = cv2.applyColorMap((norm * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    return (alpha * heat + (1 - alpha) * image).astype(np.uint8)


def predict_images(model_path: str, images: Sequence[Path], out_dir: Path, device: str = "auto",
                   batch_size: int = 8) -> list[dict]:
    """Score every image; write ``<stem>_heatmap.png`` overlays into ``out_dir``.

    All overlays share one colour scale (the largest score of the batch of files), so a
    brighter overlay means a more anomalous image.
    """
    dev = resolve_device(device)
    model, cfg = load_model(model_path, device=dev)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[tuple[Path, np.ndarray, np.ndarray, float]] = []
    for start in range(0, len(images), batch_size):
        chunk = list(images[start:start + batch_size])
        raw = [load_image(str(p), cfg.image_size) for p in chunk]
        batch = torch.stack([normalize(r, cfg.normalize_mean, cfg.normalize_std) for r in raw]).to(dev)
        maps = fuse_maps(infer(model, batch, cfg), cfg.score_scales, cfg.gaussian_sigma)
        scores = image_score(maps).cpu().numpy()
        maps_np = maps.cpu().numpy()
        for p, r, m, s in zip(chunk, raw, maps_np, scores):
            results.append((p, r, m, float(s)))
    vmax = max(r[3] for r in results)
    rows: list[dict] = []
    used: set[str] = set()
    for path, raw, amap, score in results:
        name = f"{path.stem}_heatmap.png"
        i = 1
        while name in used:  # same stem in different folders
            name = f"{path.stem}_{i}_heatmap.png"
            i += 1
        used.add(name)
        target = out_dir / name
        cv2.imwrite(str(target), overlay(raw, amap, vmax)[:, :, ::-1])
        rows.append({"path": str(path), "score": score, "heatmap": str(target)})
    log.info("scored %d images; heatmaps in %s", len(rows), out_dir)
    return rows
