"""The HTTP service (``mrkd serve``) against the in-process ``Predictor`` it wraps, on the same images.

    nice -n 10 python bench/bench_serve.py [--shapes r18-256 wrn50-256] [--engines torch onnxruntime]
        [--requests 1.0] [--port 8123] [--cpus-per-replica 2]

For each shape (ResNet18 and WRN50 at 256 px, random teacher: speed does not depend on the
weights) and engine (``torch`` on a ``model.pt``, ``onnxruntime`` on its ``mrkd export``):

- **in-process**: ``Predictor.predict_decoded`` on the decoded images in passes of 1 and of
  16 (``mrkd predict --batch-size``), decoding included (``load_image_bytes``, as the
  service does): ms per image and images/s;
- **service**: ``mrkd serve MODEL --engine E --cpus-per-replica C`` started here on
  127.0.0.1 (a Ray of its own, the record on), one PNG per request (``POST /predict``), at
  concurrency 1, 8 and 32: latency p50/p99 (client side: HTTP included) and requests/s.

The two are measured in alternating rounds (in-process, then the service, three times;
medians), so that both see the same load of a shared machine. The table's ratios are the
issue's targets: at concurrency 1 the service's p50 within 10 %
(or 5 ms, the larger) of the in-process pass of 1; at concurrency 32 at least 90 % of the
in-process throughput in passes of 16 (dynamic batching must recover it); at concurrency 8,
p99 at most twice p50. Both sides use the same number of threads: the replica reserves
``--cpus-per-replica`` CPUs (the replica sets PyTorch to that many threads) and this process
uses as many. The in-process path runs in a process of its own, scheduled as a replica is
(a session of its own and Ray's worker niceness, +15): on a shared Linux machine every
session gets an equal share of the CPU, so the same code measured in this script's session
and in the replica's differed by up to 1.7× here for that reason alone. On a shared
machine, say so with the figures.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from md_table import markdown  # noqa: E402
from mrkd_core.config import MRKDConfig  # noqa: E402
from mrkd_core.data.io import load_image_bytes  # noqa: E402
from mrkd_core.data.synthetic import make_synthetic_mvtec  # noqa: E402
from mrkd_core.inference import Predictor  # noqa: E402
from mrkd_core.inference.export import export_onnx  # noqa: E402
from mrkd_core.model import build_mrkd  # noqa: E402
from mrkd_core.model_io import load_model_file, save_model  # noqa: E402
from mrkd_core.storage import ArtifactStore  # noqa: E402

SHAPES = {"r18-256": ("resnet18", 256), "wrn50-256": ("wide_resnet50_2", 256)}
# Requests per concurrency and shape (times --requests): enough for a p99 at 8, bounded for WRN50 on CPUs.
REQUESTS = {"r18-256": {1: 40, 8: 96, 32: 160}, "wrn50-256": {1: 12, 8: 40, 32: 64}}
START_TIMEOUT = 600
RAY_WORKER_NICENESS = 15  # Ray starts its workers (the replicas) this much nicer than the raylet


def _images(workdir: Path, size: int, n: int) -> list[bytes]:
    """PNG bytes of generated test images (the image size of the model: no resize cost to compare),
    also written to ``workdir/png/``."""
    root = make_synthetic_mvtec(workdir / "data", categories=("obj_disc",), n_train=1, n_test_good=n // 2,
                                n_test_defect=n - n // 2, size=size, seed=3)
    paths = sorted((root / "obj_disc" / "test").rglob("*.png"))[:n]
    out = []
    (workdir / "png").mkdir(exist_ok=True)
    for i, p in enumerate(paths):
        buf = io.BytesIO()
        Image.open(p).convert("RGB").save(buf, format="PNG")
        out.append(buf.getvalue())
        (workdir / "png" / f"{i:03d}.png").write_bytes(out[-1])
    return out


def _model(workdir: Path, backbone: str, size: int) -> Path:
    cfg = MRKDConfig(backbone=backbone, teacher_weights="none", image_size=size, device="cpu", progress=False)
    torch.manual_seed(0)
    path = workdir / f"{backbone}-{size}" / "model.pt"
    save_model(build_mrkd(cfg).eval(), cfg, ArtifactStore(path.parent), "model.pt", extra={"category": "bench"})
    return path


def in_process(location: Path, engine: str, images: list[bytes], batch: int, repeats: int = 1) -> float:
    """Best-of-``repeats`` ms per image of decode + ``predict_decoded`` in passes of ``batch``."""
    predictor = Predictor.load(location, device="cpu", batch_size=batch,
                               engine="auto" if engine == "torch" else engine)
    predictor.predict_decoded([("warm", load_image_bytes(images[0], "warm"))] * batch)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(0, len(images), batch):
            chunk = images[i:i + batch]
            predictor.predict_decoded([(str(j), load_image_bytes(b, str(j))) for j, b in enumerate(chunk)])
        best = min(best, (time.perf_counter() - started) * 1000 / len(images))
    return best


def in_process_like_a_replica(location: Path, engine: str, images_dir: Path, batch: int, threads: int) -> float:
    """:func:`in_process` in a fresh process scheduled as a Serve replica is: its own session (Linux
    gives every session an equal share of a busy CPU) and Ray's worker niceness (+15); else the
    comparison measures the scheduler, not the service."""
    code = ("import sys, json, pathlib, torch; sys.path.insert(0, sys.argv[1]); "
            "torch.set_num_threads(int(sys.argv[6])); import bench_serve as b; "
            "imgs = [p.read_bytes() for p in sorted(pathlib.Path(sys.argv[4]).glob('*.png'))]; "
            "print(json.dumps(b.in_process(pathlib.Path(sys.argv[2]), sys.argv[3], imgs, int(sys.argv[5]))))")
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT / "bench"), str(location), engine, str(images_dir),
                           str(batch), str(threads)], capture_output=True, text=True, start_new_session=True,
                          preexec_fn=lambda: os.nice(RAY_WORKER_NICENESS), env={**os.environ, "PYTHONPATH": str(ROOT)},
                          timeout=3600)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return float(proc.stdout.strip().splitlines()[-1])


class Service:
    """``mrkd serve`` on 127.0.0.1, started and stopped by PID."""

    def __init__(self, model: Path, engine: str, port: int, cpus: float, workdir: Path):
        home = workdir / "home"  # no local Ray head to join: a Ray of the service's own
        home.mkdir(exist_ok=True)
        env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("RAY_ADDRESS", None)
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(workdir / f"serve-{engine}.log", "wb")
        cmd = [str(Path(sys.executable).parent / "mrkd"), "serve", f"bench={model}", "--engine", engine,
               "--port", str(port), "--cpus-per-replica", str(cpus), "--record", str(workdir / "record")]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        line = ""
        while "serving bench" not in line:
            line = self.proc.stdout.readline()
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mrkd serve did not start; see {self.log.name}")
        with urllib.request.urlopen(self.url + "/models", timeout=30) as resp:
            self.threads = json.loads(resp.read())["models"][0]["threads"]

    def post(self, body: bytes) -> float:
        """Seconds for one request (an error raises)."""
        request = urllib.request.Request(self.url + "/predict", data=body, headers={"Content-Type": "image/png"})
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=600) as resp:
            json.loads(resp.read())
        return time.perf_counter() - started

    def load(self, images: list[bytes], concurrency: int, n: int) -> tuple[float, float, float]:
        """(p50 ms, p99 ms, requests/s) of ``n`` requests, ``concurrency`` at a time."""
        for b in images[:concurrency]:  # warm-up: every thread's connection, a first batch
            self.post(b)
        latencies: list[float] = []
        lock = threading.Lock()

        def one(i: int) -> None:
            seconds = self.post(images[i % len(images)])
            with lock:
                latencies.append(seconds)

        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(one, range(n)))
        wall = time.perf_counter() - started
        ms = np.array(latencies) * 1000
        return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), n / wall

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def bench(shape: str, engine: str, args: argparse.Namespace, workdir: Path, images: list[bytes],
          model: Path) -> dict:
    """One shape and engine: the in-process figures and the service's, measured in alternating rounds
    (the load of a shared machine drifts: each round compares the two under the same load); medians."""
    location = model
    if engine != "torch":
        location = workdir / f"{shape}.onnx"
        if not location.exists():
            export_onnx(load_model_file(model), location)
    service = Service(location, engine, args.port, args.cpus_per_replica, workdir)
    counts = {c: max(c, int(n * args.requests)) for c, n in REQUESTS[shape].items()}
    rounds: list[dict] = []
    try:
        assert service.threads == torch.get_num_threads(), (service.threads, torch.get_num_threads())
        for _ in range(args.rounds):
            png = workdir / shape / "png"
            threads = torch.get_num_threads()
            b1 = in_process_like_a_replica(location, engine, png, 1, threads)
            p50_1, p99_1, rps_1 = service.load(images, 1, counts[1])
            b16 = in_process_like_a_replica(location, engine, png, 16, threads)
            _, _, rps_32 = service.load(images, 32, counts[32])
            p50_8, p99_8, rps_8 = service.load(images, 8, counts[8])
            rounds.append({"b1": b1, "b16": b16, "p50_1": p50_1, "p99_1": p99_1, "rps_1": rps_1, "p50_8": p50_8,
                           "p99_8": p99_8, "rps_8": rps_8, "rps_32": rps_32})
    finally:
        service.stop()
    m = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    ratio = {k: statistics.median(r[a] / r[b] for r in rounds) for k, (a, b) in
             {"c1": ("p50_1", "b1"), "c8": ("p99_8", "p50_8")}.items()}
    c32 = statistics.median(r["rps_32"] * r["b16"] / 1000 for r in rounds)
    return {"shape": shape, "engine": engine, "in-proc b1 ms": m["b1"], "in-proc b16 img/s": 1000 / m["b16"],
            "p50 c1 ms": m["p50_1"], "p99 c1 ms": m["p99_1"], "p50 ÷ b1": ratio["c1"],
            "p50 − b1 ms": statistics.median(r["p50_1"] - r["b1"] for r in rounds), "req/s c1": m["rps_1"],
            "req/s c8": m["rps_8"], "p99 ÷ p50 c8": ratio["c8"], "req/s c32": m["rps_32"], "c32 ÷ b16": c32}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--engines", nargs="+", default=["torch", "onnxruntime"], choices=["torch", "onnxruntime"])
    parser.add_argument("--requests", type=float, default=1.0, help="scale the number of requests per concurrency")
    parser.add_argument("--images", type=int, default=16, help="distinct images sent round-robin")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of in-process and service")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--cpus-per-replica", type=float, default=float(torch.get_num_threads()))
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, int(args.cpus_per_replica)))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        workdir = Path(tmp)
        for shape in args.shapes:
            backbone, size = SHAPES[shape]
            images = _images(workdir / shape, size, args.images)
            model = _model(workdir, backbone, size)
            for engine in args.engines:
                rows.append(bench(shape, engine, args, workdir, images, model))
                print(json.dumps(rows[-1]), flush=True)
    df = pd.DataFrame(rows)
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads "
          f"in-process and --cpus-per-replica {args.cpus_per_replica:g}; random teacher; one 256 px PNG per request; "
          "load average at the end: " + " ".join(f"{x:.1f}" for x in os.getloadavg()))
    print(markdown(df, lambda c, v: f"{v:.2f}" if "÷" in c else f"{v:.1f}"))
    print("\ntargets: p50 c1 ≤ max(1.10 × b1, b1 + 5 ms); req/s c32 ≥ 0.90 × in-process b16 img/s; p99 ≤ 2 × p50 at c8")
    for r in rows:
        misses = []
        if r["p50 c1 ms"] > max(1.10 * r["in-proc b1 ms"], r["in-proc b1 ms"] + 5):
            misses.append(f"c1 p50 {r['p50 ÷ b1']:.2f}× b1 (+{r['p50 − b1 ms']:.1f} ms)")
        if r["c32 ÷ b16"] < 0.90:
            misses.append(f"c32 {r['c32 ÷ b16']:.2f}× b16")
        if r["p99 ÷ p50 c8"] > 2:
            misses.append(f"c8 p99 {r['p99 ÷ p50 c8']:.2f}× p50")
        print(f"{r['shape']} {r['engine']}: " + ("all targets met" if not misses else "missed: " + "; ".join(misses)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
