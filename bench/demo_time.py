"""How long `make demo` takes: its wall time here, and an estimate for a quiet 2-core machine.

Runs the demo's own command (``python -m flows.benchmark --spec demo``, the Ray runner, as
``make demo`` does) into a fresh store, and samples the CPU time of every process it starts
(the driver, Prefect's temporary server, Ray and its workers: every process whose
environment carries this run's marker) every ``--interval`` seconds. On a shared machine
the wall time mostly measures the other users; the CPU seconds do not. Estimate for a
quiet machine with ``--cores`` cores: the CPU seconds spread over the cores (Ray runs one
training per core), at least the CPU seconds of the busiest process. It is a lower bound:
waits that use no CPU (servers starting, files) come on top.

::

    .venv/bin/python bench/demo_time.py --store /tmp/demo-store [--spec demo] [--cores 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")


def _marked_pids(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` (its own, not its children's: those are sampled themselves)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICK


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, help="a fresh store folder (nothing reused)")
    parser.add_argument("--spec", default="demo")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--log", help="write the demo's output here (default: <store>.log)")
    args = parser.parse_args(argv)
    if Path(args.store).exists() and any(Path(args.store).iterdir()):
        raise SystemExit(f"{args.store}: not empty; the measurement needs a fresh store")
    marker = f"MRKD_DEMO_TIME_MARK={uuid.uuid4().hex}"
    env = {**os.environ, "MRKD_STORE": args.store, marker.split("=")[0]: marker.split("=")[1]}
    log_path = Path(args.log or f"{args.store.rstrip('/')}.log")
    started = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "flows.benchmark", "--spec", args.spec], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        seen: dict[int, float] = {}
        while proc.poll() is None:
            for pid in _marked_pids(marker):
                cpu = _cpu_seconds(pid)
                if cpu is not None:
                    seen[pid] = max(seen.get(pid, 0.0), cpu)
            time.sleep(args.interval)
    wall = time.perf_counter() - started
    total = sum(seen.values())
    busiest = max(seen.values(), default=0.0)
    quiet = max(total / args.cores, busiest)
    print(f"{args.spec}: exit {proc.returncode}, wall {wall / 60:.1f} min on this machine "
          f"(load average now {os.getloadavg()[0]:.1f}); CPU {total / 60:.1f} min in {len(seen)} processes "
          f"(busiest {busiest / 60:.1f} min); quiet {args.cores}-core estimate ≥ {quiet / 60:.1f} min "
          f"(CPU / cores), log {log_path}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
