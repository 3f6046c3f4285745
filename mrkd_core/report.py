"""A run's report: the paper's tables as Parquet + Markdown, figures as PNG, one HTML page.

Everything lands in ``reports/<run_id>/`` of an :class:`~mrkd_core.storage.ArtifactStore`::

    table_1.parquet table_1.md ... table_8.*  fig_11.parquet fig_11.md
    figures/score_distributions_<dataset>.png   Fig. 6 style, from the scores table
    figures/heatmaps_<dataset>_<category>.png    Fig. 7 style, from the run's own maps
    figures/fig11_lambda.png                     when λ rows were measured
    report.html                                  self-contained: tables + figures inlined

The HTML has no external asset (figures are ``data:image/png;base64`` URIs, CSS is
inline), so it can be mailed, attached to a Prefect artifact or opened from S3.
Figures are rendered by :mod:`mrkd_core.figures` (explicit ``Figure`` objects, never
pyplot's global state: reports are drawn inside Ray/Prefect workers). Markdown is written by a small formatter here, so that the
numbers look the same in Markdown and HTML and no table-rendering dependency is needed.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mrkd_core.benchmark_tables import build_benchmark_tables
from mrkd_core.figures import png, slug
from mrkd_core.history_report import HISTORY_KEY, history_section
from mrkd_core.paper_tables import ABSENT_MARK, MVTEC_CATEGORIES, build_all, build_table, main_setting_rows
from mrkd_core.results import IMAGE_LABELLED_ORDER
from mrkd_core.storage import ArtifactStore

log = logging.getLogger(__name__)

#: (image uint8 H×W×3, ground-truth mask H×W or None without pixel ground truth,
#: anomaly map H×W float) of one test image.
MapTriple = tuple[np.ndarray, np.ndarray | None, np.ndarray]
MapsProvider = Callable[[str, str], Sequence[MapTriple]]  # (dataset, category) → triples

NORMAL_COLOUR = "tab:blue"  # Fig. 6: blue = normal, red = abnormal
ANOMALOUS_COLOUR = "tab:red"


# ---------------------------------------------------------------------------- formatting
def format_cell(value: Any, column: str) -> str:
    """One table cell as text: percent with one decimal like the paper, signed deltas, '' for NaN."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return ""
        if column in ("alpha", "lambda"):
            return f"{v:g}"
        if column.endswith(" delta"):
            return f"{v:+.1f}"
        return f"{v:.1f}"
    return str(value)


def _absent_cells(df: pd.DataFrame) -> set[tuple[int, str]]:
    """(row position, column) of metrics that were not computed (``attrs['absent_cells']``)."""
    return {(int(r), str(c)) for r, c in df.attrs.get("absent_cells") or []}


def _cell(value: Any, column: str, row: int, absent: set[tuple[int, str]]) -> str:
    """A cell's text: the dash of an absent metric (its reason is in the notes), else the value."""
    return ABSENT_MARK if (row, column) in absent else format_cell(value, column)


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def table_to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown document: title, table, notes."""

    def esc(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    title = df.attrs.get("title", "")
    lines = [f"## {title}", ""] if title else []
    cols = list(df.columns)
    absent = _absent_cells(df)
    lines.append("| " + " | ".join(esc(str(c)) for c in cols) + " |")
    lines.append("|" + "|".join("---:" if _is_numeric(df[c]) else ":---" for c in cols) + "|")
    for i, row in enumerate(df.itertuples(index=False)):
        lines.append("| " + " | ".join(esc(_cell(v, c, i, absent)) for v, c in zip(row, cols)) + " |")
    notes = df.attrs.get("notes") or []
    if notes:
        lines += ["", *[f"- {esc(n)}" for n in notes]]
    return "\n".join(lines) + "\n"


def table_to_html(df: pd.DataFrame) -> str:
    """An HTML <section> with the title, the table and its notes (every string escaped)."""
    key = html.escape(str(df.attrs.get("key", "")))
    out = [f'<section id="{key}">', f"<h2>{html.escape(df.attrs.get('title', key))}</h2>",
           '<div class="scroll"><table>', "<thead><tr>"]
    for c in df.columns:
        kind = _column_kind(str(c))
        out.append(f'<th class="{kind}">{html.escape(str(c))}</th>')
    out.append("</tr></thead><tbody>")
    absent = _absent_cells(df)
    for i, row in enumerate(df.itertuples(index=False)):
        out.append("<tr>")
        for v, c in zip(row, df.columns):
            cls = _column_kind(str(c))
            num = " num" if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) else ""
            out.append(f'<td class="{cls}{num}">{html.escape(_cell(v, str(c), i, absent))}</td>')
        out.append("</tr>")
    out.append("</tbody></table></div>")
    notes = df.attrs.get("notes") or []
    if notes:
        out.append('<ul class="notes">' + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    out.append("</section>")
    return "\n".join(out)


def _column_kind(column: str) -> str:
    """CSS class that keeps measured, paper and published columns visually apart."""
    for suffix, kind in ((" measured", "measured"), (" paper", "paper"), (" delta", "delta"),
                         (" (published)", "published")):
        if column.endswith(suffix):
            return kind
    return "label"


# ---------------------------------------------------------------------------- figures
def _kde(values: np.ndarray, grid: np.ndarray) -> np.ndarray | None:
    """Gaussian kernel density of ``values`` on ``grid`` (Scott's bandwidth, as Fig. 6 uses a KDE).

    Written out in numpy because importing scipy.stats costs a second per report.
    None when the sample is too small or constant (no density to estimate).
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) < 2 or np.ptp(v) == 0:
        return None
    h = float(np.std(v, ddof=1)) * len(v) ** (-1.0 / 5.0)
    z = (grid[:, None] - v[None, :]) / h
    return np.exp(-0.5 * z * z).sum(axis=1) / (len(v) * h * math.sqrt(2.0 * math.pi))


def select_scores(scores_df: pd.DataFrame | None, metrics_df: pd.DataFrame | None) -> pd.DataFrame:
    """Per-image scores of the paper's main setting, one model per (dataset, category).

    The scores of the model that Tables 1-4 report are used (matched on run_id, dataset,
    category and config_hash). A category with no such model but exactly one scored model
    in ``scores_df`` uses that one, so a report of an ablation-only run still shows Fig. 6.
    """
    if scores_df is None or scores_df.empty:
        return pd.DataFrame(columns=["dataset", "category", "label", "score"])
    scores = scores_df.copy()
    scores["dataset"] = scores["dataset"].astype(str).str.lower()
    main = main_setting_rows(metrics_df)
    keys = ["run_id", "dataset", "category", "config_hash"]
    chosen = []
    if not main.empty and all(k in scores.columns and k in main.columns for k in keys):
        wanted = main[keys].astype(str).drop_duplicates()
        chosen.append(scores.astype({k: str for k in keys}).merge(wanted, on=keys, how="inner"))
    done = set()
    if chosen and not chosen[0].empty:
        done = set(zip(chosen[0]["dataset"], chosen[0]["category"]))
    group_cols = [c for c in ("run_id", "config_hash", "variant") if c in scores.columns]
    for (ds, cat), sub in scores.groupby(["dataset", "category"], sort=False):
        if (ds, cat) in done:
            continue
        models = sub.groupby(group_cols).ngroups if group_cols else 1
        if models == 1:
            chosen.append(sub)
        else:
            log.warning("Fig. 6: %s/%s has %d scored models and none in the main setting; skipped",
                        ds, cat, models)
    if not chosen:
        return pd.DataFrame(columns=["dataset", "category", "label", "score"])
    return pd.concat(chosen, ignore_index=True)


def thresholds_on_test_split(scores_df: pd.DataFrame | None) -> list[str]:
    """``dataset/category (variants)`` whose verdicts come from thresholds chosen on their test split.

    Read from the scores table's ``on_evaluation_images`` (the calibration's own record,
    ``mrkd_core.inference.calibration``): the flows calibrate on the test split when no
    train/good images were held out. Rows without the column or with null there (no
    calibration, or stored before it existed) name nothing.
    """
    if scores_df is None or scores_df.empty or "on_evaluation_images" not in scores_df.columns:
        return []
    flagged = scores_df[[v is True or v is np.True_ for v in scores_df["on_evaluation_images"]]]
    if flagged.empty:
        return []
    variants: dict[str, set[str]] = {}
    for ds, cat, var in zip(flagged["dataset"].astype(str), flagged["category"].astype(str),
                            flagged["variant"].astype(str) if "variant" in flagged else [""] * len(flagged)):
        variants.setdefault(f"{ds}/{cat}", set()).add(var)
    return [f"{key} ({', '.join(sorted(v for v in vs if v))})" if any(vs) else key
            for key, vs in sorted(variants.items())]


def threshold_note(scores_df: pd.DataFrame | None) -> str | None:
    """The report's line when a threshold was chosen on the images it is then evaluated on; else None."""
    where = thresholds_on_test_split(scores_df)
    if not where:
        return None
    return (f"Verdicts of {', '.join(where)} (scores table: verdict, normalized_score, threshold): the image "
            "threshold was chosen on the test split these metrics are measured on (calibration "
            "on_evaluation_images), so the verdicts are no unbiased test of it. Hold out defect-free training "
            "images (validation_fraction) to choose thresholds elsewhere.")


def _category_order(dataset: str, categories: Sequence[str]) -> list[str]:
    cats = list(dict.fromkeys(categories))
    if dataset == "mvtec":
        return [c for c in MVTEC_CATEGORIES if c in cats] + sorted(c for c in cats if c not in MVTEC_CATEGORIES)
    return sorted(cats)


def score_distribution_figure(scores: pd.DataFrame, dataset: str, aurocs: dict[str, float] | None = None) -> bytes:
    """Fig. 6: per category, density histograms + KDE of normal (blue) vs anomalous (red) scores.

    Scores are min-max scaled to [0, 1] per category, as in the paper's figure: raw
    anomaly scores have no common scale across categories.
    """
    cats = _category_order(dataset, scores["category"].astype(str).unique())
    ncols = min(5, max(1, len(cats)))
    nrows = math.ceil(len(cats) / ncols)
    fig = Figure(figsize=(3.0 * ncols, 2.4 * nrows), layout="constrained")
    grid = np.linspace(0.0, 1.0, 200)
    bins = np.linspace(0.0, 1.0, 21)
    for i, cat in enumerate(cats):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        sub = scores[scores["category"].astype(str) == cat]
        s = sub["score"].to_numpy(dtype=float)
        lo, hi = float(np.nanmin(s)), float(np.nanmax(s))
        scaled = (s - lo) / (hi - lo) if hi > lo else np.zeros_like(s)
        labels = sub["label"].to_numpy().astype(int)
        for lab, colour, name in ((0, NORMAL_COLOUR, "normal"), (1, ANOMALOUS_COLOUR, "anomalous")):
            v = scaled[labels == lab]
            if len(v) == 0:
                continue
            ax.hist(v, bins=bins, density=True, histtype="stepfilled", alpha=0.35, color=colour, label=name)
            dens = _kde(v, grid)
            if dens is not None:
                ax.plot(grid, dens, color=colour, linewidth=1.5)
        title = cat
        if aurocs and not math.isnan(aurocs.get(cat, math.nan)):
            title += f" (image AU-ROC {aurocs[cat]:.1f})"
        ax.set_title(title, fontsize=9)
        ax.set_xlim(0.0, 1.0)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=7)
    fig.suptitle(f"Anomaly-score distributions, {dataset} (scores scaled to [0, 1] per category)", fontsize=11)
    return png(fig)


def _rgb(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if img.shape[-1] == 4:
        img = img[..., :3]
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    return img


def heatmap_figure(category: str, triples: Sequence[MapTriple]) -> bytes:
    """Fig. 7: rows of input / ground truth (red overlay) / anomaly heatmap over the input.

    The maps of one figure share one colour scale (min-max over all of them), so a
    brighter image really scored higher; per-image scaling would make every image glow.
    """
    n = len(triples)
    maps = [np.asarray(t[2], dtype=np.float64) for t in triples]
    lo = min(float(np.nanmin(m)) for m in maps)
    hi = max(float(np.nanmax(m)) for m in maps)
    fig = Figure(figsize=(7.5, 2.5 * n), layout="constrained")
    for i, (image, mask, _amap) in enumerate(triples):
        img = _rgb(image)
        h, w = img.shape[:2]
        extent = (0, w, h, 0)
        m = None if mask is None else np.asarray(mask).astype(bool)
        amap = (maps[i] - lo) / (hi - lo) if hi > lo else np.zeros_like(maps[i])
        panels = [("Input", None), ("GT mask", m), ("MRKD heatmap", amap)]
        for j, (name, overlay) in enumerate(panels):
            ax = fig.add_subplot(n, 3, i * 3 + j + 1)
            ax.imshow(img, extent=extent)
            if name == "GT mask" and overlay is None:
                # an image-labelled dataset: say so rather than draw an empty mask
                ax.text(0.5, 0.5, "no pixel mask\n(image labels only)", transform=ax.transAxes, ha="center",
                        va="center", fontsize=8, color="white", bbox={"facecolor": "black", "alpha": 0.6})
            elif name == "GT mask":
                red = np.zeros((*overlay.shape, 4))
                red[..., 0] = 1.0
                red[..., 3] = overlay * 0.5
                ax.imshow(red, extent=extent)
            elif overlay is not None:
                ax.imshow(overlay, cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0, extent=extent)
            ax.set_axis_off()
            if i == 0:
                ax.set_title(name, fontsize=9)
    fig.suptitle(f"{category}: anomaly localization", fontsize=11)
    return png(fig)


def lambda_figure(fig11: pd.DataFrame) -> bytes | None:
    """Fig. 11: measured metrics (%) against the FLM ratio λ; None when fewer than two λ were measured."""
    curves = [("image_auroc measured", "image AU-ROC"), ("pixel_auroc measured", "pixel AU-ROC"),
              ("au_pro_per_image measured", "AU-PRO (per-image)"), ("au_pro measured", "AU-PRO (official)")]
    cols = [c for c, _ in curves if c in fig11.columns]
    measured = fig11[cols].notna().any(axis=1)
    if fig11.loc[measured, "lambda"].nunique() < 2:  # one point (the default λ) is no curve
        return None
    fig = Figure(figsize=(5.5, 3.8), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    for col, name in curves:
        if col not in fig11.columns:
            continue
        sub = fig11[["lambda", col]].dropna()
        if not sub.empty:
            ax.plot(sub["lambda"], sub[col], marker="o", label=name)
    ax.set_xlabel("λ (FLM masking ratio)")
    ax.set_ylabel("%")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Fig. 11: influence of λ (measured, MVTec AD average)", fontsize=10)
    return png(fig)


# ---------------------------------------------------------------------------- HTML page
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem;color:#222;max-width:1400px}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem}
.banner{padding:.6rem 1rem;margin:.5rem 0;border-radius:4px;background:#fff3cd;border:1px solid #e0b000}
.banner.regressed{background:#f8d7da;border-color:#c0392b}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:.8rem}
th,td{border:1px solid #ccc;padding:.2rem .4rem;white-space:nowrap}td.num{text-align:right}
th.measured,td.measured{background:#e8f4ea}th.paper,td.paper{background:#eef0fb}
th.delta,td.delta{background:#fdf6e3}th.published,td.published{background:#f4f4f4;color:#555}
ul.notes{font-size:.8rem;color:#444}figure{margin:1rem 0}img{max-width:100%}
figcaption{font-size:.85rem;color:#444}
"""


def _html_page(run_id: str, tables: dict[str, pd.DataFrame], figures: list[tuple[str, str, bytes]],
               generated: str, threshold_line: str | None = None, regressions: Sequence[str] = ()) -> str:
    narrowed = sorted({r for t in tables.values() if t.attrs.get("narrowed") for r in t.attrs.get("runs", [])})
    off = sorted({r for t in tables.values() if t.attrs.get("not_paper_setting") for r in t.attrs.get("runs", [])})
    runs = sorted({r for t in tables.values() for r in t.attrs.get("runs", [])})
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>MRKD report {html.escape(run_id)}</title><style>{_CSS}</style></head><body>",
        f"<h1>MRKD report — run {html.escape(run_id)}</h1>",
        f"<p>Generated {html.escape(generated)}. Measured rows from run(s): "
        f"{html.escape(', '.join(runs) or 'none')}. All values in percent. Green columns are "
        "measured here, blue columns are the paper's MRKD, grey columns are published numbers "
        "(Tables 1-8: as printed in the MRKD paper; the benchmark tables name their sources).</p>",
    ]
    if regressions:
        parts.append('<div class="banner regressed"><strong>Regressed</strong> (worse than the model in use beyond '
                     'the tolerance; the champion stays): <ul>' + "".join(f"<li>{html.escape(r)}</li>"
                                                                         for r in regressions)
                     + '</ul> See <a href="#history">the history</a>.</div>')
    if narrowed:
        parts.append(f'<div class="banner"><strong>Narrowed run</strong> ({html.escape(", ".join(narrowed))}): '
                     "fewer categories, epochs or a smaller image size than the paper — the measured "
                     "numbers are not comparable with the paper's. See each table's notes.</div>")
    if off:
        parts.append(f'<div class="banner"><strong>Not the paper\'s setting</strong> ({html.escape(", ".join(off))}): '
                     "each table's notes say what differs.</div>")
    if threshold_line:
        parts.append(f'<div class="banner"><strong>Thresholds chosen on the test split.</strong> '
                     f"{html.escape(threshold_line)}</div>")
    parts.append("<nav><ul>" + "".join(
        f'<li><a href="#{html.escape(k)}">{html.escape(t.attrs.get("title", k))}</a></li>' for k, t in tables.items()
    ) + ('<li><a href="#figures">Figures</a></li>' if figures else "") + "</ul></nav>")
    for t in tables.values():
        parts.append(table_to_html(t))
    if figures:
        parts.append('<section id="figures"><h2>Figures</h2>')
        for name, caption, image in figures:
            data = base64.b64encode(image).decode("ascii")
            parts.append(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


# ---------------------------------------------------------------------------- entry point
def teacher_text(rows: pd.DataFrame) -> str:
    """Which teacher made a figure, from its metrics rows: e.g. ``Teacher: efficientnet_lite0, ImageNet
    weights.`` or ``Teacher: resnet18, random (teacher_weights=none, not the paper's setting).``"""
    if rows.empty or "cfg_backbone" not in rows.columns:
        return ""
    row = rows.iloc[0]
    weights = str(row.get("cfg_teacher_weights", row.get("teacher_weights", "")))
    kind = {"imagenet": "ImageNet weights", "none": "random (teacher_weights=none, not the paper's setting)"}
    return f"Teacher: {row['cfg_backbone']}, {kind.get(weights, f'weights {weights}')}."


def write_report(
    store: ArtifactStore,
    run_id: str,
    metrics_df: pd.DataFrame | None,
    scores_df: pd.DataFrame | None,
    maps_provider: MapsProvider | None = None,
    *,
    published_df: pd.DataFrame | None = None,
    max_maps_per_category: int = 3,
    history_df: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Write every table, figure and the HTML page of ``run_id`` into ``reports/<run_id>/``.

    ``metrics_df`` may hold several runs (the tables keep the latest cell, see
    :mod:`mrkd_core.paper_tables`); ``scores_df`` feeds Fig. 6; ``maps_provider(dataset, category)``
    returns a few (image, mask, anomaly map) triples from the run's own ``maps.npz`` for
    Fig. 7 — without it that figure is skipped. When ``scores_df`` says a model's image
    threshold was chosen on its test split (``on_evaluation_images``), the measured
    table's notes and the HTML page say so (:func:`threshold_note`). ``history_df`` (the
    registry's ``history`` table) adds the history section of the models this run tracked,
    regressions flagged (:mod:`mrkd_core.history_report`). Returns ``{"html": path, "tables": {key:
    [parquet, md]}, "figures": [paths], "paths": [every path written]}``, paths relative
    to the store root, and ``"regressions"``: one line per category that regressed in this run.
    """
    base = f"reports/{run_id.strip('/')}"
    written: list[str] = []

    def put(rel: str, data: bytes) -> str:
        path = f"{base}/{rel}"
        store.write_bytes(path, data)
        written.append(path)
        return path

    tables = {"measured": build_table("measured", metrics_df, published_df), **build_all(metrics_df, published_df),
              **build_benchmark_tables(metrics_df, include_unmeasured=False)}
    # Thresholds never come from the images they are then evaluated on without the report saying so.
    threshold_line = threshold_note(scores_df)
    if threshold_line:
        measured = tables["measured"]
        measured.attrs["notes"] = [*(measured.attrs.get("notes") or []), threshold_line]
    history_figures: list[tuple[str, str, bytes]] = []
    regressions: list[str] = []
    if history_df is not None:
        history, history_figures, regressions = history_section(history_df, run_id)
        if history is not None:
            tables[HISTORY_KEY] = history
    table_paths: dict[str, list[str]] = {}
    for key, t in tables.items():
        buf = io.BytesIO()
        t.to_parquet(buf, index=False)  # pandas keeps attrs (title, notes) in the file's metadata
        table_paths[key] = [put(f"{key}.parquet", buf.getvalue()),
                            put(f"{key}.md", table_to_markdown(t).encode("utf-8"))]

    figures: list[tuple[str, str, bytes]] = []
    figure_paths: list[str] = []

    def add_figure(name: str, caption: str, data: bytes) -> None:
        figure_paths.append(put(f"figures/{name}", data))
        figures.append((name, caption, data))

    main = main_setting_rows(metrics_df)
    scores = select_scores(scores_df, metrics_df)
    for dataset in sorted(scores["dataset"].astype(str).unique()):
        sub = scores[scores["dataset"] == dataset]
        m = main[main["dataset"] == dataset]
        aurocs = dict(zip(m["category"], 100.0 * m["image_auroc"].astype(float))) if not m.empty else {}
        add_figure(f"score_distributions_{slug(dataset)}.png",
                   f"Fig. 6 style: anomaly-score distributions of normal (blue) and anomalous (red) "
                   f"test images, {dataset}.", score_distribution_figure(sub, dataset, aurocs))

    if maps_provider is not None:
        for dataset, category in main[["dataset", "category"]].drop_duplicates().itertuples(index=False):
            try:
                triples = list(maps_provider(str(dataset), str(category)))[:max_maps_per_category]
            except Exception as exc:  # noqa: BLE001 - one category's missing maps must not sink the report
                log.warning("Fig. 7: no maps for %s/%s (%s: %s); skipped", dataset, category, type(exc).__name__, exc)
                continue
            if not triples:
                continue
            teacher = teacher_text(main[(main["dataset"] == dataset) & (main["category"] == category)])
            if all(t[1] is None for t in triples):  # image labels only: read_maps orders the rows
                rows = ", ".join("anomalous" if lab else "normal" for lab in IMAGE_LABELLED_ORDER[:len(triples)])
                caption = (f"Fig. 7 style: test images of {dataset}/{category} and their MRKD heatmaps on one "
                           f"colour scale; image labels only (no pixel masks); rows, where the test set has "
                           f"them: {rows}. {teacher}")
            else:
                caption = f"Fig. 7 style: input, ground truth and MRKD heatmap, {dataset}/{category}. {teacher}"
            add_figure(f"heatmaps_{slug(dataset)}_{slug(category)}.png", caption,
                       heatmap_figure(str(category), triples))
    else:
        log.info("no maps provider: Fig. 7 heatmaps skipped")

    png = lambda_figure(tables["fig_11"])
    if png is not None:
        add_figure("fig11_lambda.png", "Fig. 11 style: measured metrics against the FLM masking ratio λ.", png)
    for name, caption, png in history_figures:
        add_figure(name, caption, png)

    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    html_path = put("report.html", _html_page(run_id, tables, figures, generated, threshold_line,
                                              regressions).encode("utf-8"))
    log.info("report of %s: %d tables, %d figures in %s", run_id, len(tables), len(figures), store.uri(base))
    return {"html": html_path, "tables": table_paths, "figures": figure_paths, "paths": written,
            "regressions": regressions}


__all__ = [
    "format_cell", "heatmap_figure", "lambda_figure", "score_distribution_figure",
    "select_scores", "table_to_html", "table_to_markdown", "threshold_note", "thresholds_on_test_split",
    "write_report",
]
