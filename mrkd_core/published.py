"""The numbers printed in Tables 1-8 of the MRKD paper, and other papers' benchmark tables, as data.

Published numbers live in one versioned file, ``mrkd_core/resources/published.csv``,
so that a table never mixes a number somebody measured with one somebody read in a
paper: measured values come from the ``metrics`` table, published ones only from here.

One CSV row per printed cell:

``table``    1..8, the paper's table number.
``dataset``  ``mvtec``, ``mtd`` or ``btad``.
``row``      the category (``metal_nut``; BTAD products ``01``/``02``/``03``, which the
             paper prints as 0/1/2; MTD's single row ``mtd``), ``average``, or the
             ablation setting (``baseline+ilm``, ``alpha=0.2``, ``SM1&2``, ``resnet18``).
``method``   the column's method (``DRAEM``, ``RD4AD``, ``MRKD``; the ablation
             Tables 5-8 are all ``MRKD``).
``metric``   ``image_auroc``, ``pixel_auroc`` or ``au_pro`` (the paper's "AU-PRO").
``value``    the number as a float, in the table's own ``unit``.
``printed``  the exact text the paper prints (``100`` vs ``100.0``, ``1.00``), so no
             digit is lost to float formatting.
``unit``     ``percent`` everywhere except Table 4, which the paper prints as fractions.
``source``   ``MRKD paper, Table N``.

A ``-`` in the paper has no row. The "(+x)" deltas the paper prints after MRKD's
values in Tables 1-2 are not stored: they are differences to RD4AD, derivable here.

Numbers other papers publish on the newer benchmarks (VisA, MVTec AD 2, MVTec LOCO AD) live
in ``published_benchmarks.csv`` (:func:`load_published_benchmarks`): ``dataset``, ``row``
(a category or ``average``), ``method``, ``metric`` (a column of the metrics table),
``value``, ``printed``, ``unit`` and ``source`` (where it was read: paper, table, URL;
required). A number is added only after it was read in its source, and only when the
source's metric is ours by definition. It holds MVTec LOCO AD image AU-ROCs per anomaly
type (``image_auroc_logical``/``_structural``/``_mean_types``) of PatchCore, RD4AD, DRAEM,
GCAD and PSAD, as PSAD's official README (AAAI 2024) prints them; no VisA, MVTec AD 2 or
AU-sPRO cell could be read in a source here (docs/tables.md says which were looked for).
"""

from __future__ import annotations

import functools
import importlib.resources
import io
import logging

import pandas as pd

log = logging.getLogger(__name__)

#: Bump when a number in published.csv changes (a transcription fix); reports quote it.
PUBLISHED_VERSION = "1"
PUBLISHED_RESOURCE = "published.csv"
BENCHMARKS_RESOURCE = "published_benchmarks.csv"
BENCHMARK_COLUMNS = ("dataset", "row", "method", "metric", "value", "printed", "unit", "source")

COLUMNS = ("table", "dataset", "row", "method", "metric", "value", "printed", "unit", "source")
UNITS = ("percent", "fraction")
METRICS = ("image_auroc", "pixel_auroc", "au_pro")


@functools.lru_cache(maxsize=1)
def _read_published() -> pd.DataFrame:
    text = _read_resource(PUBLISHED_RESOURCE)
    # Row labels such as "01" and printed values such as "100.0" must stay text.
    df = pd.read_csv(
        io.StringIO(text),
        dtype={"dataset": str, "row": str, "method": str, "metric": str, "printed": str, "unit": str,
               "source": str},
        keep_default_na=False,
    )
    df = _checked_cells(df, PUBLISHED_RESOURCE, COLUMNS, ("table", "row", "method", "metric"))
    df["table"] = df["table"].astype("int64")
    log.debug("loaded %d published cells (version %s)", len(df), PUBLISHED_VERSION)
    return df


def _checked_cells(df: pd.DataFrame, resource: str, columns: tuple[str, ...], key: tuple[str, ...]) -> pd.DataFrame:
    """``df`` reduced to ``columns`` with float values; ValueError naming ``resource`` for a missing
    column, an unknown unit or a cell (``key``) given twice."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{resource}: missing column(s) {missing}; expected {list(columns)}")
    df = df[list(columns)].copy()
    df["value"] = df["value"].astype("float64")
    bad_units = sorted(set(df["unit"]) - set(UNITS))
    if bad_units:
        raise ValueError(f"{resource}: unknown unit(s) {bad_units}; use {list(UNITS)}")
    dup = df.duplicated(list(key), keep=False)
    if dup.any():
        raise ValueError(f"{resource}: duplicated cells:\n{df[dup].to_string()}")
    return df


def _read_resource(name: str) -> str:
    return importlib.resources.files("mrkd_core").joinpath("resources", name).read_text(encoding="utf-8")


def read_published_benchmarks(text: str) -> pd.DataFrame:
    """Published benchmark cells from CSV text in ``published_benchmarks.csv``'s format, checked.

    Every cell needs a ``source`` (paper and table) and a known unit; a cell may appear once.
    Raises ValueError naming what is wrong.
    """
    df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    df = _checked_cells(df, BENCHMARKS_RESOURCE, BENCHMARK_COLUMNS, ("dataset", "row", "method", "metric"))
    if (df["source"].str.strip() == "").any():
        raise ValueError(f"{BENCHMARKS_RESOURCE}: every published number needs its source (paper, table)")
    return df


def load_published_benchmarks() -> pd.DataFrame:
    """Other papers' numbers on VisA, MVTec AD 2 and MVTec LOCO AD (``published_benchmarks.csv``)."""
    return read_published_benchmarks(_read_resource(BENCHMARKS_RESOURCE))


def load_published() -> pd.DataFrame:
    """All published cells (one row per printed number); a fresh copy the caller may modify."""
    return _read_published().copy()


def to_percent(value: float, unit: str) -> float:
    """A published value in percent: Table 4's fractions ×100, percent values unchanged."""
    if unit == "fraction":
        return value * 100.0
    if unit == "percent":
        return value
    raise ValueError(f"unknown unit {unit!r}; use one of {UNITS}")


def published_value(table: int, row: str, method: str, metric: str, *, percent: bool = False) -> float:
    """The number the paper prints in one cell, in the table's own unit (``percent=True``: in %).

    Raises ``KeyError`` when the paper has no such cell (it prints ``-``, or a name is
    misspelt) — a silent NaN would hide a typo in a caller's comparison.
    """
    df = _read_published()
    hit = df[(df["table"] == int(table)) & (df["row"] == row) & (df["method"] == method) & (df["metric"] == metric)]
    if hit.empty:
        known = df[df["table"] == int(table)]
        raise KeyError(
            f"Table {table} of the paper has no cell row={row!r} method={method!r} metric={metric!r}"
            f" (rows: {sorted(set(known['row']))}; methods: {sorted(set(known['method']))};"
            f" metrics: {sorted(set(known['metric']))})"
        )
    value = float(hit["value"].iloc[0])
    return to_percent(value, str(hit["unit"].iloc[0])) if percent else value
