"""Parameter counts and forward GFLOPs per component (`mrkd model-summary`)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from mrkd_core.config import MRKDConfig
from mrkd_core.model.mrkd import build_mrkd


def _count(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _gflops(fn) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn()
    return counter.get_total_flops() / 1e9


def model_summary(backbone: str, image_size: int = 256) -> dict:
    """Counts for one image at ``image_size`` (FLOPs = 2 × multiply-accumulates)."""
    cfg = MRKDConfig(backbone=backbone, teacher_weights="none", image_size=image_size)
    model = build_mrkd(cfg).eval()
    x = torch.zeros(1, 3, image_size, image_size)
    with torch.no_grad():
        f_t = model.teacher(x)
        f_b = model.bottleneck(f_t)
        f_s = model.student(f_b)
    params = {
        "teacher": _count(model.teacher),
        "bottleneck": _count(model.bottleneck),
        "student": _count(model.student),
        "generation": _count(model.generation),
    }
    params["trainable"] = params["bottleneck"] + params["student"] + params["generation"]
    gflops = {
        "teacher": _gflops(lambda: model.teacher(x)),
        "bottleneck": _gflops(lambda: model.bottleneck(f_t)),
        "student": _gflops(lambda: model.student(f_b)),
        "generation": _gflops(lambda: model.generation(f_s, mask=False)),
    }
    gflops["student_and_generation"] = gflops["student"] + gflops["generation"]
    gflops["total"] = gflops["teacher"] + gflops["bottleneck"] + gflops["student_and_generation"]
    return {
        "backbone": backbone,
        "image_size": image_size,
        "parameters": params,
        "forward_gflops_per_image": {k: round(v, 3) for k, v in gflops.items()},
        "feature_shapes": {
            "teacher": [list(f.shape[1:]) for f in f_t],
            "bottleneck": list(f_b.shape[1:]),
            "student": [list(f.shape[1:]) for f in f_s],
        },
    }
