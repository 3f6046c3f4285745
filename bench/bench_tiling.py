"""Tiled against whole-image MRKD: throughput per megapixel and peak memory of a 20-megapixel frame.

    nice -n 10 python bench/bench_tiling.py [--frame 1024] [--frames 8] [--image-size 128]
        [--tile 256] [--stride 256] [--epochs 2] [--big 5472x3648] [--batch-size 8] [--skip-train]
        [--skip-memory]

1. Training (``mrkd_core.train.train``, ResNet18, random teacher, batch 16, ILM + FLM):
   ``--frames`` generated ``--frame``-pixel frames (tex_stripes), the whole image resized to
   ``--image-size`` against tiles of ``--tile`` px every ``--stride`` px resized to the same
   size. The last of ``--epochs`` epochs is timed (the first starts the loader and fills the
   teacher-feature cache): network inputs/s, frames/s and megapixels/s.
2. Prediction (``Predictor.predict`` on a ``model.pt``: decode, tiles, forward passes of
   ``--batch-size`` inputs, stitching, smoothing, calibrated mask; what ``mrkd predict``
   runs without writing PNGs): frames/s and megapixels/s on the same frames.
3. Peak memory of one ``--big`` frame (default 5472×3648 = 20.0 MP) through ``mrkd predict``'s
   path (mask and overlay PNGs written), each mode in a fresh process: the process's peak
   resident memory (VmHWM) after loading the model and after the frame, and their
   difference (what the frame cost).

Ratios are tiled ÷ whole (what tiling replaces). Figures depend on the machine's load: on a
shared machine compare only rows of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrkd_core.config import MRKDConfig  # noqa: E402
from mrkd_core.data.base import Sample  # noqa: E402
from mrkd_core.data.io import save_png  # noqa: E402
from mrkd_core.data.synthetic import render_image  # noqa: E402
from mrkd_core.inference import Predictor, calibrate_model  # noqa: E402
from mrkd_core.model_io import save_model  # noqa: E402
from mrkd_core.storage import ArtifactStore  # noqa: E402
from mrkd_core.tiling import Tiling  # noqa: E402
from mrkd_core.train import train  # noqa: E402


def _config(args: argparse.Namespace, tiled: bool) -> MRKDConfig:
    return MRKDConfig(backbone="resnet18", teacher_weights="none", image_size=args.image_size, epochs=args.epochs,
                      batch_size=16, num_workers=0, device="cpu", progress=False, eval_batch_size=args.batch_size,
                      checkpoint_every=1000, **({"tile_size": args.tile, "tile_stride": args.stride} if tiled else {}))


def _frames(folder: Path, n: int, size: int) -> list[str]:
    paths = []
    for i in range(n):
        image, _ = render_image("tex_stripes", 0, "train", i, size)
        paths.append(str(folder / f"{i:03d}.png"))
        save_png(Path(paths[-1]), image)
    return paths


def _vm_hwm_mb() -> float:
    """The process's peak resident memory so far, MB (Linux /proc)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _memory_child(model: str, frame: str, out: str, batch_size: int) -> None:
    """Run in a fresh process: peak memory after loading the model, and after predicting the frame."""
    from mrkd_core.inference import predict_images

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    predictor = Predictor.load(model, device="cpu", batch_size=batch_size)
    loaded = _vm_hwm_mb()
    t0 = time.perf_counter()
    predict_images(predictor, [frame], out)
    print(json.dumps({"loaded_mb": loaded, "peak_mb": _vm_hwm_mb(), "seconds": time.perf_counter() - t0}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frame", type=int, default=1024, help="side of the generated frames (px)")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--stride", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8, help="network inputs per prediction pass")
    parser.add_argument("--big", default="5472x3648", help="W×H of the memory test's frame")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--memory-child", nargs=3, metavar=("MODEL", "FRAME", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        _memory_child(*args.memory_child, args.batch_size)
        return 0
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    modes = {"whole": _config(args, False), "tiled": _config(args, True)}
    mp = args.frame * args.frame / 1e6
    tiles = len(Tiling.of(modes["tiled"]).grid(args.frame, args.frame))
    print(f"{platform.node()}, torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
          f"{os.getloadavg()[0]:.1f}; ResNet18, random teacher, image_size {args.image_size}; {args.frames} frames of "
          f"{args.frame}×{args.frame} ({mp:.2f} MP); tiled: {tiles} tiles of {args.tile} px, stride {args.stride}\n")
    rows: dict[str, dict[str, float]] = {m: {} for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        frames = _frames(tmp / "frames", args.frames, args.frame)
        samples = [Sample(p, None, 0, "good", "bench") for p in frames]
        for mode, cfg in modes.items():
            result = train(cfg, samples, "bench") if not args.skip_train else None
            if result is not None:
                last = result.log[-1]
                rows[mode]["train inputs/s"] = last["images_per_second"]
                rows[mode]["train frames/s"] = args.frames / last["seconds"]
                model = result.model
            else:
                from mrkd_core.model import build_mrkd

                torch.manual_seed(0)
                model = build_mrkd(cfg).eval()
            cal = calibrate_model(model, cfg, good_folder=tmp / "frames")
            rows[mode]["model"] = save_model(model, cfg, ArtifactStore(tmp / mode), "model.pt",
                                             calibration=cal.to_dict())
            predictor = Predictor.load(rows[mode]["model"], device="cpu", batch_size=args.batch_size)
            list(predictor.predict(frames[:1]))  # warm-up
            t0 = time.perf_counter()
            for _ in predictor.predict(frames):
                pass
            rows[mode]["predict frames/s"] = args.frames / (time.perf_counter() - t0)
        _table("Throughput per megapixel", rows, mp)
        if not args.skip_memory:
            width, height = (int(v) for v in args.big.lower().split("x"))
            big = tmp / "big.png"
            image, _ = render_image("tex_stripes", 0, "train", 0, args.frame)  # repeated up to the big frame's size
            reps = (-(-height // args.frame), -(-width // args.frame)) + (1,) * (image.ndim - 2)
            save_png(big, np.ascontiguousarray(np.tile(image, reps)[:height, :width]))
            print(f"\nPeak memory, one {width}×{height} frame ({width * height / 1e6:.1f} MP) through `mrkd predict`'s "
                  f"path (masks and overlays written), batches of {args.batch_size} network inputs, fresh process "
                  "each:\n")
            print("| mode | after loading the model (MB) | peak with the frame (MB) | the frame's cost (MB) | "
                  "seconds |")
            print("|---|---:|---:|---:|---:|")
            costs = {}
            for mode in modes:
                proc = subprocess.run([sys.executable, __file__, "--batch-size", str(args.batch_size), "--memory-child",
                                       rows[mode]["model"], str(big), str(tmp / f"out-{mode}")],
                                      capture_output=True, text=True, check=True)
                m = json.loads(proc.stdout.strip().splitlines()[-1])
                costs[mode] = m["peak_mb"] - m["loaded_mb"]
                print(f"| {mode} | {m['loaded_mb']:,.0f} | {m['peak_mb']:,.0f} | {costs[mode]:,.0f} | "
                      f"{m['seconds']:.1f} |")
            print(f"\ntiled ÷ whole, the frame's cost: {costs['tiled'] / costs['whole']:.2f}×")
    return 0


def _table(title: str, rows: dict[str, dict[str, float]], mp: float) -> None:
    print(f"{title}:\n")
    print("| metric | whole | tiled | tiled ÷ whole |")
    print("|---|---:|---:|---:|")
    for key in ("train inputs/s", "train frames/s", "predict frames/s"):
        if key not in rows["whole"]:
            continue
        w, t = rows["whole"][key], rows["tiled"][key]
        print(f"| {key} | {w:.2f} | {t:.2f} | {t / w:.3f}× |")
        if "frames" in key:
            print(f"| {key.replace('frames', 'megapixels')} | {w * mp:.2f} | {t * mp:.2f} | {t / w:.3f}× |")


if __name__ == "__main__":
    raise SystemExit(main())
