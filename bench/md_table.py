"""A DataFrame as a GitHub Markdown table, for the scripts of ``bench/`` that print one.

Numbers are right-aligned and formatted by the caller's ``number(column, value)``; a
missing number (NaN) prints as ``missing``.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd


def markdown(df: pd.DataFrame, number: Callable[[str, float], str], missing: str = "") -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |",
             "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(df[c]) else ":---" for c in cols) + "|"]
    for row in df.itertuples(index=False):
        cells = [(missing if v != v else number(c, v)) if isinstance(v, float) else str(v) for c, v in zip(cols, row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
