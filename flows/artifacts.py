"""What a flow run leaves in Prefect besides its state: summary, report link, regression warning.

Created by ``mrkd-benchmark`` at its end, as artifacts of the flow run (Prefect UI: the flow
run's *Artifacts* tab, and the *Artifacts* page by key):

- ``summary-<spec>`` (table): one row per training of the run — status, image and pixel
  AU-ROC, the registered version, the champion, the promotion decision, what regressed;
- ``report-<spec>`` (link): the run's HTML report in the store;
- ``regressions-<spec>`` (markdown), only when a category regressed: the categories that
  are worse than their champion beyond the tolerance. Each such artifact updates the
  collection of that key, which emits the Prefect event
  ``prefect.artifact-collection.updated`` (``…created`` the first time) with the key as
  ``prefect.resource.name``: what an automation hooks to (docs/pipeline.md, "Alerts").

Keys follow Prefect's rule (lowercase letters, digits, dashes). Creating an artifact never
fails the run: an API error is logged as a warning.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)


def artifact_key(*parts: str) -> str:
    """``parts`` joined by dashes as a Prefect artifact key (lowercase letters, digits and dashes only)."""
    raw = "-".join(str(p) for p in parts).lower()
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", raw)).strip("-")


def _pct(value: Any) -> str:
    return "" if value is None else f"{100.0 * float(value):.1f}"


def summary_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per task record of the run (what the summary table artifact shows)."""
    rows = []
    for r in results:
        main = (r.get("rows") or [{}])[0]
        reg = r.get("registry") or {}
        rows.append({
            "dataset": r["dataset"], "category": r["category"], "variant": r["variant"], "status": r["status"],
            "image AU-ROC": _pct(main.get("image_auroc")), "pixel AU-ROC": _pct(main.get("pixel_auroc")),
            "model": reg.get("model_name", ""), "version": reg.get("version", ""),
            "champion": reg.get("champion", ""), "decision": reg.get("decision", ""),
            "regression": reg.get("regression") or "", "error": r.get("error") or "",
        })
    return rows


def regressed(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The task records whose category regressed (worse than the champion beyond the tolerance)."""
    return [r for r in results if (r.get("registry") or {}).get("regressed")]


def regression_text(results: Sequence[dict[str, Any]]) -> str:
    """``2 categories regressed: folder/obj_disc (mvtec-full-mrkd): v2 worse than champion v1: pixel_auroc …; …``."""
    found = regressed(results)
    if not found:
        return ""
    items = [f"{r['dataset']}/{r['category']} ({r['registry']['model_name']}): {r['registry']['regression']}"
             for r in found]
    noun = "category" if len(found) == 1 else "categories"
    return f"{len(found)} {noun} regressed: " + "; ".join(items)


def _markdown(run_id: str, found: Sequence[dict[str, Any]], report: str | None) -> str:
    lines = [f"# Regressions in run {run_id}", "",
             "Worse than the model in use (the champion) on the same test data beyond the tolerance; the "
             "champion stays in use.", "",
             "| dataset | category | model | new version | champion | what got worse |", "|---|---|---|---|---|---|"]
    for r in found:
        reg = r["registry"]
        lines.append(f"| {r['dataset']} | {r['category']} | {reg['model_name']} | v{reg['version']} | "
                     f"v{reg['champion']} | {reg['regression']} |")
    if report:
        lines += ["", f"Report: {report}"]
    return "\n".join(lines)


def _link(uri: str) -> str:
    return f"file://{uri}" if uri.startswith("/") else uri


def publish(run_id: str, spec: str, results: Sequence[dict[str, Any]], report: str | None) -> dict[str, str]:
    """Create the run's artifacts; returns {kind: key} of those created."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    made: dict[str, str] = {}

    def attempt(kind: str, key: str, fn, **kwargs: Any) -> None:
        try:
            fn(key=key, **kwargs)
            made[kind] = key
        except Exception as exc:  # noqa: BLE001 - an artifact is a view; the run's result stands
            log.warning("artifact %s: %s: %s", key, type(exc).__name__, exc)

    attempt("summary", artifact_key("summary", spec), create_table_artifact, table=summary_rows(results),
            description=f"Run {run_id}: one row per training")
    if report:
        attempt("report", artifact_key("report", spec), create_link_artifact, link=_link(report),
                link_text=f"report of {run_id}", description=f"HTML report of run {run_id}: {report}")
    found = regressed(results)
    if found:
        attempt("regressions", artifact_key("regressions", spec), create_markdown_artifact,
                markdown=_markdown(run_id, found, report), description=regression_text(results))
    return made


__all__ = ["artifact_key", "publish", "regressed", "regression_text", "summary_rows"]
