"""The paper's Tables 1-8 (and the data of Fig. 11) rebuilt from the ``metrics`` table.

Pure functions: a ``metrics`` DataFrame (one row per dataset/category/config/score-scale
set, schema in docs/interfaces.md) and the published numbers go in, one DataFrame per
table comes out, in the paper's shape. Rules, in one place (docs/tables.md explains why):

* Measured and published numbers never share a column. For MRKD a table shows
  ``<metric> measured`` next to ``<metric> paper`` and ``<metric> delta`` (measured −
  paper); the compared methods' numbers sit in ``<method> <metric> (published)``.
* Units: the metrics table stores fractions in [0, 1]; the paper prints percent. The
  measured values are multiplied by 100 in exactly one place (:func:`measured_percent`);
  Table 4's published fractions are converted by :func:`mrkd_core.published.to_percent`.
  Every value in every table is therefore in percent.
* Averages are computed the paper's way: the mean over the categories. When some of the
  paper's categories have no measured value the row is labelled
  ``average (n/N categories)`` and its delta is left empty — an average over a subset is
  not the paper's number.
* Missing cells stay NaN; nothing is filled in or interpolated.
* When several rows (runs) hold the same cell, the one with the latest ``finished_at``
  wins (ties: the later row of the input).
* Which rows feed a table: the knob that the table varies is free, every other knob
  (ILM fraction α, FLM ratio λ, backbone, fused scales) must be at the paper's default
  (:func:`mrkd_core.config.paper_defaults`). Table 5 is the exception: its rows are
  chosen by the ``variant`` label (``baseline``, ``ilm``, ``flm``, ``mrkd``).
* Each table carries ``attrs``: ``key``, ``title``, ``notes`` (narrowed runs, settings
  that are not the paper's such as ``teacher_weights=none``, partial averages, units),
  ``runs``, ``narrowed``, ``not_paper_setting``, ``n_measured_rows``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd

from mrkd_core.backbones import CATALOG
from mrkd_core.config import BACKBONES, RUNTIME_FIELDS, MRKDConfig, paper_defaults
from mrkd_core.metrics import PIXEL_METRICS
from mrkd_core.published import PUBLISHED_VERSION, load_published, to_percent
from mrkd_core.results import ABSENT_COLUMN

log = logging.getLogger(__name__)

#: MVTec AD categories in the paper's row order (textures, then objects).
MVTEC_CATEGORIES: tuple[str, ...] = (
    "carpet", "grid", "leather", "tile", "wood",
    "bottle", "cable", "capsule", "hazelnut", "metal_nut",
    "pill", "screw", "toothbrush", "transistor", "zipper",
)
#: BTAD products as the dataset names them; the paper prints them as 0, 1, 2.
BTAD_CATEGORIES: tuple[str, ...] = ("01", "02", "03")
#: α of Table 6 and λ of Fig. 11, as the paper varies them.
PAPER_ALPHAS: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
PAPER_LAMBDAS: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8)
#: Table 7 rows: fused scales as the metrics table names them, in the paper's order
#: (SM^{1&3} is not in the paper; it is measured and shown without a paper value).
TABLE7_SCALES: tuple[str, ...] = ("1", "2", "3", "1,2", "2,3", "1,3", "1,2,3")
#: Table 5 rows: metrics ``variant`` → the paper's setting.
TABLE5_VARIANTS: dict[str, str] = {
    "baseline": "baseline",
    "ilm": "baseline+ilm",
    "flm": "baseline+flm",
    "mrkd": "baseline+ilm+flm",
}
TABLE_KEYS: tuple[str, ...] = (
    "table_1", "table_2", "table_3", "table_4", "table_5", "table_6", "table_7", "table_8", "fig_11",
)
METRIC_COLUMNS: tuple[str, ...] = (
    "image_auroc", "pixel_auroc", "au_pro", "au_pro_per_image", "f1_max_image", "f1_max_pixel",
)
#: Columns a metrics DataFrame needs for the tables (the full schema has more).
#: How a table cell of an absent metric is shown (an empty cell is an undefined one).
ABSENT_MARK = "—"
REQUIRED_COLUMNS: tuple[str, ...] = (
    "run_id", "dataset", "category", "variant", "score_scales", "narrowed", "finished_at",
    "cfg_backbone", "cfg_ilm", "cfg_ilm_fraction", "cfg_flm", "cfg_flm_ratio",
    "image_auroc", "pixel_auroc", "au_pro", "au_pro_per_image",
)

AU_PRO_NOTE = (
    "AU-PRO, two conventions: `au_pro_per_image` is the research-code convention (per-image "
    "PRO on 200 thresholds, FPR < 0.3 rescaled) that the paper's AU-PRO numbers used, so the "
    "AU-PRO delta compares it with the paper; `au_pro measured` is the official MVTec AD "
    "definition and has no paper counterpart."
)
SUBSET_NOTE = (
    "An average over fewer categories than the paper's is labelled with its count "
    "(n/N categories) and gets no delta: it is not comparable with the paper's average."
)


# ---------------------------------------------------------------------------- units
def measured_percent(values: Any) -> Any:
    """Measured metrics are fractions in [0, 1]; the paper prints percent. The only ×100."""
    return values * 100.0


# ---------------------------------------------------------------------------- helpers
def scales_label(scales: str) -> str:
    """'1,2' → 'SM1&2', the paper's name of a fused score map (Table 7)."""
    return "SM" + "&".join(s.strip() for s in str(scales).split(","))


def alpha_label(alpha: float) -> str:
    """Column label of an ILM fraction α in Table 6 style tables."""
    return f"alpha={alpha:g}"


def lambda_label(lam: float) -> str:
    """Column label of an FLM ratio λ in Fig. 11 style tables."""
    return f"lambda={lam:g}"


def _norm_category(dataset: str, category: Any) -> str:
    """Category names as the paper's rows spell them ('Metal nut' → 'metal_nut', BTAD 1 → '01')."""
    name = str(category).strip().lower().replace(" ", "_").replace("-", "_")
    if dataset == "btad" and name.isdigit():
        name = f"{int(name):02d}"
    return name


def _key(x: float) -> float:
    """Float knobs compared at 6 decimals (0.2 read back from Parquet is 0.2)."""
    return round(float(x), 6)


def as_bool(x: Any) -> bool:
    """A flag read back from Parquet/CSV (bool, numpy bool, 'true', 1); missing counts as False."""
    if isinstance(x, str):
        return x.strip().lower() in ("true", "1", "yes")
    if x is None or pd.isna(x):
        return False
    return bool(x)


def norm_scales(scales: Any) -> str:
    """'2, 1' → '1,2': fused scales named like ``mrkd_core.evaluate.scales_key``."""
    parts = [p.strip() for p in str(scales).split(",") if p.strip()]
    return ",".join(sorted(parts, key=int)) if all(p.isdigit() for p in parts) else ",".join(parts)


def prepare_metrics(metrics_df: pd.DataFrame | None) -> pd.DataFrame:
    """Check the needed columns and add the derived knobs α, λ (and normalised names)."""
    if metrics_df is None or len(metrics_df) == 0:
        return pd.DataFrame(columns=[*REQUIRED_COLUMNS, "_alpha", "_lambda", "_order"])
    missing = [c for c in REQUIRED_COLUMNS if c not in metrics_df.columns]
    if missing:
        raise ValueError(
            f"metrics table lacks column(s) {missing} needed for the paper's tables "
            "(schema: docs/interfaces.md, 'The metrics table')"
        )
    df = metrics_df.copy()
    df["dataset"] = df["dataset"].astype(str).str.strip().str.lower()
    df["category"] = [_norm_category(d, c) for d, c in zip(df["dataset"], df["category"])]
    df["score_scales"] = [norm_scales(v) for v in df["score_scales"]]
    df["variant"] = df["variant"].astype(str).str.strip().str.lower()
    df["narrowed"] = [as_bool(v) for v in df["narrowed"]]
    ilm = [as_bool(v) for v in df["cfg_ilm"]]
    flm = [as_bool(v) for v in df["cfg_flm"]]
    # α = 0 and "ILM off" are the same training (no synthetic image); likewise λ = 0 and "FLM off".
    df["_alpha"] = [_key(a) if on else 0.0 for a, on in zip(df["cfg_ilm_fraction"], ilm)]
    df["_lambda"] = [_key(r) if on else 0.0 for r, on in zip(df["cfg_flm_ratio"], flm)]
    df["finished_at"] = pd.to_datetime(df["finished_at"], utc=True, errors="coerce")
    for m in METRIC_COLUMNS:
        if m in df.columns:
            df[m] = pd.to_numeric(df[m], errors="coerce").astype("float64")
    df["_order"] = np.arange(len(df))
    return df


def _defaults() -> dict[str, Any]:
    cfg = paper_defaults()
    return {
        "alpha": _key(cfg.ilm_fraction if cfg.ilm else 0.0),
        "lambda": _key(cfg.flm_ratio if cfg.flm else 0.0),
        "backbone": cfg.backbone,
        "scales": ",".join(str(s) for s in sorted(cfg.score_scales)),
    }


def _at_defaults(df: pd.DataFrame, free: str | None) -> pd.Series:
    """Rows whose knobs other than ``free`` are the paper's main setting."""
    d = _defaults()
    ok = pd.Series(True, index=df.index)
    if free != "alpha":
        ok &= df["_alpha"] == d["alpha"]
    if free != "lambda":
        ok &= df["_lambda"] == d["lambda"]
    if free != "backbone":
        ok &= df["cfg_backbone"].astype(str) == d["backbone"]
    if free != "scales":
        ok &= df["score_scales"] == d["scales"]
    return ok


def latest(df: pd.DataFrame, key: Sequence[str]) -> tuple[pd.DataFrame, int]:
    """One row per ``key``: the latest ``finished_at`` (NaT counts as oldest; ties → later row).

    Returns the rows and how many cells had more than one candidate.
    """
    if df.empty:
        return df, 0
    ordered = df.sort_values(["finished_at", "_order"], na_position="first", kind="mergesort")
    counts = ordered.groupby(list(key), dropna=False).size()
    kept = ordered.drop_duplicates(list(key), keep="last")
    return kept.sort_values("_order"), int((counts > 1).sum())


# ---------------------------------------------------------------------------- notes
def _fmt_default(v: Any) -> str:
    if isinstance(v, tuple):
        return ",".join(str(x) for x in v)
    return str(v)


def _differs(value: Any, default: Any) -> bool:
    """Does a ``cfg_`` cell differ from the paper's default (tuples arrive as 'a,b' strings)?"""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    try:
        if isinstance(default, bool):
            return as_bool(value) != default
        if isinstance(default, (int, float)):
            return not math.isclose(float(value), float(default), rel_tol=1e-9, abs_tol=1e-12)
        if isinstance(default, tuple):
            parts = value if isinstance(value, (list, tuple, np.ndarray)) else str(value).split(",")
            got = tuple(float(p) for p in parts)
            return len(got) != len(default) or not all(
                math.isclose(a, float(b), rel_tol=1e-9) for a, b in zip(got, default)
            )
    except (TypeError, ValueError):
        return True
    return str(value) != str(default)


def _config_diffs(rows: pd.DataFrame, axis: Iterable[str]) -> list[str]:
    """'epochs=2 (paper: 200)' for every hashed config field whose value is not the paper's."""
    cfg = MRKDConfig()
    skip = set(axis) | set(RUNTIME_FIELDS) | {"teacher_weights", "score_scales"}
    out = []
    for f in fields(MRKDConfig):
        col = f"cfg_{f.name}"
        if f.name in skip or col not in rows.columns:
            continue
        default = getattr(cfg, f.name)
        seen = []
        for v in rows[col].drop_duplicates():
            if _differs(v, default):
                seen.append(str(v))
        if seen:
            out.append(f"{f.name}={'/'.join(sorted(set(seen)))} (paper: {_fmt_default(default)})")
    return out


def _runs_text(rows: pd.DataFrame) -> str:
    parts = []
    for run in sorted(rows["run_id"].astype(str).unique()):
        specs = sorted(
            str(s) for s in rows.loc[rows["run_id"].astype(str) == run, "spec"].dropna().unique()
        ) if "spec" in rows.columns else []
        parts.append(f"{run} (spec {', '.join(specs)})" if specs else run)
    return ", ".join(parts)


def _teacher_none(rows: pd.DataFrame) -> pd.Series:
    flag = pd.Series(False, index=rows.index)
    for col in ("teacher_weights", "cfg_teacher_weights"):
        if col in rows.columns:
            flag |= rows[col].astype(str).str.strip().str.lower() == "none"
    return flag


@dataclass
class Provenance:
    notes: list[str] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    narrowed: bool = False
    not_paper_setting: bool = False


def provenance(rows: pd.DataFrame, n_multi: int, axis: Iterable[str]) -> Provenance:
    """Notes on where the measured numbers come from and how they differ from the paper's setting."""
    p = Provenance()
    if rows.empty:
        p.notes.append("No measured rows for this table: the measured columns are empty.")
        return p
    p.runs = sorted(rows["run_id"].astype(str).unique())
    rule = "; where several runs hold a cell, the latest finished_at is shown"
    p.notes.append(f"Measured: {len(rows)} metrics row(s) from run(s) {_runs_text(rows)}{rule}"
                   + (f" ({n_multi} cell(s) had several)." if n_multi else "."))
    axis = list(axis)
    narrowed = rows[rows["narrowed"]]
    if not narrowed.empty:
        p.narrowed = True
        diffs = _config_diffs(narrowed, axis)
        p.notes.append(
            f"NARROWED run ({_runs_text(narrowed)}): "
            + (", ".join(diffs) if diffs else "fewer categories or settings than the paper")
            + " — not comparable with the paper's numbers."
        )
    full = rows[~rows["narrowed"]]
    diffs = _config_diffs(full, axis) if not full.empty else []
    if diffs:
        p.not_paper_setting = True
        p.notes.append(f"Not the paper's setting ({_runs_text(full)}): {', '.join(diffs)}.")
    none = rows[_teacher_none(rows)]
    if not none.empty:
        p.not_paper_setting = True
        p.notes.append(
            f"teacher_weights=none (randomly initialised teacher) in run(s) {_runs_text(none)}: "
            "not the paper's setting (ImageNet-pretrained teacher)."
        )
    return p


# ---------------------------------------------------------------------------- published
def _published(published_df: pd.DataFrame, table: int) -> pd.DataFrame:
    pub = published_df[published_df["table"].astype(int) == table].copy()
    pub["pct"] = [to_percent(float(v), str(u)) for v, u in zip(pub["value"], pub["unit"])]
    return pub


def _pub_lookup(pub: pd.DataFrame) -> dict[tuple[str, str, str], float]:
    return {(str(r), str(m), str(k)): float(v)
            for r, m, k, v in zip(pub["row"], pub["method"], pub["metric"], pub["pct"])}


def _baseline_methods(pub: pd.DataFrame) -> list[str]:
    """Compared methods in the paper's column order, MRKD excluded.

    The CSV lists each row's cells in column order, but a row skips the methods the paper
    prints '-' for; the fullest row (the average, for Tables 1, 2, 4) gives the order.
    """
    per_row = [list(dict.fromkeys(g["method"])) for _, g in pub.groupby("row", sort=False)]
    order = max(per_row, key=len) if per_row else []
    order += [m for m in dict.fromkeys(pub["method"]) if m not in order]
    return [m for m in order if m != "MRKD"]


# ---------------------------------------------------------------------------- assembly
@dataclass(frozen=True)
class _Pair:
    """A measured metric and the paper's metric it is compared with (None: measured only)."""

    measured: str
    paper: str | None


PAIRS_IMAGE = (_Pair("image_auroc", "image_auroc"),)
PAIRS_PIXEL = (_Pair("pixel_auroc", "pixel_auroc"),)
PAIRS_LOCAL = (_Pair("pixel_auroc", "pixel_auroc"), _Pair("au_pro_per_image", "au_pro"), _Pair("au_pro", None))
PAIRS_ALL = (_Pair("image_auroc", "image_auroc"), *PAIRS_LOCAL)


def _metric_columns(pairs: Sequence[_Pair]) -> list[str]:
    cols = []
    for p in pairs:
        cols.append(f"{p.measured} measured")
        if p.paper is not None:
            cols += [f"{p.paper} paper", f"{p.measured} delta"]
    return cols


def _fill_row(row: dict[str, Any], pairs: Sequence[_Pair], measured: dict[str, float],
              paper: Callable[[str], float], comparable: Callable[[str], bool]) -> None:
    for p in pairs:
        m = measured.get(p.measured, math.nan)
        row[f"{p.measured} measured"] = m
        if p.paper is not None:
            ref = paper(p.paper)
            row[f"{p.paper} paper"] = ref
            row[f"{p.measured} delta"] = m - ref if comparable(p.measured) else math.nan


def _category_table(
    rows: pd.DataFrame, pub: pd.DataFrame, row_name: str, categories: Sequence[str],
    pairs: Sequence[_Pair], with_average: bool,
) -> tuple[pd.DataFrame, list[str]]:
    """Per-category table (Tables 1, 2, 4): paper's rows, then extra measured ones, then average."""
    look = _pub_lookup(pub)
    methods = _baseline_methods(pub)
    paper_metrics = list(dict.fromkeys(p.paper for p in pairs if p.paper))
    notes: list[str] = []
    by_cat: dict[str, dict[str, float]] = {}
    for _, r in rows.iterrows():
        by_cat[r["category"]] = {p.measured: measured_percent(float(r[p.measured])) for p in pairs}
    extra = sorted(set(by_cat) - set(categories))
    if extra:
        notes.append(f"Categories not in the paper, shown but left out of the average: {', '.join(extra)}.")

    out: list[dict[str, Any]] = []
    for cat in [*categories, *extra]:
        row: dict[str, Any] = {row_name: cat}
        _fill_row(row, pairs, by_cat.get(cat, {}),
                  lambda k, c=cat: look.get((c, "MRKD", k), math.nan), lambda _m: True)
        for meth in methods:
            for k in paper_metrics:
                row[f"{meth} {k} (published)"] = look.get((cat, meth, k), math.nan)
        out.append(row)

    if with_average:
        n_total = len(categories)
        values = {p.measured: [by_cat[c][p.measured] for c in categories if c in by_cat
                               and not math.isnan(by_cat[c][p.measured])] for p in pairs}
        n_rows = sum(1 for c in categories if c in by_cat)
        label = "average" if n_rows == n_total else f"average ({n_rows}/{n_total} categories)"
        row = {row_name: label}
        means = {m: (float(np.mean(v)) if v else math.nan) for m, v in values.items()}
        _fill_row(row, pairs, means, lambda k: look.get(("average", "MRKD", k), math.nan),
                  lambda m: len(values[m]) == n_total)
        for meth in methods:
            for k in paper_metrics:
                row[f"{meth} {k} (published)"] = look.get(("average", meth, k), math.nan)
        out.append(row)
        if n_rows < n_total:
            notes.append(f"Measured average over {n_rows}/{n_total} categories. {SUBSET_NOTE}")
        short = [m for m, v in values.items() if n_rows and len(v) < n_rows]
        if short:
            notes.append(f"Undefined (NaN) measured values left out of the average of: {', '.join(short)}.")
    columns = [row_name, *_metric_columns(pairs),
               *[f"{m} {k} (published)" for m in methods for k in paper_metrics]]
    return pd.DataFrame(out, columns=columns), notes


def _ablation_table(
    rows: pd.DataFrame, look: dict[tuple[str, str, str], float], row_name: str, labels: Sequence[str],
    label_of: Callable[[pd.Series], str], extra_cols: Callable[[str], dict[str, Any]],
    pairs: Sequence[_Pair],
) -> tuple[pd.DataFrame, list[str]]:
    """One row per setting: the mean over the MVTec categories measured for it (Tables 5-8, Fig. 11).

    ``look`` maps (row, method, metric) to the paper's value in percent.
    """
    n_total = len(MVTEC_CATEGORIES)
    notes: list[str] = []
    in_paper = rows[rows["category"].isin(MVTEC_CATEGORIES)]
    left_out = sorted(set(rows["category"]) - set(MVTEC_CATEGORIES))
    if left_out:
        notes.append(f"Categories not in MVTec AD left out of the averages: {', '.join(left_out)}.")
    measured_labels = [label_of(r) for _, r in in_paper.iterrows()]
    grouped = in_paper.assign(_label=measured_labels)
    extra = sorted(set(measured_labels) - set(labels))
    out = []
    partial = []
    for label in [*labels, *extra]:
        sub = grouped[grouped["_label"] == label]
        n = int(sub["category"].nunique())
        means = {p.measured: (float(measured_percent(sub[p.measured].dropna()).mean())
                              if sub[p.measured].notna().any() else math.nan) for p in pairs}
        counts = {p.measured: int(sub[p.measured].notna().sum()) for p in pairs}
        row: dict[str, Any] = {row_name: label, **extra_cols(label), "n_categories": n}
        _fill_row(row, pairs, means, lambda k, lb=label: look.get((lb, "MRKD", k), math.nan),
                  lambda m: counts[m] == n_total)
        out.append(row)
        if 0 < n < n_total:
            partial.append(f"{label} ({n}/{n_total})")
    if partial:
        notes.append(f"Averages over a subset of the 15 categories: {', '.join(partial)}. {SUBSET_NOTE}")
    df = pd.DataFrame(out)
    df["n_categories"] = df["n_categories"].astype("int64")
    return df, notes


def main_setting_rows(metrics_df: pd.DataFrame | None) -> pd.DataFrame:
    """The rows Tables 1-4 report: paper-default knobs, latest per (dataset, category).

    Category names are normalised as in the tables; used by the report to pick the
    model whose scores and maps illustrate each category.
    """
    df = prepare_metrics(metrics_df)
    rows, _ = latest(df[_at_defaults(df, None)], ["dataset", "category"])
    # A category with no paper-default model (a compact demo or custom-data run, e.g.
    # ResNet18) is illustrated by its full-MRKD variant with the main fusion, so the
    # report's figures always show the run's own maps; the tables are unaffected.
    have = set(zip(rows["dataset"], rows["category"]))
    main_scales = ",".join(str(s) for s in sorted(paper_defaults().score_scales))
    fallback = df[(df["variant"] == "mrkd") & (df["score_scales"] == main_scales)]
    fallback = fallback[[(d, c) not in have for d, c in zip(fallback["dataset"], fallback["category"])]]
    if not fallback.empty:
        extra, _ = latest(fallback, ["dataset", "category"])
        rows = pd.concat([rows, extra])
    return rows.drop(columns=["_alpha", "_lambda", "_order"]).reset_index(drop=True)


# ---------------------------------------------------------------------------- the tables
@dataclass(frozen=True)
class _Built:
    df: pd.DataFrame
    title: str
    notes: list[str]
    rows: pd.DataFrame
    n_multi: int
    axis: tuple[str, ...]
    absent_cells: tuple[tuple[int, str], ...] = ()  # (row position, column): shown as ABSENT_MARK


def _mvtec(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["dataset"] == "mvtec"]


def _table_1(df: pd.DataFrame, published: pd.DataFrame) -> _Built:
    rows, n_multi = latest(_mvtec(df)[_at_defaults(_mvtec(df), None)], ["category"])
    t, notes = _category_table(rows, _published(published, 1), "category", MVTEC_CATEGORIES,
                               PAIRS_IMAGE, with_average=True)
    return _Built(t, "Table 1. Anomaly detection: image-level AU-ROC (%) on MVTec AD", notes, rows, n_multi, ())


def _table_2(df: pd.DataFrame, published: pd.DataFrame) -> _Built:
    rows, n_multi = latest(_mvtec(df)[_at_defaults(_mvtec(df), None)], ["category"])
    t, notes = _category_table(rows, _published(published, 2), "category", MVTEC_CATEGORIES,
                               PAIRS_LOCAL, with_average=True)
    return _Built(t, "Table 2. Anomaly localization: pixel-level AU-ROC / AU-PRO (%) on MVTec AD",
                  [*notes, AU_PRO_NOTE], rows, n_multi, ())


def _table_3(df: pd.DataFrame, published: pd.DataFrame) -> _Built:
    mtd = df[df["dataset"] == "mtd"]
    rows, n_multi = latest(mtd[_at_defaults(mtd, None)], ["category"])
    pub = _published(published, 3)
    look = _pub_lookup(pub)
    vals = measured_percent(rows["image_auroc"].dropna())
    row: dict[str, Any] = {"dataset": "mtd"}
    _fill_row(row, PAIRS_IMAGE, {"image_auroc": float(vals.mean()) if len(vals) else math.nan},
              lambda k: look.get(("mtd", "MRKD", k), math.nan), lambda _m: True)
    for meth in _baseline_methods(pub):
        row[f"{meth} image_auroc (published)"] = look.get(("mtd", meth, "image_auroc"), math.nan)
    notes = []
    if len(rows) > 1:
        notes.append(f"MTD measured as the mean over its categories: {', '.join(sorted(rows['category']))}.")
    return _Built(pd.DataFrame([row]), "Table 3. Anomaly detection: image-level AU-ROC (%) on MTD",
                  notes, rows, n_multi, ())


def _table_4(df: pd.DataFrame, published: pd.DataFrame) -> _Built:
    btad = df[df["dataset"] == "btad"]
    rows, n_multi = latest(btad[_at_defaults(btad, None)], ["category"])
    t, notes = _category_table(rows, _published(published, 4), "category", BTAD_CATEGORIES,
                               PAIRS_PIXEL, with_average=True)
    notes.append(
        "The paper prints Table 4 as fractions with two decimals (0.97); shown here ×100 (97.0), "
        "so the paper's values carry ±0.5 points of rounding. Products 01/02/03 are the paper's 0/1/2."
    )
    return _Built(t, "Table 4. Anomaly localization: pixel-level AU-ROC (%) on BTAD", notes, rows, n_multi, ())


def _table_5(df: pd.DataFrame, published: pd.DataFrame) -> _Built:
    mv = _mvtec(df)
    d = _defaults()
    cand = mv[mv["variant"].astype(str).isin(list(TABLE5_VARIANTS)) & (mv["score_scales"] == d["scales"])]
    cand = cand.assign(_setting=[TABLE5_VARIANTS[str(v)] for v in cand["variant"]])
    rows, n_multi = latest(cand, ["_setting", "category"])
    notes = []
    want = {"baseline": (False, False), "baseline+ilm": (True, False),
            "baseline+flm": (False, True), "baseline+ilm+flm": (True, True)}
    bad = sorted({s for s, i, f in zip(rows["_setting"], rows["cfg_ilm"], rows["cfg_flm"])
                  if (as_bool(i), as_bool(f)) != want[s]})
    if bad:
        notes.append(f"Variant label disagrees with cfg_ilm/cfg_flm for: {', '.join(bad)}.")
    t, more = _ablation_table(
        rows, _pub_lookup(_published(published, 5)), "setting", list(want), lambda r: r["_setting"],
        lambda lb: {"ilm": want[lb][0], "flm": want[lb][1]}, PAIRS_ALL,
    )
    return _Built(t, "Table 5. Ablation of ILM and FLM (MVTec AD average, %)",
                  [*more, *notes, "Rows come from the metrics `variant`: baseline (RD4AD), ilm, flm, mrkd.",
                   AU_PRO_NOTE], rows, n_multi, ("ilm", "flm"))


def _table_6(df: pd.DataFrame, published: pd.DataFrame) -> _Built:
    mv = _mvtec(df)
    rows, n_multi = latest(mv[_at_defaults(mv, "alpha")], ["_alpha", "category"])
    t, notes = _ablation_table(
        rows, _pub_lookup(_published(published, 6)), "setting", [alpha_label(a) for a in PAPER_ALPHAS],
        lambda r: alpha_label(r["_alpha"]), lambda lb: {"alpha": float(lb.split("=", 1)[1])}, PAIRS_ALL,
    )
    return _Built(t, "Table 6. ILM masking ratio α (MVTec AD average, %)",
                  [*notes, "α from cfg_ilm_fraction; a run with cfg_ilm=false counts as α = 0.", AU_PRO_NOTE],
                  rows, n_multi, ("ilm", "ilm_fraction"))


def _fig_11(df: pd.DataFrame, published: pd.DataFrame) -> _Built:
    mv = _mvtec(df)
    rows, n_multi = latest(mv[_at_defaults(mv, "lambda")], ["_lambda", "category"])
    pairs = tuple(_Pair(m, None) for m in ("image_auroc", "pixel_auroc", "au_pro_per_image", "au_pro"))
    t, notes = _ablation_table(
        rows, {}, "setting", [lambda_label(x) for x in PAPER_LAMBDAS],
        lambda r: lambda_label(r["_lambda"]), lambda lb: {"lambda": float(lb.split("=", 1)[1])}, pairs,
    )
    return _Built(t, "Fig. 11. FLM masking ratio λ (MVTec AD average, %)",
                  [*notes, "The paper gives λ only as a plot (Fig. 11), without numbers: no paper column.",
                   "λ from cfg_flm_ratio; a run with cfg_flm=false counts as λ = 0.", AU_PRO_NOTE],
                  rows, n_multi, ("flm", "flm_ratio"))


def _table_7(df: pd.DataFrame, published: pd.DataFrame) -> _Built:
    mv = _mvtec(df)
    rows, n_multi = latest(mv[_at_defaults(mv, "scales")], ["score_scales", "category"])
    labels = [scales_label(s) for s in TABLE7_SCALES]
    t, notes = _ablation_table(
        rows, _pub_lookup(_published(published, 7)), "score_map", labels, lambda r: scales_label(r["score_scales"]),
        lambda lb: {"score_scales": lb[2:].replace("&", ",")}, PAIRS_ALL,
    )
    return _Built(t, "Table 7. Multi-scale score-map fusion (MVTec AD average, %)",
                  [*notes, "SM1&3 is not in the paper: measured only.", AU_PRO_NOTE],
                  rows, n_multi, ())


def _table_8(df: pd.DataFrame, published: pd.DataFrame) -> _Built:
    mv = _mvtec(df)
    rows, n_multi = latest(mv[_at_defaults(mv, "backbone")], ["cfg_backbone", "category"])
    # The paper's three backbones always; another catalogued one (beyond the paper) only where measured.
    measured = set(rows["cfg_backbone"].astype(str)) if len(rows) else set()
    order = [b for b in BACKBONES if CATALOG[b].in_paper or b in measured]
    t, notes = _ablation_table(
        rows, _pub_lookup(_published(published, 8)), "backbone", order, lambda r: str(r["cfg_backbone"]),
        lambda _lb: {}, PAIRS_ALL,
    )
    return _Built(t, "Table 8. Teacher backbone (MVTec AD average, %)", [*notes, AU_PRO_NOTE],
                  rows, n_multi, ("backbone",))


def _measured(df: pd.DataFrame, published: pd.DataFrame) -> _Built:
    """Every measured cell of the run(s), whatever the dataset: the demo's and custom data's table."""
    rows, n_multi = latest(df, ["dataset", "category", "variant", "score_scales"])
    cols = {
        "dataset": rows["dataset"], "category": rows["category"], "variant": rows["variant"],
        "scales": rows["score_scales"],
        "backbone": rows["cfg_backbone"].astype(str),
    }
    for extra in ("cfg_image_size", "cfg_epochs", "teacher_weights"):
        if extra in rows.columns:
            cols[extra.removeprefix("cfg_")] = rows[extra]
    t = pd.DataFrame(cols)
    for m in METRIC_COLUMNS:
        if m in rows.columns:
            t[f"{m} measured"] = measured_percent(rows[m].astype(float))
    t = t.sort_values(["dataset", "category", "variant", "scales"], kind="mergesort")
    cells, absent_notes = _absent_cells(rows.loc[t.index], t)
    return _Built(t, "Measured results: every dataset, category and variant of the run (%)",
                  ["No published numbers here: the paper's comparisons are Tables 1-8.", *absent_notes,
                   *_subsample_notes(rows)],
                  rows, n_multi, _variant_fields(rows), cells)


def _variant_fields(rows: pd.DataFrame) -> tuple[str, ...]:
    """The config fields that tell a run's variants of one category apart (e.g. the demo's
    ``baseline``, ILM and FLM off): the measured table's axis, since each row names its variant,
    as Table 5's ILM/FLM columns are; never a departure from the paper's setting in its notes.
    A field every variant shares (a single variant's ``ilm=False`` too) is still named there."""
    keys = [c for c in ("run_id", "dataset", "category") if c in rows.columns]
    if rows.empty or not keys:
        return ()
    return tuple(f.name for f in fields(MRKDConfig)
                 if f"cfg_{f.name}" in rows.columns
                 and (rows.groupby(keys)[f"cfg_{f.name}"].nunique(dropna=False) > 1).any())


def _subsample_notes(rows: pd.DataFrame) -> list[str]:
    """One note naming every subsampled dataset/category with the images it used (docs/datasets.md)."""
    parts = []
    cols = ("cfg_train_subsample", "cfg_test_subsample", "n_train", "n_test")
    if not all(c in rows.columns for c in cols):
        return []
    for (dataset, category), g in rows.groupby(["dataset", "category"], sort=True):
        seen = set()
        for tr, te, n_tr, n_te in g[list(cols)].itertuples(index=False):
            tr, te = (int(v) if v == v and v is not None else 0 for v in (tr, te))
            if not (tr or te) or (tr, te, n_tr, n_te) in seen:
                continue
            seen.add((tr, te, n_tr, n_te))
            what = [f"{_count(n_tr)} training images (train_subsample={tr})" if tr else "every training image",
                    f"{_count(n_te)} test images (test_subsample={te})" if te else "every test image"]
            parts.append(f"{dataset}/{category}: {', '.join(what)}")
    if not parts:
        return []
    return ["Subsampled (a seeded subset, docs/datasets.md 'Subsampling'; not comparable with whole-data "
            f"results): {'; '.join(parts)}."]


def _count(value: Any) -> str:
    return "?" if value is None or value != value else str(int(value))


def _absent_cells(rows: pd.DataFrame, table: pd.DataFrame) -> tuple[tuple[tuple[int, str], ...], list[str]]:
    """Cells of metrics that were not computed (no pixel ground truth), and one footnote per reason.

    ``rows`` are the metrics rows in the table's row order. An empty cell stays what it
    was: an undefined value (NaN); an absent one is shown as ABSENT_MARK with the reason.
    """
    if ABSENT_COLUMN not in rows.columns:
        return (), []
    cells: list[tuple[int, str]] = []
    where: dict[str, list[str]] = {}
    for pos, (reason, dataset, category) in enumerate(zip(rows[ABSENT_COLUMN], rows["dataset"], rows["category"])):
        if reason is None or (isinstance(reason, float) and math.isnan(reason)) or not str(reason):
            continue
        cells += [(pos, f"{m} measured") for m in PIXEL_METRICS if f"{m} measured" in table.columns]
        names = where.setdefault(str(reason), [])
        if f"{dataset}/{category}" not in names:
            names.append(f"{dataset}/{category}")
    notes = [f"{ABSENT_MARK} = not computed, {reason} ({', '.join(names)})." for reason, names in where.items()]
    return tuple(cells), notes


_BUILDERS: dict[str, Callable[[pd.DataFrame, pd.DataFrame], _Built]] = {
    "measured": _measured,
    "table_1": _table_1, "table_2": _table_2, "table_3": _table_3, "table_4": _table_4,
    "table_5": _table_5, "table_6": _table_6, "table_7": _table_7, "table_8": _table_8,
    "fig_11": _fig_11,
}


def table_key(n: int | str) -> str:
    """1 → 'table_1'; 'fig11', 'fig_11', 11 → 'fig_11' (the λ data of Fig. 11)."""
    s = str(n).strip().lower().replace(" ", "_")
    if s in ("11", "fig11", "fig_11", "lambda"):
        return "fig_11"
    if s == "measured":
        return s
    if s.startswith("table_"):
        s = s[len("table_"):]
    key = f"table_{s}"
    if key not in _BUILDERS:
        raise ValueError(f"unknown table {n!r}: use 1..8 or 'fig11'")
    return key


def build_table(
    n: int | str, metrics_df: pd.DataFrame | None, published_df: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Table ``n`` (1..8, or 'fig11') in the paper's shape, all values in percent.

    ``metrics_df`` may hold rows of several runs and of other tables; each table picks
    its own rows (see the module docstring). The result's ``attrs`` carry ``title`` and
    ``notes``, which a report must show next to the numbers.
    """
    key = table_key(n)
    published = load_published() if published_df is None else published_df
    df = prepare_metrics(metrics_df)
    built = _BUILDERS[key](df, published)
    prov = provenance(built.rows, built.n_multi, built.axis)
    notes = [*prov.notes, *built.notes]
    if key not in ("fig_11", "measured"):
        notes.append(
            "`paper` and `(published)` columns are the paper's printed numbers "
            f"(mrkd_core/resources/published.csv, version {PUBLISHED_VERSION}); empty where the paper prints '-'."
        )
    t = built.df.reset_index(drop=True)
    t.attrs = {
        "key": key,
        "title": built.title,
        "notes": notes,
        "unit": "percent",
        "runs": prov.runs,
        "narrowed": prov.narrowed,
        "not_paper_setting": prov.not_paper_setting,
        "n_measured_rows": int(len(built.rows)),
        "absent_cells": [[row, col] for row, col in built.absent_cells],
    }
    log.debug("built %s: %d rows, %d measured metrics rows", key, len(t), len(built.rows))
    return t


def build_all(metrics_df: pd.DataFrame | None, published_df: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """Every table, keyed 'table_1' … 'table_8' and 'fig_11', in the paper's order."""
    published = load_published() if published_df is None else published_df
    return {key: build_table(key, metrics_df, published) for key in TABLE_KEYS}
