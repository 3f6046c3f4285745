"""The report's history section: each category's metric per night, regressions flagged.

Built from the registry's ``history`` table (:mod:`mrkd_core.registry.tables`): one row per
task of every run that tracked its results, appended (a re-run of a night adds its own). The section of run ``R`` covers the registered
models R touched, over every run up to and including R, in the order the runs happened:

- a table (``history.parquet``/``.md`` in ``reports/<R>/``): per night and category the
  version the run produced or reused, its image and pixel AU-ROC, the champion's on the
  same test data, the decision and what regressed;
- a figure per (dataset, model): the metrics over the nights, one line per category, the
  champion's dotted, regressed nights marked with a red cross;
- a banner naming the categories that regressed in R.
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from mrkd_core.figures import png, slug

HISTORY_KEY = "history"
_METRICS = (("image_auroc", "image AU-ROC"), ("pixel_auroc", "pixel AU-ROC"))


_ROW = ["run_id", "dataset", "category", "model_name"]  # one row of the view per night and registered model


def history_view(history: pd.DataFrame | None, run_id: str) -> pd.DataFrame:
    """The rows of the models ``run_id`` tracked, over the runs up to it, one per night and category.

    The ``history`` table is appended to: a re-run of a night adds its own rows beside the
    first run's. The view shows each night once: its latest row (the latest comparison with
    the champion), with what the night did — ``status`` trained when any of its runs trained,
    ``decision`` the first one it made (a re-run that reused the result says ``unchanged``)
    — and ``runs``, how many runs the night had. Nights are ordered by their first row.
    """
    if history is None or history.empty or not (history["run_id"] == run_id).any():
        return pd.DataFrame()
    this = history[history["run_id"] == run_id]
    models = set(zip(this["dataset"], this["model_name"]))
    keep = pd.Series([(d, m) in models for d, m in zip(history["dataset"], history["model_name"])],
                     index=history.index)
    df = history[keep & (history["recorded_at"] <= this["recorded_at"].max())].sort_values("recorded_at",
                                                                                            kind="stable")
    groups = df.groupby(_ROW, sort=False)
    df = df.assign(
        _night=df.groupby("run_id")["recorded_at"].transform("min"),
        status=groups["status"].transform(lambda s: "trained" if (s == "trained").any() else s.iloc[-1]),
        decision=groups["decision"].transform(lambda s: next((d for d in s if d != "unchanged"), s.iloc[-1])),
        runs=groups["recorded_at"].transform("size"),
    )
    df = df.drop_duplicates(_ROW, keep="last")
    df = df.sort_values(["_night", "dataset", "category", "model_name"], kind="stable")
    return df.drop(columns="_night").reset_index(drop=True)


def _version(value) -> str:
    return "" if value is None or pd.isna(value) else f"v{int(value)}"


def _percent(value) -> float | None:
    return None if value is None or pd.isna(value) else 100.0 * float(value)


def history_table(view: pd.DataFrame, tolerance: str | None = None) -> pd.DataFrame:
    """The section's table (values in percent), with the report's attrs (key, title, notes)."""
    records = []
    for r in view.itertuples(index=False):
        records.append({
            "night": r.run_id, "dataset": r.dataset, "category": r.category, "model": r.model_name,
            "version": _version(r.version), "status": r.status, "decision": r.decision, "runs": int(r.runs),
            "image AU-ROC": _percent(r.image_auroc), "pixel AU-ROC": _percent(r.pixel_auroc),
            "champion": _version(r.champion_version),
            "champion image AU-ROC": _percent(r.champion_image_auroc),
            "champion pixel AU-ROC": _percent(r.champion_pixel_auroc),
            "regression": f"REGRESSED: {r.regression}" if bool(r.regressed) else "",
        })
    df = pd.DataFrame.from_records(records)
    df.attrs.update({
        "key": HISTORY_KEY, "title": "History: each category's metric per night",
        "notes": [
            "version: the model this night produced (trained) or reused (skipped: its inputs had not changed); "
            "champion: the version in use after this night's decision, its metrics on the same test data.",
            "decision: first (the first version becomes champion), promoted (not worse than the champion beyond "
            "the tolerance), kept (the champion stays), unchanged (registered before), not-registered (trained by "
            "a run that did not register its results).",
            "runs: how many runs the night had (a re-run of a night adds its rows to the history table; this "
            "table shows the night's latest comparison and what the night did: trained if any of its runs "
            "trained, the decision it made).",
            "regression: empty, or \"REGRESSED: …\" where that night's model is worse than the champion beyond "
            "the tolerance (percentage points" + (f": {tolerance}" if tolerance else "") + "); the champion then "
            "stays in use.",
        ],
    })
    return df


def regression_lines(view: pd.DataFrame, run_id: str) -> list[str]:
    """One line per category that regressed in ``run_id``."""
    rows = view[(view["run_id"] == run_id) & view["regressed"].fillna(False).astype(bool)]
    return [f"{r.dataset}/{r.category} ({r.model_name}): {r.regression}" for r in rows.itertuples(index=False)]


def history_figure(view: pd.DataFrame, dataset: str, model_name: str) -> bytes:
    """Image and pixel AU-ROC (%) per night of one model, a line per category; regressions as red crosses."""
    df = view[(view["dataset"] == dataset) & (view["model_name"] == model_name)]
    nights = list(dict.fromkeys(df["run_id"]))
    x = {n: i for i, n in enumerate(nights)}
    metrics = [(m, label) for m, label in _METRICS if df[m].notna().any()] or list(_METRICS[:1])
    fig = Figure(figsize=(max(5.0, 1.1 * len(nights) + 2.5), 3.4 * len(metrics)), layout="constrained")
    for i, (metric, label) in enumerate(metrics):
        ax = fig.add_subplot(len(metrics), 1, i + 1)
        for j, (category, sub) in enumerate(df.groupby("category", sort=True)):
            colour = f"C{j % 10}"
            xs = [x[n] for n in sub["run_id"]]
            ax.plot(xs, 100.0 * sub[metric].astype(float), marker="o", color=colour, label=str(category))
            ax.plot(xs, 100.0 * sub[f"champion_{metric}"].astype(float), linestyle=":", color=colour)
            bad = sub[sub["regressed"].fillna(False).astype(bool)]
            if not bad.empty:
                ax.scatter([x[n] for n in bad["run_id"]], 100.0 * bad[metric].astype(float), marker="x", s=90,
                           color="red", zorder=3, label="regressed" if j == 0 else None)
        ax.set_xticks(range(len(nights)), nights, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(f"{label} (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"History of {model_name} on {dataset} (dotted: the champion on the same test data)", fontsize=10)
    return png(fig)


def history_section(history: pd.DataFrame | None, run_id: str) -> tuple[pd.DataFrame | None, list, list[str]]:
    """(table or None, [(file name, caption, png)], regression lines) of run ``run_id``."""
    view = history_view(history, run_id)
    if view.empty:
        return None, [], []
    tolerance = next((t for t in view["tolerance"] if isinstance(t, str)), None)
    figures = [(f"history_{slug(d)}_{slug(m)}.png",
                f"History of {m} on {d}: each category's metric per night; red crosses mark regressions.",
                history_figure(view, d, m))
               for d, m in view[["dataset", "model_name"]].drop_duplicates().itertuples(index=False)]
    return history_table(view, tolerance), figures, regression_lines(view, run_id)


__all__ = ["HISTORY_KEY", "history_figure", "history_section", "history_table", "history_view", "regression_lines"]
