"""One run's results as the Markdown table of docs/datasets.md (ELPV) and the README: from the store.

Per (dataset, category, variant): image AU-ROC and F1-max (image), in %, the pixel
metrics where the test set has masks, the images trained and tested on, training time and
wall time (training + evaluation + storing, from the metrics rows' ``started_at`` and
``finished_at``) and the training throughput, and the evaluation revision of the metrics.
The figures are what the flows stored (``tables/metrics``), or, with ``--evaluation-id``,
the metrics of the records of a later ``mrkd evaluate --evaluation-id ID --config-hash H``
of the same models (e.g. a re-evaluation by a newer evaluation revision; a model without a
record keeps its training-time row); timings stay those of the training run. Nothing is
recomputed::

    .venv/bin/python bench/run_table.py --store artifacts/ilm/store --run elpv-r3 [--evaluation-id elpv-r3-r2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from eval_records import read_evaluations, with_run_revisions  # noqa: E402
from md_table import markdown as bench_markdown  # noqa: E402

from mrkd_core.evaluate import scales_key  # noqa: E402
from mrkd_core.partitioned import read_metrics  # noqa: E402
from mrkd_core.results import METRIC_COLUMNS  # noqa: E402
from mrkd_core.revision import UNRECORDED_REVISION  # noqa: E402
from mrkd_core.storage import ArtifactStore  # noqa: E402

VARIANT = {(False, False): "RD4AD (no ILM, no FLM)", (True, True): "MRKD", (True, False): "ILM only",
           (False, True): "FLM only"}


def with_evaluations(metrics: pd.DataFrame, records: list[dict]) -> pd.DataFrame:
    """``metrics`` with column ``evaluation_revision`` (1 where unrecorded) and, for each row whose
    model (category, config hash) and score fusion has a record in ``records``
    (``eval_records.read_evaluations``), the record's metrics and evaluation revision instead."""
    out = metrics.copy()
    if "evaluation_revision" not in out.columns:
        out["evaluation_revision"] = UNRECORDED_REVISION
    out["evaluation_revision"] = out["evaluation_revision"].fillna(UNRECORDED_REVISION).astype(int)
    for rec in records:
        hit = ((out["dataset"] == rec["dataset"]) & (out["category"] == rec["category"])
               & (out["config_hash"] == rec["trained_hash"]) & (out["score_scales"] == rec["score_scales"]))
        for column in METRIC_COLUMNS:
            out.loc[hit, column] = rec["metrics"].get(column)
        out.loc[hit, "evaluation_revision"] = rec["evaluation_revision"]
    return out


def run_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """The table's rows from metrics rows (the config's own score fusion only)."""
    rows = metrics[metrics["score_scales"] == scales_key((1, 2, 3))].copy()
    if "evaluation_revision" not in rows.columns:
        rows["evaluation_revision"] = UNRECORDED_REVISION
    wall = (pd.to_datetime(rows["finished_at"], utc=True) - pd.to_datetime(rows["started_at"], utc=True))
    out = pd.DataFrame({
        "dataset": rows["dataset"], "category": rows["category"],
        "model": [VARIANT[(bool(i), bool(f))] for i, f in zip(rows["cfg_ilm"], rows["cfg_flm"])],
        "image AU-ROC": 100 * rows["image_auroc"], "F1-max (image)": 100 * rows["f1_max_image"],
        "pixel AU-ROC": 100 * rows["pixel_auroc"],
        "train / test images": [f"{a} / {b}" for a, b in zip(rows["n_train"], rows["n_test"])],
        "epochs": rows["cfg_epochs"], "train s": rows["train_seconds"], "wall s": wall.dt.total_seconds(),
        "train img/s": rows["images_per_second"], "eval rev": rows["evaluation_revision"].astype(int),
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
    parser.add_argument("--evaluation-id", help="take the metrics from the records of this `mrkd evaluate "
                                                "--evaluation-id` of the run's models (timings stay the run's)")
    parser.add_argument("--evaluations", help="store holding --evaluation-id (default: --store)")
    args = parser.parse_args(argv)
    metrics = read_metrics(ArtifactStore(args.store), args.run, with_source=True)
    if metrics.empty:
        raise SystemExit(f"no metrics of run {args.run!r} in {args.store}")
    records = []
    if args.evaluation_id:
        records = read_evaluations(ArtifactStore(args.evaluations or args.store), args.evaluation_id)
        if not records:
            raise SystemExit(f"no records of evaluation {args.evaluation_id!r} in {args.evaluations or args.store}")
    metrics = with_evaluations(with_run_revisions(ArtifactStore(args.store), metrics), records)
    teacher = ", ".join(sorted(metrics["teacher_weights"].astype(str).unique()))
    sizes = ", ".join(str(s) for s in sorted(metrics["cfg_image_size"].unique()))
    backbones = ", ".join(sorted(metrics["cfg_backbone"].astype(str).unique()))
    print(f"run {args.run}: backbone {backbones}, teacher_weights {teacher}, {sizes} px; metrics from "
          + (f"evaluation {args.evaluation_id} where it has the model, else " if records else "")
          + "the training run's rows; 'eval rev': the evaluation revision that scored them\n")
    print(markdown(run_table(metrics)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
