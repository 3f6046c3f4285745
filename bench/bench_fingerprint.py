"""Time the training-data fingerprint on a large split: cold, re-run unchanged, one image changed.

    .venv/bin/python bench/bench_fingerprint.py [--files 10000] [--kib 64] [--repeats 3]

Writes ``--files`` random files of ``--kib`` KiB into a temporary dataset root (removed
afterwards; their mtimes are set an hour back, past the racy window), then times
``fingerprint_samples`` on them as a split:

- ``hash everything``: no cache, every file read and hashed — what the cache replaces
  (the files were just written, so they come from the page cache: a lower bound for a
  real disk or NFS);
- ``re-run, unchanged``: with the cache of the previous run (only ``stat`` per file);
- ``re-run, 1 changed``: one image rewritten (same size), then a run with the cache.

The ratio column is the time against ``hash everything``. Each row is the best of
``--repeats`` runs (the cache file is restored before each).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrkd_core.data.base import Sample  # noqa: E402
from mrkd_core.data.fingerprint import CACHE_FILE, HashCache, fingerprint_samples  # noqa: E402

HOUR_NS = 3600 * 10**9


def make_split(root: Path, n: int, kib: int) -> list[Sample]:
    folder = root / "cat" / "train" / "good"
    folder.mkdir(parents=True)
    samples = []
    for i in range(n):
        path = folder / f"{i:05d}.png"
        path.write_bytes(os.urandom(kib * 1024))
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - HOUR_NS))
        samples.append(Sample(str(path), None, 0, "good", "cat"))
    return samples


def timed(samples: list[Sample], root: Path, cache_path: Path | None, saved: bytes | None) -> tuple[float, int]:
    """Seconds and files hashed of one fingerprint, with the cache file set to ``saved`` first."""
    if cache_path is not None:
        if saved is None:
            cache_path.unlink(missing_ok=True)
        else:
            cache_path.write_bytes(saved)
    cache = HashCache(root, cache_path if cache_path is not None else root / ".no-cache.json")
    t0 = time.perf_counter()
    fingerprint_samples(samples, root, cache)
    if cache_path is not None:
        cache.save()
    return time.perf_counter() - t0, cache.hashed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--kib", type=int, default=64, help="size of each file")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="mrkd-bench-fingerprint-"))
    try:
        root = tmp / "dataset"
        samples = make_split(root, args.files, args.kib)
        cache_path = root / CACHE_FILE
        rows = []
        full = min(timed(samples, root, None, None) for _ in range(args.repeats))
        rows.append(("hash everything (no cache)", *full))
        timed(samples, root, cache_path, None)  # builds the cache
        saved = cache_path.read_bytes()
        rows.append(("re-run, unchanged", *min(timed(samples, root, cache_path, saved) for _ in range(args.repeats))))
        changed = Path(samples[len(samples) // 2].path)
        results = []
        for r in range(args.repeats):
            changed.write_bytes(os.urandom(args.kib * 1024))
            st = changed.stat()
            os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns - HOUR_NS + r + 1))
            results.append(timed(samples, root, cache_path, saved))
        rows.append(("re-run, 1 changed", *min(results)))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total_mb = args.files * args.kib / 1024
    print(f"fingerprint of {args.files} files x {args.kib} KiB ({total_mb:.0f} MiB), best of {args.repeats}")
    print(f"| {'case':<28} | {'files hashed':>12} | {'seconds':>8} | {'vs hash everything':>18} |")
    print(f"|{'-' * 30}|{'-' * 13}:|{'-' * 9}:|{'-' * 19}:|")
    base = rows[0][1]
    for name, seconds, hashed in rows:
        print(f"| {name:<28} | {hashed:>12} | {seconds:>8.3f} | {seconds / base:>17.3f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
