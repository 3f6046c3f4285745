"""Training-step and inference benchmark: our path against the straightforward one.

Prints a table: images/s and peak memory of one MRKD training step for each shape, for

* ``straightforward`` — what the official code does: the teacher runs twice (clean and
  synthetic batch separately), NCHW tensors, and Adam also holds the layers the
  official code builds but never uses (a 1×1 conv + BN in the bottleneck, a 1×1 conv in
  the student);
* ``ours`` — one batched teacher pass, no dead parameters, channels_last where it is
  faster on the device (and bf16 autocast on CUDA).

Both start from identical weights and inputs; the script checks that the loss of the
first step agrees within 1e-5 (fp32) before it reports a speed-up.

Usage: python bench/bench_train.py [--quick] [--device cpu|cuda] [--steps N]
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrkd_core.config import MRKDConfig  # noqa: E402
from mrkd_core.evaluate import infer, test_generator  # noqa: E402
from mrkd_core.model import build_mrkd, mrkd_loss  # noqa: E402
from mrkd_core.score import fuse_maps, image_score  # noqa: E402


def dead_layers(model) -> list[nn.Parameter]:
    """The parameters the official code hands to Adam without ever using them."""
    c3 = model.teacher.channels[2]
    conv = nn.Conv2d(c3 * 4, c3 * 2, 1, bias=False)  # bottleneck conv4 (4096→2048 for WRN50)
    bn = nn.BatchNorm2d(c3 * 2)
    student_conv = nn.Conv2d(c3, c3, 1, bias=False)  # student 1×1 conv (1024→1024 for WRN50)
    return [*conv.parameters(), *bn.parameters(), *student_conv.parameters()]


def straightforward_step(model, opt, normal, synthetic, gen):
    with torch.no_grad():
        f_n = model.teacher(normal)
        f_a = model.teacher(synthetic)
    f_s = model.student(model.bottleneck(f_a))
    if model.generation is not None:
        f_s = model.generation(f_s, generator=gen)
    loss = mrkd_loss(f_n, f_s)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def our_step(model, opt, normal, synthetic, gen, autocast):
    with autocast:
        f_t, f_s = model.forward_train(normal, synthetic, generator=gen)
        loss = mrkd_loss(f_t, f_s)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_shape(backbone: str, size: int, batch: int, steps: int, device: torch.device,
                channels_last: bool, bf16: bool) -> list[dict]:
    cfg = MRKDConfig(backbone=backbone, teacher_weights="none", image_size=size, batch_size=batch)
    torch.manual_seed(0)
    base = build_mrkd(cfg).to(device)
    normal = torch.randn(batch, 3, size, size, device=device)
    synthetic = normal.clone()
    synthetic[:, :, size // 4: size // 2, size // 4: size // 2] = torch.randn(batch, 3, size // 4, size // 4)
    rows = []
    losses = {}
    for name in ("straightforward", "ours"):
        model = copy.deepcopy(base).train()
        params = list(model.trainable_parameters())
        x_n, x_a = normal, synthetic
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if (bf16 and device.type == "cuda") else _null()
        if name == "straightforward":
            params += dead_layers(model)
        elif channels_last:
            model = model.to(memory_format=torch.channels_last)
            x_n = normal.contiguous(memory_format=torch.channels_last)
            x_a = synthetic.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.Adam([p.to(device) if p.device != device else p for p in params], lr=0.005, betas=(0.5, 0.999))
        gen = torch.Generator(device=device).manual_seed(1)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        first = (straightforward_step(model, opt, x_n, x_a, gen) if name == "straightforward"
                 else our_step(model, opt, x_n, x_a, gen, _null()))  # first step fp32: the equality check
        losses[name] = float(first)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            if name == "straightforward":
                straightforward_step(model, opt, x_n, x_a, gen)
            else:
                our_step(model, opt, x_n, x_a, gen, autocast)
        _sync(device)
        dt = (time.perf_counter() - t0) / steps
        rows.append({"backbone": backbone, "size": size, "batch": batch, "path": name,
                     "step_s": dt, "img_s": batch / dt, "peak_mb": peak_mb(device)})
    diff = abs(losses["ours"] - losses["straightforward"])
    for r in rows:
        r["loss_diff"] = diff
    return rows


def bench_inference(backbone: str, size: int, device: torch.device, n: int = 5) -> dict:
    cfg = MRKDConfig(backbone=backbone, teacher_weights="none", image_size=size)
    model = build_mrkd(cfg).to(device).eval()
    x = torch.randn(1, 3, size, size, device=device)
    gen = test_generator(cfg, device)
    fuse_maps(infer(model, x, cfg, gen), cfg.score_scales, cfg.gaussian_sigma)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        amap = fuse_maps(infer(model, x, cfg, gen), cfg.score_scales, cfg.gaussian_sigma)
        image_score(amap)
    _sync(device)
    return {"backbone": backbone, "size": size, "ms_per_image": (time.perf_counter() - t0) / n * 1000}


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="small shapes only (a minute on 2 CPU cores)")
    ap.add_argument("--no-channels-last", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    bf16 = device.type == "cuda"
    channels_last = not args.no_channels_last
    shapes = ([("resnet18", 128, 8), ("wide_resnet50_2", 64, 4)] if args.quick else
              [("wide_resnet50_2", 256, 16), ("wide_resnet50_2", 128, 16), ("resnet18", 256, 16)])
    out = sys.stdout
    out.write(f"# MRKD training step, device={device} threads={torch.get_num_threads()} "
              f"channels_last={channels_last} bf16={bf16} torch={torch.__version__} cpus={os.cpu_count()}\n")
    out.write(f"{'backbone':<16} {'px':>4} {'batch':>5} {'path':<16} {'step s':>8} {'img/s':>8} {'peak MB':>9} {'|Δloss|':>9}\n")
    for backbone, size, batch in shapes:
        rows = bench_shape(backbone, size, batch, args.steps, device, channels_last, bf16)
        for r in rows:
            out.write(f"{r['backbone']:<16} {r['size']:>4} {r['batch']:>5} {r['path']:<16} {r['step_s']:>8.3f} "
                      f"{r['img_s']:>8.2f} {r['peak_mb']:>9.0f} {r['loss_diff']:>9.2e}\n")
        ratio = rows[1]["img_s"] / rows[0]["img_s"]
        ok = "ok" if rows[0]["loss_diff"] <= 1e-5 else "LOSS MISMATCH"
        out.write(f"{'':<16} {'':>4} {'':>5} {'speed-up':<16} {ratio:>8.2f}x  ({ok})\n")
        out.flush()
    out.write("\n# inference (map + score), batch 1\n")
    for backbone, size, _ in shapes:
        r = bench_inference(backbone, size, device)
        out.write(f"{r['backbone']:<16} {r['size']:>4} {r['ms_per_image']:>10.1f} ms/image\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
