"""Does this checkout train, score and store exactly what an earlier revision did?

A refactor must not change a number. This trains the smoke spec's ``obj_disc`` key (32 px,
one thread) with this checkout and with REV (a ``git worktree`` of it, removed afterwards)
into two stores, then compares the run directories: every weight tensor, the epoch losses,
the per-image scores and metric rows (timings, timestamps, paths and code revisions left
out), the Fig. 7 maps and the calibration. Prints a table; exit status 1 when anything differs.

    .venv/bin/python bench/bitexact.py --against fb065a3
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Run inside each checkout (its own mrkd_core on PYTHONPATH): train the key, print its run directory.
_TRAIN = """
import sys, torch
from pathlib import Path
torch.set_num_threads(1)
from mrkd_core.engine import train_evaluate
from mrkd_core.specs import load_spec, prepare_data
from mrkd_core.storage import ArtifactStore
base, code = Path(sys.argv[1]), Path(sys.argv[2])
spec = load_spec(str(code / "flows/specs/smoke.yaml")).narrow(categories=["obj_disc"], image_size=32)
prepare_data(spec, str(base / "data"))
out = train_evaluate(spec.tasks(str(base / "data"))[0], ArtifactStore(base / "store"), "r1")
print(out["run_dir"] if isinstance(out, dict) else out.run_dir)
"""

# Columns that record when, where, how long or by which code: they differ between any two runs.
_RUN_SPECIFIC = ("seconds", "started", "finished", "per_second", "git_revision", "host", "path", "data_root",
                 "calibrated_at")


def train(code: Path, base: Path) -> Path:
    out = subprocess.run([sys.executable, "-c", _TRAIN, str(base), str(code)], cwd=code, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(code)}, check=True)
    return base / "store" / out.stdout.strip().splitlines()[-1]


def _kept(d: dict) -> dict:
    return {k: v for k, v in d.items() if not any(t in k for t in _RUN_SPECIFIC) and k != "images"}


def compare(a: Path, b: Path) -> list[tuple[str, bool, str]]:
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    rows = []
    sa = torch.load(io.BytesIO((a / "model.pt").read_bytes()), weights_only=True)
    sb = torch.load(io.BytesIO((b / "model.pt").read_bytes()), weights_only=True)
    wa, wb = sa["state_dict"], sb["state_dict"]
    differ = [k for k in wa if k not in wb or not torch.equal(wa[k], wb[k])]
    rows.append(("weights (model.pt)", set(wa) == set(wb) and not differ, f"{len(wa)} tensors, {len(differ)} differ"))
    same_cal = _kept(sa.get("calibration") or {}) == _kept(sb.get("calibration") or {})
    rows.append(("calibration", same_cal, "thresholds, normalisation, policy"))
    la, lb = (json.loads((d / "train.json").read_text())["epoch_losses"] for d in (a, b))
    rows.append(("epoch losses", la == lb, f"{len(la)} epochs"))
    for name in ("scores.parquet", "metrics.parquet"):
        ta, tb = pq.read_table(a / name).to_pandas(), pq.read_table(b / name).to_pandas()
        cols = [c for c in ta.columns if not any(t in c for t in _RUN_SPECIFIC)]
        same = len(ta) == len(tb) and all(
            c in tb.columns and ta[c].astype(str).tolist() == tb[c].astype(str).tolist() for c in cols)
        rows.append((name, same, f"{len(ta)} rows × {len(cols)} columns"))
    ma, mb = np.load(a / "maps.npz"), np.load(b / "maps.npz")
    rows.append(("maps.npz", all(np.array_equal(ma[k], mb[k]) for k in ("images", "masks", "maps", "labels")),
                 "images, masks, maps, labels"))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", required=True, help="the git revision to compare with (e.g. fb065a3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(old), args.against], cwd=ROOT, check=True)
        try:
            rows = compare(train(old, Path(tmp) / "a"), train(ROOT, Path(tmp) / "b"))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)
    print(f"| smoke/obj_disc, 32 px: {args.against} vs this checkout | equal | compared |")
    print("|---|---|---|")
    for what, equal, detail in rows:
        print(f"| {what} | {'yes' if equal else 'NO'} | {detail} |")
    return 0 if all(equal for _, equal, _ in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
