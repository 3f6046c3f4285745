"""Time to generate the synthetic MVTec-layout categories the tests and ``--spec smoke`` train on.

    .venv/bin/python bench/bench_synthetic.py [--repeats 3]

``mrkd_core.data.synthetic.make_synthetic_mvtec`` with what
tests/core/test_synthetic_data.py::test_generates_every_image_and_mask generates (the three
default categories, 20 train + 5 good + 5 defective test images each, 128 px, and their masks);
the table gives the best of ``--repeats`` runs against the 2 s that test used to allow
(the suite makes such data in many fixtures, so its cost is part of every test run).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrkd_core.data.synthetic import make_synthetic_mvtec  # noqa: E402

BUDGET_S = 2.0  # the bound the test held before issue 25 (no test asserts a wall-clock time now)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    times = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            make_synthetic_mvtec(Path(tmp) / "t", n_train=20, n_test_good=5, n_test_defect=5, size=128, seed=0)
            times.append(time.perf_counter() - t0)
    best = min(times)
    print(f"synthetic data, best of {args.repeats}\n")
    print("| what | seconds | budget (s) | budget / measured |")
    print("|---|---:|---:|---:|")
    print(f"| 3 categories × (20 + 5 + 5) images + masks, 128 px | {best:.2f} | {BUDGET_S:.1f} | {BUDGET_S / best:.1f}× |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
