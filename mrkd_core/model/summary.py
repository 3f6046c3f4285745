"""Parameter counts and forward GFLOPs per component (``mrkd model-summary``).

The model is built on PyTorch's ``meta`` device: shapes and operation counts without
allocating or computing anything, so WRN50 at 256 px is summarised in well under a
second. FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (2 per
multiply-accumulate of convolutions, transposed convolutions and matrix products).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mrkd_core.config import MRKDConfig
from mrkd_core.model.mrkd import build_mrkd


def _count(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _gflops(fn: Callable[[], Any]) -> tuple[float, Any]:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        out = fn()
    return counter.get_total_flops() / 1e9, out


def model_summary(backbone: str, image_size: int = 256) -> dict[str, Any]:
    """Per-component parameter counts and forward GFLOPs for one image at ``image_size``.

    Returns ``{"backbone", "image_size", "parameters": {teacher, ocbe, student,
    generation, total_trainable}, "forward_gflops_per_image": {teacher, ocbe,
    student, generation, student_and_generation, total}, "feature_shapes": {...}}``.
    Teacher weights are not needed (random init, never read).
    """
    cfg = MRKDConfig(backbone=backbone, teacher_weights="none", image_size=image_size)
    with torch.device("meta"):
        model = build_mrkd(cfg).eval()
        x = torch.empty(1, 3, image_size, image_size)
    g_teacher, f_t = _gflops(lambda: model.teacher(x))
    g_ocbe, f_b = _gflops(lambda: model.ocbe(f_t))
    g_student, f_s = _gflops(lambda: model.student(f_b))
    g_generation, _ = _gflops(lambda: model.generation(f_s, mask=False))
    params = {
        "teacher": _count(model.teacher),
        "ocbe": _count(model.ocbe),
        "student": _count(model.student),
        "generation": _count(model.generation),
    }
    params["total_trainable"] = sum(p.numel() for p in model.trainable_parameters())
    gflops = {
        "teacher": g_teacher,
        "ocbe": g_ocbe,
        "student": g_student,
        "generation": g_generation,
        "student_and_generation": g_student + g_generation,
        "total": g_teacher + g_ocbe + g_student + g_generation,
    }
    return {
        "backbone": backbone,
        "image_size": image_size,
        "parameters": params,
        "forward_gflops_per_image": {k: round(v, 3) for k, v in gflops.items()},
        "feature_shapes": {
            "teacher": [list(f.shape[1:]) for f in f_t],
            "ocbe": list(f_b.shape[1:]),
            "student": [list(f.shape[1:]) for f in f_s],
        },
    }
