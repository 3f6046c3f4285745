"""The report's tables of the newer benchmarks: VisA, MVTec AD 2 and MVTec LOCO AD.

Pure functions like :mod:`mrkd_core.paper_tables`, with its rules (docs/tables.md): one row
per category in the dataset's order and an average (labelled ``average (n/N categories)``
when some are missing); values in percent; the latest ``finished_at`` wins a cell; notes say
which runs, narrowed or not the paper's setting. Two models are measured, told apart by
their configuration (not their label): MRKD (ILM and FLM on) and its RD4AD ablation (both
off), at the configuration's own fusion of scales (where the protocol metrics are).

Measured and published numbers never share a column: ``<model> <metric> measured`` come from
the metrics table, ``<method> <metric> (published)`` only from
``mrkd_core/resources/published_benchmarks.csv`` (each cell with its source, paper and table),
one column per (method, metric) that has at least one published cell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mrkd_core.data.mvtec_ad2 import (
    AD2_PRO_LIMIT,
    MVTEC_AD2_CATEGORIES,
    SEG_THRESHOLD_K,
)
from mrkd_core.data.mvtec_loco import MVTEC_LOCO_CATEGORIES, SPRO_LIMIT
from mrkd_core.data.visa import VISA_CATEGORIES
from mrkd_core.paper_tables import (
    as_bool,
    latest,
    measured_percent,
    norm_scales,
    prepare_metrics,
    provenance,
)
from mrkd_core.published import (
    BENCHMARKS_RESOURCE,
    load_published_benchmarks,
    to_percent,
)

#: The measured models: label → (cfg_ilm, cfg_flm).
MODELS: dict[str, tuple[bool, bool]] = {"MRKD": (True, True), "RD4AD": (False, False)}
#: The config fields that tell the models apart: a table's axis, never "not the paper's setting" in its notes.
MODEL_FIELDS = ("ilm", "flm")


@dataclass(frozen=True)
class Benchmark:
    """One benchmark table: its dataset, categories in the dataset's order, the metrics shown, notes."""

    dataset: str
    title: str
    categories: tuple[str, ...]
    metrics: tuple[str, ...]
    notes: tuple[str, ...] = ()


BENCHMARKS: dict[str, Benchmark] = {
    "visa": Benchmark(
        "visa", "VisA (published 1-class split): detection and localisation (%)", VISA_CATEGORIES,
        ("image_auroc", "pixel_auroc", "au_pro", "au_pro_per_image"),
        (("VisA's split_csv/1cls.csv; masks binarised (any instance is a defect). au_pro is the official "
          "MVTec AD definition up to FPR 0.3, au_pro_per_image the RD4AD research-code convention."),)),
    "mvtec_ad2": Benchmark(
        "mvtec_ad2", "MVTec AD 2 (test_public): detection, AU-PRO (FPR 0.05) and segmentation F1 (%)",
        MVTEC_AD2_CATEGORIES, ("image_auroc", "au_pro_005", "seg_f1"),
        ((f"au_pro_005: AU-PRO up to FPR {AD2_PRO_LIMIT}; seg_f1: pixel F1 over the test set at mean + "
          f"{SEG_THRESHOLD_K:g} std of the validation/good pixel scores (docs/metrics.md)."),
         ("Measured on test_public. MVTec AD 2's leaderboard scores test_private and test_private_mixed on "
          "MVTec's server (mrkd ad2-submission writes them): other images, not comparable cell by cell."))),
    "mvtec_loco": Benchmark(
        "mvtec_loco", "MVTec LOCO AD: image AU-ROC and AU-sPRO (FPR 0.05) per anomaly type (%)",
        MVTEC_LOCO_CATEGORIES,
        ("image_auroc_logical", "image_auroc_structural", "image_auroc_mean_types",
         "au_spro_logical", "au_spro_structural", "au_spro_mean_types"),
        ((f"Per anomaly type: its test images with every good one; *_mean_types is the mean of the two types. "
          f"AU-sPRO up to FPR {SPRO_LIMIT}, saturation from each category's defects_config.json, at the "
          "evaluated image size (absolute thresholds scaled by the area ratio; docs/metrics.md)."),)),
}


def _model(ilm: Any, flm: Any) -> str | None:
    flags = (as_bool(ilm), as_bool(flm))
    return next((name for name, want in MODELS.items() if want == flags), None)


def _own_fusion(df: pd.DataFrame) -> pd.Series:
    """Rows of the configuration's own fusion of scales (the protocol metrics are only there)."""
    if "cfg_score_scales" not in df.columns:
        return pd.Series(True, index=df.index)
    return pd.Series([norm_scales(s) == norm_scales(c) for s, c in zip(df["score_scales"], df["cfg_score_scales"])],
                     index=df.index)


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def build_benchmark_table(key: str, metrics_df: pd.DataFrame | None,
                          published_df: pd.DataFrame | None = None) -> pd.DataFrame:
    """The table of benchmark ``key`` (``visa``, ``mvtec_ad2``, ``mvtec_loco``), values in percent.

    ``published_df``: published cells in ``published_benchmarks.csv``'s format (default: the
    resource). ``attrs`` as the paper's tables (``title``, ``notes``, ``runs``, ``narrowed``,
    ``not_paper_setting``, ``n_measured_rows``).
    """
    bench = BENCHMARKS[key]
    published = load_published_benchmarks() if published_df is None else published_df
    pub = published[published["dataset"] == bench.dataset]
    df = prepare_metrics(metrics_df)
    for m in bench.metrics:
        if m in df.columns:
            df[m] = pd.to_numeric(df[m], errors="coerce").astype("float64")
    rows = df[(df["dataset"] == bench.dataset) & _own_fusion(df)].copy()
    rows["_model"] = [_model(i, f) for i, f in zip(rows["cfg_ilm"], rows["cfg_flm"])]
    rows = rows[rows["_model"].notna()]
    rows, n_multi = latest(rows, ["category", "_model"])
    cells = {(c, mo): r for c, mo, (_, r) in zip(rows["category"], rows["_model"], rows.iterrows())}
    look = {(r, me, k): to_percent(float(v), u) for r, me, k, v, u in
            zip(pub["row"], pub["method"], pub["metric"], pub["value"], pub["unit"])}
    # Published columns only for the (method, metric) pairs the sources print: a method with
    # image AU-ROCs only gets no empty AU-sPRO columns.
    published_cols = [(me, m) for me in dict.fromkeys(pub["method"]) for m in bench.metrics
                      if ((pub["method"] == me) & (pub["metric"] == m)).any()]

    extra = sorted({c for c, _ in cells} - set(bench.categories))
    table: list[dict[str, Any]] = []
    measured: dict[str, list[float]] = {}
    for cat in [*bench.categories, *extra]:
        row: dict[str, Any] = {"category": cat}
        for model in MODELS:
            for m in bench.metrics:
                r = cells.get((cat, model))
                value = measured_percent(float(r[m])) if r is not None and m in r.index else math.nan
                row[f"{model} {m} measured"] = value
                if cat in bench.categories and r is not None:
                    measured.setdefault(f"{model} {m} measured", []).append(value)
        for method, m in published_cols:
            row[f"{method} {m} (published)"] = look.get((cat, method, m), math.nan)
        table.append(row)
    n_measured = len({c for c, _ in cells if c in bench.categories})
    n_total = len(bench.categories)
    average = {"category": "average" if n_measured == n_total else f"average ({n_measured}/{n_total} categories)"}
    for model in MODELS:
        for m in bench.metrics:
            average[f"{model} {m} measured"] = _mean(measured.get(f"{model} {m} measured", []))
    for method, m in published_cols:
        average[f"{method} {m} (published)"] = look.get(("average", method, m), math.nan)
    table.append(average)
    columns = ["category", *[f"{mo} {m} measured" for mo in MODELS for m in bench.metrics],
               *[f"{me} {m} (published)" for me, m in published_cols]]
    out = pd.DataFrame(table, columns=columns)

    prov = provenance(rows, n_multi, MODEL_FIELDS)
    notes = [*prov.notes, *bench.notes,
             "Measured models by configuration: MRKD = ILM and FLM on; RD4AD = both off (its ablation)."]
    if extra:
        notes.append(f"Categories not in {bench.dataset}'s list, shown but not averaged: {', '.join(extra)}.")
    if 0 < n_measured < n_total:
        notes.append(f"Measured average over {n_measured}/{n_total} categories: not comparable with a full average.")
    if pub.empty:
        notes.append(f"No published numbers: none has been transcribed into mrkd_core/resources/{BENCHMARKS_RESOURCE} "
                     "(each needs its paper and table; docs/tables.md).")
    else:
        notes.append("`(published)` columns: " + "; ".join(sorted(set(pub["source"]))) + ". Their average row "
                     "holds the averages the source prints (over all its categories), never recomputed here.")
    out.attrs = {"key": key, "title": bench.title, "notes": notes, "unit": "percent", "runs": prov.runs,
                 "narrowed": prov.narrowed, "not_paper_setting": prov.not_paper_setting,
                 "n_measured_rows": len(rows), "absent_cells": []}
    return out


def build_benchmark_tables(metrics_df: pd.DataFrame | None, published_df: pd.DataFrame | None = None, *,
                           include_unmeasured: bool = True) -> dict[str, pd.DataFrame]:
    """The tables of the benchmarks that have measured rows or published numbers, keyed like ``BENCHMARKS``.

    ``include_unmeasured=False``: only the benchmarks whose dataset ``metrics_df`` holds (a run's report
    does not show a LOCO table of published numbers alone when the run measured MVTec AD).
    """
    published = load_published_benchmarks() if published_df is None else published_df
    datasets = set(prepare_metrics(metrics_df)["dataset"]) | (set(published["dataset"]) if include_unmeasured else set())
    return {key: build_benchmark_table(key, metrics_df, published)
            for key, bench in BENCHMARKS.items() if bench.dataset in datasets}
