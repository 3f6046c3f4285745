"""Where the wall time of a flow run goes: Prefect, Ray start-up, per-task overhead, training.

    .venv/bin/python bench/bench_orchestration.py [--spec smoke] [--epochs N] [--slots 1]

Runs, in a fresh temporary store, the way ``make demo`` runs the pipeline (Prefect's
temporary server, a local Ray on 127.0.0.1):

1. the imports a flow run pays (torch, Prefect, Ray, the project);
2. an empty flow: Prefect's temporary server start and a first flow run;
3. Ray alone, as the flow starts it (``flows.ray_runner.make_task_runner``): ``ray.init``,
   a first round trip to a fresh worker process, the import of the training code there;
4. ``mrkd-benchmark`` with ``force`` on ``--spec`` with its variants doubled by an RD4AD
   baseline (so there are several tasks) and Ray limited to ``--slots`` concurrent
   tasks: with 1, the tasks run one after another in one reused worker, so the gaps
   between them are the steady-state cost of dispatching a task;
5. the same flow again without ``force``: every key is complete, no Ray is started, so
   its wall time is the flow's own fixed cost (planning, the skipped records, report).

From the task records of (4) (``started``/``finished``/``seconds`` measured inside the
worker; ``train_seconds`` in metrics.parquet, ``eval_seconds`` in train.json) it prints
the per-task overhead as a share of a 60-second training (issue 8: < 5 %), once for
tasks that reuse a worker (CPU tasks) and once for tasks that each need a fresh worker
(Ray gives GPU tasks ``max_calls=1``: a new process per training, so that a CUDA context
never outlives its task).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET_TASK_SECONDS = 60.0


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def ray_startup() -> dict[str, float]:
    """ray.init as the flow does it, a first no-op task, then a task importing the training code."""
    import ray

    from flows.ray_runner import make_task_runner, worker_env

    runner = make_task_runner("ray", None)
    _, init_s = timed(ray.init, address="local", **runner.init_kwargs)
    try:
        env = {"env_vars": worker_env(os.environ["MRKD_STORE"], os.environ["MRKD_STORE"] + "/data", None)}

        @ray.remote(num_cpus=1, runtime_env=env)
        def noop() -> int:
            return os.getpid()

        @ray.remote(num_cpus=1, runtime_env=env)
        def import_training() -> float:
            t0 = time.perf_counter()
            import flows.train_evaluate  # noqa: F401
            import mrkd_core.runner  # noqa: F401

            return time.perf_counter() - t0

        _, first_s = timed(ray.get, noop.remote())
        _, warm_s = timed(ray.get, noop.remote())
        imports_s = ray.get(import_training.remote())
    finally:
        ray.shutdown()
    return {"init": init_s, "fresh worker": first_s, "warm worker": warm_s, "worker imports": imports_s}


def spec_with_baseline(name: str, epochs: int | None, folder: Path) -> str:
    """The spec with an RD4AD baseline variant added, as a YAML file (more tasks per run)."""
    from mrkd_core.specs import available_specs

    src = Path(__file__).resolve().parents[1] / "flows" / "specs" / f"{name}.yaml"
    if name not in available_specs() and not Path(name).is_file():
        raise SystemExit(f"unknown spec {name!r}; one of {available_specs()}")
    data = yaml.safe_load((src if src.is_file() else Path(name)).read_text())
    data["name"] = f"{data['name']}-orchestration"
    variants = data.get("variants", {})
    if not any(v.get("ilm") is False and v.get("flm") is False for v in variants.values()):
        data["variants"] = {**variants, "baseline-orch": {"ilm": False, "flm": False}}
    if epochs:
        data.setdefault("base", {})["epochs"] = epochs
    path = folder / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="smoke")
    ap.add_argument("--epochs", type=int, help="set the spec's epochs (longer trainings dilute the overhead)")
    ap.add_argument("--slots", type=int, default=1, help="concurrent Ray tasks (CPUs given to the local Ray)")
    args = ap.parse_args()
    out = sys.stdout
    with tempfile.TemporaryDirectory(prefix="bench-orchestration-") as tmp:
        os.environ["MRKD_STORE"] = str(Path(tmp) / "store")
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        t0 = time.perf_counter()
        import torch  # noqa: F401
        from prefect import flow

        import flows.benchmark
        from flows.ray_runner import make_task_runner
        from mrkd_core.results import read_parquet_bytes
        from mrkd_core.storage import ArtifactStore

        import_s = time.perf_counter() - t0

        @flow(name="bench-empty")
        def empty() -> int:
            return 0

        _, prefect_s = timed(empty)
        ray_s = ray_startup()
        spec = spec_with_baseline(args.spec, args.epochs, Path(tmp))
        # Ray with --slots CPUs: the tasks queue for them as trainings queue for GPUs.
        flows.benchmark.make_task_runner = partial(make_task_runner, num_cpus=args.slots)
        result, flow_s = timed(flows.benchmark.benchmark, spec=spec, run_id="bench-first", force=True)
        rerun, rerun_s = timed(flows.benchmark.benchmark, spec=spec, run_id="bench-rerun")
        store = ArtifactStore(os.environ["MRKD_STORE"])
        tasks = sorted((t for t in result["tasks"] if t["status"] == "trained"), key=lambda t: t["started"])
        eval_s = [float(store.read_json(f"{t['run_dir']}/train.json")["eval_seconds"]) for t in tasks]
        train_s = [float(read_parquet_bytes(store.read_bytes(f"{t['run_dir']}/metrics.parquet"))
                         .column("train_seconds")[0].as_py()) for t in tasks]
    if rerun["counts"].get("trained"):
        raise SystemExit(f"the rerun trained {rerun['counts']['trained']} task(s): the fixed-cost figure is invalid")

    n = len(tasks)
    work = [t + e for t, e in zip(train_s, eval_s)]
    in_task = [float(t["seconds"]) - w for t, w in zip(tasks, work)]
    pids = {t["pid"] for t in tasks}
    gaps = [b["started"] - a["finished"] for a, b in zip(tasks, tasks[1:])] if args.slots == 1 else []
    span = tasks[-1]["finished"] - tasks[0]["started"]
    gap = statistics.mean(gaps) if gaps else float("nan")
    reused = statistics.mean(in_task) + gap
    fresh = reused + ray_s["fresh worker"] + ray_s["worker imports"]

    out.write(f"# Orchestration of `{args.spec}` + baseline: {n} trainings, {args.slots} Ray slot(s), "
              f"{len(pids)} worker process(es); {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}\n")
    out.write("| part | seconds | what |\n|---|---|---|\n")
    out.write(f"| imports | {import_s:.1f} | torch, Prefect, Ray, the project (once per driver) |\n")
    out.write(f"| Prefect | {prefect_s:.1f} | temporary server start + an empty flow run (once per driver) |\n")
    for k, v in ray_s.items():
        out.write(f"| Ray: {k} | {v:.2f} | {'once per flow run' if k == 'init' else 'per worker process'} |\n")
    out.write(f"| flow run, everything trains | {flow_s:.1f} | `benchmark(force=True)` |\n")
    out.write(f"| flow run, nothing to train | {rerun_s:.1f} | planning, skipped records, report; no Ray |\n")
    out.write(f"| tasks, first start → last finish | {span:.1f} | inside the workers |\n")
    out.write(f"| training + evaluation | {sum(work):.1f} | {statistics.mean(work):.1f} per task |\n")
    out.write(f"| in-task overhead | {statistics.mean(in_task):.2f} per task | dataset check, claim, store writes, "
              "Parquet tables, model file |\n")
    if gaps:
        out.write(f"| gap between tasks | {gap:.2f} per task | finish → next start in the same worker: Prefect "
                  "task run, Ray scheduling |\n")
    out.write("\n")
    if gaps:
        out.write(f"per-task overhead, worker reused (CPU tasks): {reused:.2f} s = "
                  f"{100 * reused / TARGET_TASK_SECONDS:.1f} % of a {TARGET_TASK_SECONDS:.0f}-second training\n")
        out.write(f"per-task overhead, fresh worker per task (GPU tasks, Ray max_calls=1): {fresh:.2f} s = "
                  f"{100 * fresh / TARGET_TASK_SECONDS:.1f} %\n")
    out.write(f"fixed per flow run: {rerun_s + ray_s['init']:.1f} s (flow {rerun_s:.1f} + Ray start "
              f"{ray_s['init']:.1f}); per driver process: {import_s + prefect_s:.1f} s\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
