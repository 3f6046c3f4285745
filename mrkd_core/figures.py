"""What every figure of the reports shares: PNG rendering and file-name slugs.

Matplotlib is used through ``FigureCanvasAgg`` on explicit ``Figure`` objects, never
through pyplot's global state: reports are drawn inside Ray/Prefect workers, headless and
possibly in threads. The run report (:mod:`mrkd_core.report`) and its history section
(:mod:`mrkd_core.history_report`) both draw with these.
"""

from __future__ import annotations

import io
import re

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 90

__all__ = ["DPI", "png", "slug"]


def png(fig: Figure) -> bytes:
    """The figure as PNG bytes at ``DPI``, cropped to its content."""
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def slug(text: str) -> str:
    """``text`` as a safe file-name part: runs of other characters become ``_`` (``'x'`` when empty)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "x"
