"""One run's results as the Markdown table of docs/datasets.md (ELPV) and the README: from the store.

Per (dataset, category, variant): image AU-ROC and F1-max (image), in %, the pixel
metrics where the test set has masks, the images trained and tested on, training time and
wall time (training + evaluation + storing, from the metrics rows' ``started_at`` and
``finished_at``) and the training throughput. The figures are what the flows stored
(``tables/metrics``); nothing is recomputed::

    .venv/bin/python bench/run_table.py --store artifacts/ilm/store --run elpv-r3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from md_table import markdown as bench_markdown  # noqa: E402

from mrkd_core.evaluate import scales_key  # noqa: E402
from mrkd_core.results import read_metrics  # noqa: E402
from mrkd_core.storage import ArtifactStore  # noqa: E402

VARIANT = {(False, False): "RD4AD (no ILM, no FLM)", (True, True): "MRKD", (True, False): "ILM only",
           (False, True): "FLM only"}


def run_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """The table's rows from metrics rows (the config's own score fusion only)."""
    rows = metrics[metrics["score_scales"] == scales_key((1, 2, 3))].copy()
    wall = (pd.to_datetime(rows["finished_at"], utc=True) - pd.to_datetime(rows["started_at"], utc=True))
    out = pd.DataFrame({
        "dataset": rows["dataset"], "category": rows["category"],
        "model": [VARIANT[(bool(i), bool(f))] for i, f in zip(rows["cfg_ilm"], rows["cfg_flm"])],
        "image AU-ROC": 100 * rows["image_auroc"], "F1-max (image)": 100 * rows["f1_max_image"],
        "pixel AU-ROC": 100 * rows["pixel_auroc"],
        "train / test images": [f"{a} / {b}" for a, b in zip(rows["n_train"], rows["n_test"])],
        "epochs": rows["cfg_epochs"], "train s": rows["train_seconds"], "wall s": wall.dt.total_seconds(),
        "train img/s": rows["images_per_second"],
    })
    if out["pixel AU-ROC"].isna().all():
        out = out.drop(columns="pixel AU-ROC")
    return out.sort_values(["dataset", "category", "model"]).reset_index(drop=True)


def markdown(df: pd.DataFrame) -> str:
    return bench_markdown(df, lambda column, value: f"{value:.0f}" if column.endswith(" s") else f"{value:.1f}",
                          missing="—")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--run", required=True, help="run id (e.g. elpv-r3)")
    args = parser.parse_args(argv)
    metrics = read_metrics(ArtifactStore(args.store), args.run)
    if metrics.empty:
        raise SystemExit(f"no metrics of run {args.run!r} in {args.store}")
    teacher = ", ".join(sorted(metrics["teacher_weights"].astype(str).unique()))
    sizes = ", ".join(str(s) for s in sorted(metrics["cfg_image_size"].unique()))
    backbones = ", ".join(sorted(metrics["cfg_backbone"].astype(str).unique()))
    print(f"run {args.run}: backbone {backbones}, teacher_weights {teacher}, {sizes} px\n")
    print(markdown(run_table(metrics)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
