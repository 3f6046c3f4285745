"""Inference engines and evaluation batch size, against the paths they replace.

    python bench/bench_inference.py [--shapes r18-256 wrn50-256] [--batches 1 16]
        [--repeats N] [--eval-images N] [--skip-engines] [--skip-eval] [--threads T]

    # the teachers against each other (the lite teacher for CPU-only line PCs):
    python bench/bench_inference.py --shapes lite0-256 r18-256 wrn50-256 --skip-eval

1. Engines, CPU ms per image of the whole test path (normalised batch → anomaly map of
   Eq. 5 with the Gaussian → score of Eq. 6, fixed test-time masks):
   ``pytorch`` — eager PyTorch under ``torch.inference_mode`` as ``mrkd predict
   model.pt`` runs it (``place_model``'s layout) — against ``onnxruntime`` — the graph
   ``mrkd export`` writes, run as ``mrkd predict FILE.onnx`` does (and ``openvino``
   when it is installed). Ratio = PyTorch ms ÷ engine ms. The maps of both are compared
   (max |Δ|, must be ≤ 1e-4). Random weights (``teacher_weights=none``): speed does not
   depend on them.
2. Evaluation (``mrkd_core.evaluate.evaluate``) images/s with ``eval_batch_size`` 16
   against 1 (the official code's test batch) on the same generated test set, and the
   largest relative difference of the scores (identical up to float32 rounding since
   the test-time masks are fixed per model) and the largest difference of a metric.

Minimum and median over ``repeats`` timed calls after one warm-up call per path; paths
alternate. On a shared machine the minimum is the figure least disturbed by other jobs.
Both engines run with the same number of threads (``--threads``, default torch's).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrkd_core.config import MRKDConfig  # noqa: E402
from mrkd_core.data import get_dataset  # noqa: E402
from mrkd_core.data.synthetic import make_synthetic_mvtec  # noqa: E402
from mrkd_core.device import place_model  # noqa: E402
from mrkd_core.evaluate import evaluate, infer  # noqa: E402
from mrkd_core.inference.export import INPUT_NAME, export_onnx, onnx_packages  # noqa: E402
from mrkd_core.model import build_mrkd  # noqa: E402
from mrkd_core.model_io import load_model_file, save_model  # noqa: E402
from mrkd_core.score import fuse_maps, image_score  # noqa: E402
from mrkd_core.storage import ArtifactStore  # noqa: E402

SHAPES = {"r18-256": ("resnet18", 256), "wrn50-256": ("wide_resnet50_2", 256), "r18-128": ("resnet18", 128),
          "wrn50-128": ("wide_resnet50_2", 128),
          # EfficientNet-Lite0 (beyond the paper): the pretrained teacher that installs with the package
          "lite0-256": ("efficientnet_lite0", 256), "lite0-128": ("efficientnet_lite0", 128)}
PAPER_TEACHER = "wide_resnet50_2"  # what the other backbones are compared with (the paper's default)


def _ms_per_image(fns: dict, batch: int, repeats: int) -> dict[str, tuple[float, float]]:
    """(min, median) ms per image of each path; the minimum is the figure least disturbed
    by other jobs on a shared machine."""
    for f in fns.values():
        f()  # warm-up
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats):
        for k, f in (fns.items() if r % 2 == 0 else reversed(list(fns.items()))):
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: (min(v) * 1e3 / batch, statistics.median(v) * 1e3 / batch) for k, v in times.items()}


def _openvino_fn(onnx_path: Path, threads: int):
    try:
        import openvino as ov
    except ImportError:
        return None
    core = ov.Core()
    # f32: on CPUs with bf16 units OpenVINO's default precision hint is bf16 (maps off by ~6e-3)
    compiled = core.compile_model(str(onnx_path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                            "INFERENCE_PRECISION_HINT": "f32"})
    return lambda x: compiled(x)


def bench_engines(shape: str, batches: list[int], repeats: int, threads: int, workdir: Path) -> list[dict]:
    backbone, size = SHAPES[shape]
    cfg = MRKDConfig(backbone=backbone, teacher_weights="none", image_size=size, device="cpu")
    torch.manual_seed(cfg.seed)
    store = ArtifactStore(workdir)
    save_model(build_mrkd(cfg).eval(), cfg, store, f"{shape}.pt")
    record = load_model_file(store.uri(f"{shape}.pt"))
    onnx_path = export_onnx(record, workdir / f"{shape}.onnx")
    model = place_model(load_model_file(store.uri(f"{shape}.pt")).model, cfg, torch.device("cpu")).eval()
    _, ort = onnx_packages()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    ov_run = _openvino_fn(onnx_path, threads)
    rows = []
    for b in batches:
        x = torch.randn(b, 3, size, size, generator=torch.Generator().manual_seed(b))
        xn = x.numpy()

        def torch_fn():
            with torch.inference_mode():
                m = fuse_maps(infer(model, x, cfg), cfg.score_scales, cfg.gaussian_sigma)
                return m.numpy(), image_score(m).numpy()

        fns = {"pytorch": torch_fn, "onnxruntime": lambda: session.run(None, {INPUT_NAME: xn})}
        if ov_run is not None:
            fns["openvino"] = lambda: ov_run(xn)
        ref = torch_fn()[0]
        delta = {"onnxruntime": float(np.abs(session.run(None, {INPUT_NAME: xn})[0] - ref).max())}
        if ov_run is not None:
            delta["openvino"] = float(np.abs(list(ov_run(xn).values())[0] - ref).max())
        ms = _ms_per_image(fns, b, repeats)
        for k, (low, mid) in ms.items():
            rows.append({"shape": shape, "batch": b, "engine": k, "ms_min": low, "ms_median": mid,
                         "ratio_min": ms["pytorch"][0] / low, "ratio_median": ms["pytorch"][1] / mid,
                         "max_abs_diff": delta.get(k, 0.0)})
        print_rows(rows[-len(ms):])
    return rows


def bench_eval(backbone: str, size: int, n: int, workdir: Path) -> list[dict]:
    root = workdir / "data"
    half = n // 2
    make_synthetic_mvtec(root, categories=("obj_disc",), n_train=1, n_test_good=half, n_test_defect=n - half,
                         size=size, seed=0)
    samples = get_dataset("folder").test_samples(str(root), "obj_disc")
    cfg = MRKDConfig(backbone=backbone, teacher_weights="none", image_size=size, device="cpu", num_workers=0,
                     progress=False)
    torch.manual_seed(cfg.seed)
    model = place_model(build_mrkd(cfg), cfg, torch.device("cpu")).eval()
    results = {}
    for b in (1, 16, 1, 16):  # twice each, alternating: the second of each is reported
        t0 = time.perf_counter()
        ev = evaluate(model, cfg.replace(eval_batch_size=b), samples)
        results[b] = (time.perf_counter() - t0, ev)
    s1 = np.array([s["score"] for s in results[1][1].scores])
    rows = []
    for b, (seconds, ev) in results.items():
        s = np.array([x["score"] for x in ev.scores])
        rows.append({"backbone": backbone, "size": size, "images": len(samples), "eval_batch_size": b,
                     "images_per_s": len(samples) / seconds, "ratio": results[1][0] / seconds,
                     "max_rel_score_diff": float(np.max(np.abs(s - s1) / np.abs(s1))),
                     "max_metric_diff": max(abs(v - results[1][1].metrics[k]) for k, v in ev.metrics.items()
                                            if v == v)})
    return rows


def backbone_rows(rows: list[dict]) -> list[dict]:
    """Per (backbone, size, batch, engine): ms per image (minimum) and the paper teacher's ms ÷ this one's."""
    keyed = {(SHAPES[r["shape"]][0], SHAPES[r["shape"]][1], r["batch"], r["engine"]): r["ms_min"] for r in rows}
    out = []
    for (backbone, size, batch, engine), ms in keyed.items():
        ref = keyed.get((PAPER_TEACHER, size, batch, engine))
        out.append({"backbone": backbone, "size": size, "batch": batch, "engine": engine, "ms_min": ms,
                    f"ratio_vs_{PAPER_TEACHER}": ref / ms if ref else float("nan")})
    return out


def print_rows(rows: list[dict]) -> None:
    if not rows:
        return
    keys = list(rows[0])
    print(" | ".join(keys))
    for r in rows:
        print(" | ".join(f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in keys), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["r18-256", "wrn50-256"], choices=sorted(SHAPES))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--eval-images", type=int, default=32)
    parser.add_argument("--eval-shapes", nargs="+", default=["r18-256"], choices=sorted(SHAPES))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--skip-engines", action="store_true")
    parser.add_argument("--skip-eval", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}")
    with tempfile.TemporaryDirectory(prefix="mrkd-bench-inference-") as tmp:
        work = Path(tmp)
        if not args.skip_engines:
            print("\n## Engines: CPU ms per image (ratio = PyTorch ms / engine ms)")
            engine_rows = []
            for shape in args.shapes:
                engine_rows += bench_engines(shape, args.batches, args.repeats, args.threads, work / shape)
            if len({SHAPES[s][0] for s in args.shapes}) > 1:
                print(f"\n## Backbones: CPU ms per image (minimum), ratio = {PAPER_TEACHER} ms / backbone ms")
                print_rows(backbone_rows(engine_rows))
        if not args.skip_eval:
            print("\n## Evaluation: images/s, eval_batch_size 16 vs 1")
            for shape in args.eval_shapes:
                backbone, size = SHAPES[shape]
                print_rows(bench_eval(backbone, size, args.eval_images, work / f"eval-{shape}"))


if __name__ == "__main__":
    main()
