"""The CUDA defaults, checked: bf16 vs fp32 image AU-ROC on the demo data, and GPU utilisation.

    .venv/bin/python bench/bench_cuda.py [--spec demo] [--util-images 64] [--util-epochs 3]

Issue 8 asks for bf16 autocast and channels_last on by default on CUDA only where they
keep image AU-ROC within 0.2 points of fp32 on the demo data, and for a training task to
keep the GPU ≥ 90 % busy in steady state. This script measures both with the product's
own code (``mrkd_core.train.train`` + ``mrkd_core.evaluate.evaluate``, the spec's config
on ``device=cuda``) and prints two tables:

1. per category of ``--spec`` (variant ``mrkd``): image and pixel AU-ROC in fp32 NCHW,
   fp32 channels_last and bf16 channels_last, and the differences in points;
2. GPU utilisation while training WRN50 at 256 px, batch 16 (the paper's setting) on
   generated images, with a checkpoint after every epoch as the product writes them:
   ``nvidia-smi`` samples every 0.2 s, the median over the epochs after the first
   (steady state), with the training images/s.

Without a CUDA GPU it prints one line and exits 0 (so ``make bench`` runs everywhere).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrkd_core.checkpoint import CheckpointMode  # noqa: E402
from mrkd_core.config import MRKDConfig  # noqa: E402
from mrkd_core.data import get_dataset  # noqa: E402
from mrkd_core.data.synthetic import make_synthetic_mvtec  # noqa: E402
from mrkd_core.evaluate import evaluate  # noqa: E402
from mrkd_core.layout import task_samples  # noqa: E402
from mrkd_core.specs import load_spec, prepare_data  # noqa: E402
from mrkd_core.storage import ArtifactStore  # noqa: E402
from mrkd_core.train import train  # noqa: E402

VARIANTS = {  # name → config changes on top of the spec's
    "fp32 NCHW": {"precision": "fp32", "memory_format": "contiguous"},
    "fp32 NHWC": {"precision": "fp32", "memory_format": "channels_last"},
    "bf16 NHWC": {"precision": "bf16", "memory_format": "channels_last"},
}


class GpuSampler:
    """``utilization.gpu`` of one GPU from nvidia-smi every ``period`` seconds, with timestamps."""

    def __init__(self, index: int = 0, period: float = 0.2):
        self.index, self.period = index, period
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()

    def _run(self) -> None:
        cmd = ["nvidia-smi", f"--id={self.index}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
        while not self._stop.is_set():
            out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
            if out.isdigit():
                self.samples.append((time.perf_counter(), float(out)))
            time.sleep(self.period)

    def __enter__(self) -> "GpuSampler":
        if shutil.which("nvidia-smi") is None:  # a CPU dry run of this script: no figures
            self._stop.set()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def median_after(self, t0: float) -> float:
        values = [u for t, u in self.samples if t >= t0]
        return statistics.median(values) if values else float("nan")


def auroc_table(spec_name: str, root: str, epochs: int | None, device: str) -> None:
    spec = load_spec(spec_name, [Path(__file__).resolve().parents[1] / "flows" / "specs"]).narrow(epochs=epochs)
    prepare_data(spec, root)
    tasks = [t for t in spec.tasks(root) if t.variant == "mrkd"]
    print(f"# {spec.name}: image / pixel AU-ROC (%) by numerics, {len(tasks)} categories, "
          f"{tasks[0].config.backbone} {tasks[0].config.image_size} px, {tasks[0].config.epochs} epochs")
    print("| category | " + " | ".join(VARIANTS) + " | Δ image bf16−fp32 (points) | img/s fp32 → bf16 |")
    print("|---|" + "---|" * (len(VARIANTS) + 2))
    deltas = []
    for task in tasks:
        chosen = task_samples(task)  # what the engine trains and tests this task on
        train_s, test_s = chosen.trained, chosen.test
        cells, image, rate = [], {}, {}
        for name, change in VARIANTS.items():
            cfg = task.config.replace(device=device, progress=False, **change)
            result = train(cfg, train_s, task.category)
            m = evaluate(result.model, cfg, test_s).metrics
            image[name], rate[name] = 100 * m["image_auroc"], result.images_per_second
            cells.append(f"{100 * m['image_auroc']:.2f} / {100 * m['pixel_auroc']:.2f}")
        delta = image["bf16 NHWC"] - image["fp32 NCHW"]
        deltas.append(delta)
        print(f"| {task.category} | " + " | ".join(cells) + f" | {delta:+.2f} | "
              f"{rate['fp32 NCHW']:.0f} → {rate['bf16 NHWC']:.0f} |", flush=True)
    worst = max(abs(d) for d in deltas)
    verdict = "within" if worst <= 0.2 else "NOT within"
    print(f"\nlargest |Δ image AU-ROC| bf16 vs fp32: {worst:.2f} points: {verdict} the 0.2-point bound\n")


def utilisation(root: str, n_images: int, epochs: int, device: str, backbone: str) -> None:
    make_synthetic_mvtec(root, categories=("tex_grain",), n_train=n_images, n_test_good=1, n_test_defect=1,
                         size=256, seed=0)
    samples = get_dataset("folder").train_samples(root, "tex_grain")
    print(f"# GPU utilisation, {backbone} 256 px batch 16, {n_images} images × {epochs} epochs "
          "(random teacher: the speed is the same as ImageNet's)")
    print("| numerics | img/s (last epoch) | GPU utilisation, median after epoch 1 (%) |")
    print("|---|---|---|")
    for name, change in VARIANTS.items():
        cfg = MRKDConfig(backbone=backbone, teacher_weights="none", epochs=epochs, device=device, progress=False,
                         **change)
        with GpuSampler() as sampler:
            t0 = time.perf_counter()
            # As the product trains: a checkpoint after every epoch (CheckpointWriter).
            result = train(cfg, samples, "tex_grain", checkpoints=ArtifactStore(str(Path(root) / f"ckpt-{name}")),
                           mode=CheckpointMode.REPLACE)
        first = t0 + result.log[0]["seconds"] if result.log else t0
        print(f"| {name} | {result.log[-1]['images_per_second']:.0f} | {sampler.median_after(first):.0f} |",
              flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="demo")
    ap.add_argument("--epochs", type=int, help="narrow the spec's epochs")
    ap.add_argument("--util-images", type=int, default=64)
    ap.add_argument("--util-epochs", type=int, default=3)
    ap.add_argument("--util-backbone", default="wide_resnet50_2")
    ap.add_argument("--skip-auroc", action="store_true")
    ap.add_argument("--device", default="cuda", help="cpu only to try the script itself (no utilisation figures)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_cuda: skipped, no CUDA GPU here (run it on a GPU machine; --device cpu for a dry run)")
        return 0
    if args.device == "cuda":
        print(f"GPU {torch.cuda.get_device_name(0)}; torch {torch.__version__}, CUDA {torch.version.cuda}")
    with tempfile.TemporaryDirectory(prefix="bench-cuda-") as tmp:
        if not args.skip_auroc:
            auroc_table(args.spec, str(Path(tmp) / "data"), args.epochs, args.device)
        utilisation(str(Path(tmp) / "util"), args.util_images, args.util_epochs, args.device, args.util_backbone)
    return 0


if __name__ == "__main__":
    sys.exit(main())
