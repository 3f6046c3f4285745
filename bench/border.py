"""Where do the anomaly maps peak? The border finding of docs/fidelity.md ("The border"), measured.

Trains one model on a generated texture (crops of a real photo in scikit-image's wheel,
painted defects; ``mrkd_core.data.synthetic``) and reports, over its test images:

- image and pixel AU-ROC;
- how many maps peak within 8 px (at 128 px) of the image border, per fused map and per scale,
  and per scale at which edge (TensorFlow's "same" padding pads bottom and right only);
- the mean of the map in the outer 1/16 band over its mean inside (1.0: no border excess);
- the teacher's feature norm on the outermost feature row/column over the inside, per scale.

``--teacher-padding reflect`` is a diagnosis only: it switches the teacher's convolutions
from zero padding to reflection after building it, to tell the teacher's padding apart
from the map's computation (bilinear ``align_corners=True``, the Gaussian with scipy's
``reflect`` border: the official code's conventions, held by tests/core/test_score.py).

::

    python bench/border.py --backbone resnet18 --teacher-weights none            # the random teacher
    python bench/border.py --backbone resnet18 --teacher-weights none --teacher-padding reflect
    python bench/border.py --backbone efficientnet_lite0 --teacher-weights imagenet
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mrkd_core.config import MRKDConfig  # noqa: E402
from mrkd_core.data import get_dataset  # noqa: E402
from mrkd_core.data.synthetic import make_synthetic_mvtec  # noqa: E402
from mrkd_core.data.torch_datasets import TestDataset  # noqa: E402
from mrkd_core.evaluate import evaluate, infer  # noqa: E402
from mrkd_core.train import train  # noqa: E402


def edge_ratio(maps: np.ndarray) -> float:
    """Mean of …×H×W maps in the outer band (1/16 of the side) over their mean inside, averaged over maps."""
    h = maps.shape[-1]
    band = max(1, h // 16)
    inner = maps[..., band:-band, band:-band]
    edge = (maps.sum((-2, -1)) - inner.sum((-2, -1))) / (h * h - inner.shape[-1] ** 2)
    return float((edge / inner.mean((-2, -1))).mean())


def peaks_near_border(maps: np.ndarray, pixels: float) -> int:
    """How many N×H×W maps have their maximum within ``pixels`` of the border."""
    n, h, w = maps.shape
    flat = maps.reshape(n, -1).argmax(1)
    y, x = flat // w, flat % w
    return int((np.minimum.reduce([y, x, h - 1 - y, w - 1 - x]) < pixels).sum())


def nearest_edges(maps: np.ndarray, pixels: float) -> dict[str, int]:
    """Where the maxima of N×H×W maps are: the nearest edge when within ``pixels`` of it, else inside."""
    n, h, w = maps.shape
    counts = dict.fromkeys(("top", "bottom", "left", "right", "inside"), 0)
    for flat in maps.reshape(n, -1).argmax(1):
        y, x = divmod(int(flat), w)
        distance = {"top": y, "bottom": h - 1 - y, "left": x, "right": w - 1 - x}
        edge = min(distance, key=distance.get)
        counts[edge if distance[edge] < pixels else "inside"] += 1
    return counts


def edge_strips(maps: np.ndarray, width: int = 4) -> dict[str, float]:
    """Mean of N×H×W maps in the outer ``width`` rows/columns of each edge over the mean inside."""
    inside = maps[:, 4 * width:-4 * width, 4 * width:-4 * width].mean()
    strips = {"top": maps[:, :width], "bottom": maps[:, -width:], "left": maps[:, :, :width],
              "right": maps[:, :, -width:]}
    return {k: round(float(v.mean() / inside), 2) for k, v in strips.items()}


def teacher_border_norms(features: list[torch.Tensor]) -> list[float]:
    """Per scale: the feature norm on the outermost row/column over the norm inside."""
    out = []
    for f in features:
        norm = f.norm(dim=1)
        rim = torch.cat([norm[:, 0], norm[:, -1], norm[:, :, 0], norm[:, :, -1]], 1).mean()
        out.append(round(float(rim / norm[:, 1:-1, 1:-1].mean()), 2))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--teacher-weights", default="none")
    parser.add_argument("--teacher-padding", choices=("zeros", "reflect"), default="zeros")
    parser.add_argument("--category", default="tex_brick")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--data", help="folder for the generated data (default: a temporary one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    root = Path(args.data or tempfile.mkdtemp(prefix="mrkd-border-"))
    make_synthetic_mvtec(root, categories=(args.category,), n_train=48, n_test_good=12, n_test_defect=12,
                         size=128, seed=0)
    layout = get_dataset("folder")
    cfg = MRKDConfig(backbone=args.backbone, teacher_weights=args.teacher_weights, image_size=args.image_size,
                     epochs=args.epochs, batch_size=16, num_workers=0, progress=False, device="cpu",
                     ilm_preset="texture")
    started = time.perf_counter()
    if args.teacher_padding != "zeros":
        import mrkd_core.model.mrkd as network

        build = network.build_teacher

        def padded(*a, **kw):
            teacher = build(*a, **kw)
            for m in teacher.modules():
                if isinstance(m, nn.Conv2d) and m.padding != (0, 0):
                    m.padding_mode = args.teacher_padding
            return teacher

        network.build_teacher = padded
    model = train(cfg, layout.train_samples(str(root), args.category), args.category).model.eval()
    test = layout.test_samples(str(root), args.category)
    result = evaluate(model, cfg, test, keep_maps=True)
    images = TestDataset(list(test), cfg.image_size, cfg.normalize_mean, cfg.normalize_std)
    x = torch.stack([images[i]["image"] for i in range(len(images))])
    per_scale = infer(model, x, cfg).numpy()
    with torch.no_grad():
        features = model.teacher(x)
    near = 8 * cfg.image_size / 128
    print(json.dumps({
        "backbone": cfg.backbone, "teacher_weights": cfg.teacher_weights, "teacher_padding": args.teacher_padding,
        "category": args.category, "image_size": cfg.image_size, "epochs": cfg.epochs, "test_images": len(test),
        "image_auroc": round(result.metrics["image_auroc"], 3), "pixel_auroc": round(result.metrics["pixel_auroc"], 3),
        "maps_peaking_within_8px_of_the_border": peaks_near_border(result.maps, near),
        "per_scale_peaking_within_8px": [peaks_near_border(per_scale[:, s], near) for s in range(3)],
        "per_scale_maxima_by_edge": [nearest_edges(per_scale[:, s], near) for s in range(3)],
        "per_scale_edge_strips_over_inside": [edge_strips(per_scale[:, s]) for s in range(3)],
        "border_over_inside_mean": round(edge_ratio(result.maps), 2),
        "per_scale_border_over_inside": [round(edge_ratio(per_scale[:, s]), 2) for s in range(3)],
        "teacher_norm_border_over_inside": teacher_border_norms(features),
        "seconds": round(time.perf_counter() - started),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
