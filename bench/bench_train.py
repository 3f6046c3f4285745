"""Training step, inference and data path: our code against the straightforward one it replaces.

    python bench/bench_train.py [--device cpu|cuda] [--shapes wrn50-256 wrn50-128 r18-256]
        [--paths straightforward ours ...] [--steps N] [--repeats R] [--quick]
        [--skip-inference] [--skip-data]

    # the teachers against each other (the lite teacher for CPU-only line PCs):
    python bench/bench_train.py --shapes lite0-256 r18-256 wrn50-256 --paths ours --skip-data --skip-checkpoint

Training step (images/s, peak memory, loss of the first step), per shape, in one process:

* ``straightforward`` — what the official MRKD code does (``main.py`` of yuxin-jiang/MRKD):
  the teacher runs twice under ``torch.no_grad`` (clean batch, then synthetic batch),
  NCHW tensors, fp32, glibc's default allocation, FLM masks built as
  int64 ``torch.where`` tensors and multiplied with type promotion, PyTorch's default Adam
  also holding the 1×1 conv + BN and the 1×1 conv the official code builds but never uses.
  It runs that step on our modules, whose residual additions allocate a new tensor where
  the official code adds in place: side by side with the official code itself it was about
  10 % slower (WRN50 256 px: 26.5 s against 23.5-24.3 s, issue 25), so the ratios this
  script prints overstate ours against the official code by about that much
  (docs/performance.md).
* ``ours`` — exactly what ``mrkd_core.train`` runs: ``place_model`` (the layout
  ``use_channels_last`` picks for the device and size), ``build_optimizer`` (fused Adam),
  ``teacher_feature_cache`` (the clean images' teacher features, computed once per run),
  ``cpu_heap_reuse`` (on CPU) and ``_train_step``.
* ablations, each ``ours`` with one change undone: ``ours-nocache`` (one batched teacher
  pass on [x_n; x_a] per step), ``ours-twice`` (two teacher passes, no cache),
  ``ours-layout`` (the other memory layout), ``ours-adam`` (for-loop Adam), ``ours-mmap``
  (glibc's default allocation, without ``cpu_heap_reuse``),
  ``ours-bf16`` (bf16 autocast, CUDA only).

Every path starts from the same weights and inputs (real ILM ``swap`` anomalies on
generated images); the first step's loss is printed against the straightforward one
(fp32 paths must agree within 1e-5). Step times are medians over ``repeats × steps``
steps after one warm-up step per path; paths run one after another with fresh models, in
alternating order when repeated. CPU columns: wall seconds and process CPU seconds (the
latter is robust to other jobs on a shared machine); peak MB = the path's own memory
(weights, optimizer state, activations) from an RSS sampler (CPU) or
``max_memory_allocated`` (CUDA).

Work: the floating-point operations of one step of ``straightforward`` and ``ours``
(``torch.utils.flop_counter``: convolutions and matrix products, forward and backward),
the rate each path reaches, and the device's fp32 matrix-product rate measured in the
same process (4096² ``torch.mm``). The ceiling ``straightforward s/step ÷ (ours GFLOP ÷
matmul rate)`` is the speed-up ours would reach if its every operation ran at that rate:
on a compute-bound step, the bound of what any exact implementation can gain.

Checkpoint after an epoch: how long the training loop is blocked by writing a
checkpoint (to a local folder) in the loop, as the official code's ``torch.save`` does,
against ``CheckpointWriter.save`` (host copy, then a background thread).

Then: inference per image including the anomaly map and score (ours vs the official
test loop: numpy float64 maps, scipy Gaussian), and the data path (ILM synthesis per
worker against the training step rate; DataLoader in the main process, as the official
code runs it, vs our persistent workers).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench_ilm import texture_image  # noqa: E402 - a smooth colour texture with fine noise
from mrkd_core.config import MRKDConfig  # noqa: E402
from mrkd_core.data.torch_datasets import (
    TrainItem,  # noqa: E402
    normalize,  # noqa: E402
)
from mrkd_core.device import cpu_heap_reuse, place_model, use_channels_last  # noqa: E402
from mrkd_core.evaluate import infer  # noqa: E402
from mrkd_core.ilm import get_preset, ilm_pair, synthesize  # noqa: E402
from mrkd_core.model import build_mrkd, mrkd_loss  # noqa: E402
from mrkd_core.score import fuse_maps, image_score  # noqa: E402
from mrkd_core.train import (  # noqa: E402
    CachedTeacherFeatures,
    TeacherPass,
    build_optimizer,
    teacher_feature_cache,
    train_step,
)

SHAPES = {
    "wrn50-256": ("wide_resnet50_2", 256, 16),
    "wrn50-128": ("wide_resnet50_2", 128, 16),
    "r18-256": ("resnet18", 256, 16),
    "r18-128": ("resnet18", 128, 16),
    "wrn50-64": ("wide_resnet50_2", 64, 8),
    "r18-64": ("resnet18", 64, 8),
    # EfficientNet-Lite0 (beyond the paper): the pretrained teacher that installs with the package
    "lite0-256": ("efficientnet_lite0", 256, 16),
    "lite0-128": ("efficientnet_lite0", 128, 16),
}
PAPER_TEACHER = "wide_resnet50_2"  # what the other backbones are compared with (the paper's default)
QUICK = ["r18-128", "wrn50-64"]
BIG = {"wrn50-256", "wrn50-128", "r18-256"}
ALL_PATHS = ["straightforward", "ours", "ours-nocache", "ours-twice", "ours-layout", "ours-adam", "ours-mmap", "ours-bf16"]
CL = torch.channels_last


# --------------------------------------------------------------------------- inputs
def make_batch(cfg: MRKDConfig, batch: int) -> tuple[list[np.ndarray], torch.Tensor, torch.Tensor]:
    images = [texture_image(cfg.image_size, i) for i in range(batch)]
    preset = get_preset("carpet")
    synth = [ilm_pair(im, preset, np.random.default_rng([cfg.seed, 0, i]), fraction=1.0)[0] for i, im in enumerate(images)]
    x_n = torch.stack([normalize(im, cfg.normalize_mean, cfg.normalize_std) for im in images])
    x_a = torch.stack([normalize(im, cfg.normalize_mean, cfg.normalize_std) for im in synth])
    return images, x_n, x_a


# --------------------------------------------------------------------------- the straightforward path
def official_dead_parameters(model) -> list[nn.Parameter]:
    """OCBE 1×1 conv 4·c3→2·c3 + BN, student 1×1 conv 2048→512 (WRN50: 8,392,704 + 1,048,576)."""
    c3 = model.teacher.channels[2]
    emb = model.ocbe.out_channels
    layers = [nn.Conv2d(c3 * 4, c3 * 2, 1, bias=False), nn.BatchNorm2d(c3 * 2), nn.Conv2d(emb, emb // 4, 1, bias=False)]
    return [p for layer in layers for p in layer.parameters()]


def official_flm(generation, features: list[torch.Tensor], gen: torch.Generator | None) -> list[torch.Tensor]:
    """The official masking: an int64 0/1 tensor from torch.where, multiplied with promotion.

    The random numbers come from the same generator as ours (the official code draws them
    on the CPU and copies them to the GPU, which only adds a transfer) so both paths mask
    the same positions and the losses can be compared.
    """
    out = []
    for f, g in zip(features, generation):
        b, _, h, w = f.shape
        r = torch.rand((b, 1, h, w), generator=gen, device=gen.device if gen is not None else f.device).to(f.device)
        mat = torch.where(r < generation.ratio, 0, 1)
        out.append(g(torch.mul(f, mat)))
    return out


def straightforward_step(model, opt, x_n, x_a, gen):
    with torch.no_grad():
        f_n = model.teacher(x_n)
        f_a = model.teacher(x_a)
    f_s = model.student(model.ocbe(f_a))
    if model.generation is not None:
        f_s = official_flm(model.generation, f_s, gen)
    loss = mrkd_loss(f_n, f_s)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.detach()


# --------------------------------------------------------------------------- memory
class PeakRSS:
    """Highest resident set size of this process while active (sampled every 5 ms)."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def now() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(0.005)

    def __enter__(self):
        self.peak = self.now()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def release_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # give freed heap pages back so RSS baselines are honest


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- one path
def build_path(name: str, base, cfg: MRKDConfig, device: torch.device, imgs: list[np.ndarray], x_n, x_a):
    """(step function, description) for one path, with its own copy of the weights."""
    model = copy.deepcopy(base)
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 7919)
    if name == "straightforward":
        model = model.to(device)
        opt = torch.optim.Adam([*model.trainable_parameters(), *(p.to(device) for p in official_dead_parameters(model))],
                               lr=cfg.lr, betas=tuple(cfg.betas))
        xn, xa = x_n.to(device), x_a.to(device)
        return (lambda: straightforward_step(model, opt, xn, xa, gen)), "NCHW, teacher x2, default Adam + dead params"
    run_cfg = cfg.replace(precision="bf16") if name == "ours-bf16" else cfg
    if name == "ours-layout":  # the layout the product does not pick here
        model = set_layout(model.to(device), not use_channels_last(cfg.memory_format, device, cfg.image_size))
    else:
        model = place_model(model, run_cfg, device)
    if name == "ours-adam":
        opt = torch.optim.Adam(model.trainable_parameters(), lr=cfg.lr, betas=tuple(cfg.betas))
    else:
        opt = build_optimizer(model, run_cfg)
    fmt = CL if model.channels_last else torch.contiguous_format
    xn, xa = x_n.to(device).contiguous(memory_format=fmt), x_a.to(device).contiguous(memory_format=fmt)
    layout = "NHWC" if model.channels_last else "NCHW"
    if name == "ours-twice":
        def twice():
            with torch.no_grad():
                f_n = model.teacher(xn)
                f_a = model.teacher(xa)
            f_g = model.restore(f_a, gen, mask=True)
            loss = mrkd_loss(f_n, f_g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.detach()
        return twice, f"{layout}, teacher x2, fused Adam"
    rows = torch.arange(len(imgs), device=device)
    if name == "ours-nocache":
        batch = TrainItem(rows, xn, xa)
        teacher = TeacherPass(ilm=True)
        return (lambda: train_step(model, opt, batch, teacher, run_cfg, device, gen)), \
            f"{layout}, teacher on [x_n; x_a], fused Adam"
    cached = CachedTeacherFeatures(teacher_feature_cache(model, imgs, run_cfg, device, limit=1 << 62), ilm=True)
    lean = TrainItem(rows, torch.empty(len(imgs), 0, device=device), xa)

    def ours():
        return train_step(model, opt, lean, cached, run_cfg, device, gen)
    desc = {"ours": "the product", "ours-layout": "", "ours-adam": "for-loop Adam", "ours-bf16": "bf16 autocast",
            "ours-mmap": "no heap reuse"}[name]
    return ours, f"{layout}, teacher on x_a + cache" + (f", {desc}" if desc else "") + ("" if name == "ours-adam" else ", fused Adam")


def set_layout(model, channels_last: bool):
    """``model`` in NHWC or NCHW regardless of the device's default (the layout ablation)."""
    model = model.to(memory_format=CL if channels_last else torch.contiguous_format)
    model.channels_last = channels_last
    return model


def run_path(name, base, cfg, device, imgs, x_n, x_a, steps) -> dict:
    release_memory(device)
    sampler = PeakRSS() if device.type == "cpu" else contextlib.nullcontext()
    base_cuda = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    heap = cpu_heap_reuse(device) if name.startswith("ours") and name != "ours-mmap" else contextlib.nullcontext()
    with sampler, heap:
        step, desc = build_path(name, base, cfg, device, imgs, x_n, x_a)
        first = float(step())  # warm-up; the loss check
        sync(device)
        wall, cpu = [], []
        for _ in range(steps):
            t0, c0 = time.perf_counter(), time.process_time()
            step()
            sync(device)
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        gflop = count_gflop(step) if name in COUNTED else float("nan")
    if device.type == "cpu":
        peak = sampler.peak - baseline_rss[0]
    else:
        peak = torch.cuda.max_memory_allocated(device) - base_cuda
    del step
    release_memory(device)
    return {"path": name, "desc": desc, "first_loss": first, "wall": wall, "cpu": cpu, "peak_mb": peak / 2**20,
            "gflop": gflop}


COUNTED = ("straightforward", "ours")  # the paths whose operations are counted (one extra step each)


def count_gflop(step) -> float:
    """GFLOP of one call of ``step`` (convolutions and matrix products, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / 1e9


def matmul_gflops(device: torch.device, n: int = 4096, repeats: int = 3) -> float:
    """fp32 matrix-product rate of ``device`` (GFLOP/s): the practical peak the convolutions chase."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9


baseline_rss = [0]


def bench_shape(key: str, paths: list[str], steps: int, repeats: int, device: torch.device) -> list[dict]:
    backbone, size, batch = SHAPES[key]
    cfg = MRKDConfig(backbone=backbone, teacher_weights="none", image_size=size, batch_size=batch,
                     device=device.type, progress=False)
    torch.manual_seed(cfg.seed)
    base = build_mrkd(cfg).train()
    imgs, x_n, x_a = make_batch(cfg, batch)
    results: dict[str, dict] = {}
    for r in range(repeats):
        for name in (paths if r % 2 == 0 else paths[::-1]):
            release_memory(device)
            baseline_rss[0] = PeakRSS.now()
            res = run_path(name, base, cfg, device, imgs, x_n, x_a, steps)
            if name in results:
                results[name]["wall"] += res["wall"]
                results[name]["cpu"] += res["cpu"]
                results[name]["peak_mb"] = max(results[name]["peak_mb"], res["peak_mb"])
            else:
                results[name] = res
    ref = results.get("straightforward", next(iter(results.values())))
    rows = []
    for name in paths:
        res = results[name]
        wall, cpu = statistics.median(res["wall"]), statistics.median(res["cpu"])
        rows.append({"shape": key, "backbone": backbone, "size": size, "batch": batch, **res, "step_s": wall,
                     "cpu_s": cpu, "img_s": batch / wall, "ratio": statistics.median(ref["wall"]) / wall,
                     "cpu_ratio": statistics.median(ref["cpu"]) / cpu,
                     "dloss": abs(res["first_loss"] - ref["first_loss"]), "n": len(res["wall"])})
    return rows


# --------------------------------------------------------------------------- inference
def official_inference(model, x, cfg: MRKDConfig, gen) -> float:
    """The official test loop for one image: masks, an unused loss, float64 numpy maps, scipy blur."""
    import torch.nn.functional as F
    from scipy.ndimage import gaussian_filter

    with torch.no_grad():
        f_t = model.teacher(x)
        f_s = official_flm(model.generation, model.student(model.ocbe(f_t)), gen)
        mrkd_loss(f_t, f_s).item()
        amap = np.zeros((cfg.image_size, cfg.image_size))
        for t, s in zip(f_t, f_s):
            m = 1 - F.cosine_similarity(s, t)
            m = F.interpolate(m.unsqueeze(1), size=cfg.image_size, mode="bilinear", align_corners=True)
            amap += m[0, 0].cpu().numpy()
        amap = gaussian_filter(amap, sigma=cfg.gaussian_sigma)
    return float(amap.max())


def bench_inference(key: str, device: torch.device, n: int) -> list[dict]:
    backbone, size, _ = SHAPES[key]
    cfg = MRKDConfig(backbone=backbone, teacher_weights="none", image_size=size, device=device.type)
    torch.manual_seed(cfg.seed)
    base = build_mrkd(cfg).eval()
    x = make_batch(cfg, 1)[1].to(device)
    gen = torch.Generator(device=device).manual_seed(cfg.flm_test_seed)  # the official path's random masks
    ours = place_model(copy.deepcopy(base), cfg, device).eval()
    other = set_layout(copy.deepcopy(base).to(device), not ours.channels_last).eval()
    official = copy.deepcopy(base).to(device).eval()

    def ours_fn(model):
        return lambda: image_score(fuse_maps(infer(model, x, cfg), cfg.score_scales, cfg.gaussian_sigma)).item()

    fns = {"straightforward": lambda: official_inference(official, x, cfg, gen), "ours": ours_fn(ours),
           "ours-layout": ours_fn(other)}
    times = {k: [] for k in fns}
    for k, f in fns.items():
        f()  # warm-up
    for r in range(n):
        for k, f in (fns.items() if r % 2 == 0 else reversed(list(fns.items()))):
            t0 = time.perf_counter()
            f()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    ref = statistics.median(times["straightforward"])
    layout = {"ours": "NHWC" if ours.channels_last else "NCHW", "ours-layout": "NHWC" if other.channels_last else "NCHW",
              "straightforward": "NCHW"}
    return [{"shape": key, "path": k, "layout": layout[k], "ms": statistics.median(v) * 1e3,
             "ratio": ref / statistics.median(v)} for k, v in times.items()]


# --------------------------------------------------------------------------- data path
def bench_synthesis(size: int, n: int) -> dict[str, float]:
    """Seconds per image of ILM on one core, swap and poisson (texture preset)."""
    import cv2

    cv2.setNumThreads(1)
    images = [texture_image(size, 100 + i) for i in range(n)]
    preset = get_preset("carpet")
    out = {}
    for blend in ("swap", "poisson"):
        synthesize(images[0], None, preset, np.random.default_rng(0), blend)
        t0 = time.process_time()
        for i, im in enumerate(images):
            synthesize(im, None, preset, np.random.default_rng(i), blend)
        out[blend] = (time.process_time() - t0) / n
    return out


def bench_loader(size: int, batch: int, n_images: int, workers: int) -> dict[str, float]:
    """Images/s of the training DataLoader alone: main process (official) vs our persistent workers."""
    from torch.utils.data import DataLoader

    from mrkd_core.data import get_dataset
    from mrkd_core.data.synthetic import make_synthetic_mvtec
    from mrkd_core.data.torch_datasets import ILMTrainDataset, make_loader

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        make_synthetic_mvtec(tmp, categories=("tex_stripes",), n_train=n_images, n_test_good=1, n_test_defect=1,
                             size=size, seed=0)
        samples = get_dataset("folder").train_samples(tmp, "tex_stripes")
        cfg = MRKDConfig(backbone="resnet18", teacher_weights="none", image_size=size, batch_size=batch,
                         num_workers=workers, progress=False)
        dataset = ILMTrainDataset.from_samples(samples, cfg, "carpet")
        official = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=0)
        t0 = time.perf_counter()
        for epoch in range(2):
            dataset.set_epoch(epoch)
            for _ in official:
                pass
        out["main process"] = 2 * n_images / (time.perf_counter() - t0)
        loader = make_loader(dataset, cfg)
        t0 = time.perf_counter()
        for epoch in range(2):
            loader.sampler.set_epoch(epoch)
            for _ in loader:
                pass
        out[f"{workers} persistent workers"] = 2 * n_images / (time.perf_counter() - t0)
        del loader
    return out


# --------------------------------------------------------------------------- report
def bench_checkpoint(key: str, device: torch.device, repeats: int = 2) -> list[dict]:
    """Seconds the loop is blocked per checkpoint: in the loop vs ``CheckpointWriter`` (+ its thread's time)."""
    from mrkd_core.checkpoint import CheckpointWriter, save_checkpoint
    from mrkd_core.storage import ArtifactStore

    backbone, size, _ = SHAPES[key]
    cfg = MRKDConfig(backbone=backbone, teacher_weights="none", image_size=size, device=device.type, progress=False)
    model = place_model(build_mrkd(cfg), cfg, device)
    opt = build_optimizer(model, cfg)
    for p in model.trainable_parameters():  # Adam's moments exist after a first step
        p.grad = torch.zeros_like(p)
    opt.step()
    rows: dict[str, list[float]] = {"in the loop (torch.save + store)": [], "CheckpointWriter.save": [],
                                    "  its background write": []}
    size_mb = float("nan")
    with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as tmp:
        for r in range(repeats):
            store = ArtifactStore(str(Path(tmp) / f"sync-{r}"))
            t0 = time.perf_counter()
            name = save_checkpoint(store, model, opt, cfg, 1, [0.1])
            rows["in the loop (torch.save + store)"].append(time.perf_counter() - t0)
            size_mb = len(store.read_bytes(name)) / 2**20
            writer = CheckpointWriter(ArtifactStore(str(Path(tmp) / f"async-{r}")))
            t0 = time.perf_counter()
            writer.save(model, opt, cfg, 1, [0.1])
            rows["CheckpointWriter.save"].append(time.perf_counter() - t0)
            writer.wait()
            rows["  its background write"].append(time.perf_counter() - t0)
            writer.close()
    ref = statistics.median(rows["in the loop (torch.save + store)"])
    return [{"shape": key, "path": k, "s": statistics.median(v), "mb": size_mb,
             "ratio": ref / statistics.median(v) if not k.startswith(" ") else float("nan")} for k, v in rows.items()]


def backbones_table(out, rows: list[dict], what: str, key: str, unit: str) -> None:
    """Each backbone's ``key`` (a time) against the paper's teacher at the same image size, when both were measured."""
    paper = {r["size"]: r[key] for r in rows if r["backbone"] == PAPER_TEACHER}
    if len({r["backbone"] for r in rows}) < 2 or not paper:
        return
    out.write(f"\n# Backbones, {what}: ratio = {PAPER_TEACHER} {unit} ÷ backbone {unit} (same image size)\n")
    out.write(f"| backbone | size | {unit} | ratio |\n|---|---|---|---|\n")
    for r in rows:
        ref = paper.get(r["size"])
        ratio = f"{ref / r[key]:.1f}x" if ref else ""
        out.write(f"| {r['backbone']} | {r['size']} | {r[key]:.3f} | {ratio} |\n")
    out.flush()


def machine(device: torch.device) -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    return (f"{model}, {os.cpu_count()} CPUs{gpu}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
            f"mkldnn={torch.backends.mkldnn.is_available()}; load average {os.getloadavg()[0]:.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--shapes", nargs="+", choices=list(SHAPES), help="default: wrn50-256 wrn50-128 r18-256")
    ap.add_argument("--paths", nargs="+", choices=ALL_PATHS,
                    help="default: all on small shapes; straightforward, ours, ours-layout (+ours-bf16 on CUDA) on big ones")
    ap.add_argument("--steps", type=int, help="timed steps per path and repeat (default 1 on big CPU shapes, else 3)")
    ap.add_argument("--repeats", type=int, default=1, help="run all paths this many times, alternating order")
    ap.add_argument("--quick", action="store_true", help=f"shapes {' '.join(QUICK)} (a few minutes on 2 CPU cores)")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--skip-inference", action="store_true")
    ap.add_argument("--skip-data", action="store_true")
    ap.add_argument("--skip-checkpoint", action="store_true")
    ap.add_argument("--inference-images", type=int, default=5)
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = args.shapes or (QUICK if args.quick else ["wrn50-256", "wrn50-128", "r18-256"])
    out = sys.stdout
    out.write(f"# MRKD training step on {device}: {machine(device)}\n")
    out.write("| shape | path | what | step s (wall) | CPU s | img/s | ratio | CPU ratio | peak MB | |Δloss| | n |\n")
    out.write("|---|---|---|---|---|---|---|---|---|---|---|\n")
    step_rates: dict[str, float] = {}
    work: list[dict] = []
    for key in shapes:
        big = key in BIG
        paths = args.paths or (["straightforward", "ours", "ours-layout", "ours-mmap"] if big else
                               [p for p in ALL_PATHS if p != "ours-bf16"])
        if device.type == "cuda" and not args.paths:
            paths = [*paths, "ours-bf16"]
        paths = [p for p in paths if p != "ours-bf16" or device.type == "cuda"]
        steps = args.steps or (1 if big and device.type == "cpu" else 3)
        for r in bench_shape(key, paths, steps, args.repeats, device):
            ok = "" if r["path"] == "ours-bf16" or r["dloss"] <= 1e-5 else " MISMATCH"
            out.write(f"| {key} | {r['path']} | {r['desc']} | {r['step_s']:.3f} | {r['cpu_s']:.2f} | {r['img_s']:.2f} "
                      f"| {r['ratio']:.2f}x | {r['cpu_ratio']:.2f}x | {r['peak_mb']:.0f} | {r['dloss']:.1e}{ok} | {r['n']} |\n")
            if r["path"] == "ours":
                step_rates[key] = r["img_s"]
            if r["path"] in COUNTED:
                work.append(r)
            out.flush()
    out.write("\nratio: against `straightforward`, the official step on our modules, about 10 % slower than the "
              "official code itself (docs/performance.md); against the official code, ratios are about 10 % lower\n")
    out.write(f"load average after the training steps: {os.getloadavg()[0]:.1f}\n")
    backbones_table(out, [r for r in work if r["path"] == "ours"], "training step (ours)", "step_s", "s/step")
    if work:
        peak = matmul_gflops(device)
        out.write(f"\n# Work per step against the fp32 matmul rate of this {device.type} ({peak:.0f} GFLOP/s, 4096² mm)\n")
        out.write("| shape | path | GFLOP/step | GFLOP/s | % of matmul rate | ceiling of ours vs straightforward |\n")
        out.write("|---|---|---|---|---|---|\n")
        by_shape = {(r["shape"], r["path"]): r for r in work}
        for r in work:
            sf, ours = by_shape.get((r["shape"], "straightforward")), by_shape.get((r["shape"], "ours"))
            ceiling = (f"{sf['step_s'] / (ours['gflop'] / peak):.2f}x" if sf and ours and r["path"] == "ours" else "")
            rate = r["gflop"] / r["step_s"]
            out.write(f"| {r['shape']} | {r['path']} | {r['gflop']:.1f} | {rate:.0f} | {100 * rate / peak:.0f} % "
                      f"| {ceiling} |\n")
        out.write("(ceiling: straightforward s/step ÷ the time ours would take with every GFLOP at the matmul rate)\n")

    if not args.skip_checkpoint:
        key = shapes[0]
        out.write(f"\n# Checkpoint after an epoch, {key} (model + Adam state), local folder\n")
        out.write("| path | s the training loop is blocked | MB | ratio |\n|---|---|---|---|\n")
        for r in bench_checkpoint(key, device):
            ratio = "" if r["ratio"] != r["ratio"] else f"{r['ratio']:.1f}x"
            out.write(f"| {r['path']} | {r['s']:.2f} | {r['mb']:.0f} | {ratio} |\n")
        out.flush()

    if not args.skip_inference:
        out.write(f"\n# Inference, batch 1, anomaly map (Eq. 5) + score (Eq. 6), median of {args.inference_images}\n")
        out.write("| shape | path | layout | ms/image | ratio |\n|---|---|---|---|---|\n")
        ours_inference = []
        for key in shapes:
            for r in bench_inference(key, device, args.inference_images):
                out.write(f"| {key} | {r['path']} | {r['layout']} | {r['ms']:.1f} | {r['ratio']:.2f}x |\n")
                out.flush()
                if r["path"] == "ours":
                    ours_inference.append({**r, "backbone": SHAPES[key][0], "size": SHAPES[key][1]})
        backbones_table(out, ours_inference, "inference, batch 1 (ours)", "ms", "ms/image")

    if not args.skip_data:
        out.write("\n# ILM synthesis per DataLoader worker (one core) against our training step rate\n")
        out.write("| shape | step img/s | swap img/s/worker | workers for swap | poisson img/s/worker | workers for poisson |\n")
        out.write("|---|---|---|---|---|---|\n")
        synth: dict[int, dict[str, float]] = {}
        for key in shapes:
            size = SHAPES[key][1]
            synth.setdefault(size, bench_synthesis(size, 40))
            rate = step_rates.get(key, float("nan"))
            s = synth[size]
            out.write(f"| {key} | {rate:.2f} | {1 / s['swap']:.0f} | {rate * s['swap']:.3f} | {1 / s['poisson']:.0f} "
                      f"| {rate * s['poisson']:.3f} |\n")
        out.write("(workers needed = step img/s × seconds per synthesis; below 1 means one worker keeps ahead)\n")
        size = SHAPES[shapes[0]][1]
        loader = bench_loader(size, 16, 64, 2)
        ref = loader["main process"]
        out.write(f"\n# Training DataLoader alone, {size} px, batch 16, 64 images × 2 epochs (ILM swap)\n")
        out.write("| loader | img/s | ratio |\n|---|---|---|\n")
        for k, v in loader.items():
            out.write(f"| {k} | {v:.0f} | {v / ref:.2f}x |\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
