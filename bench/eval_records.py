"""Stored ``mrkd evaluate`` records, for the scripts of ``bench/`` that print tables from them.

``mrkd evaluate --evaluation-id ID`` writes one record per model evaluated to
``evaluations/ID/<dataset>/<category>/<config_hash>/metrics.json`` (and a summary to
``evaluations/ID/metrics.json``). A record's own ``config_hash`` is that of the config it
was *evaluated* with (``--no-flm-at-test`` changes it); the model it scored is named by
``model`` (``…/<trained config_hash>/model.pt``).
"""

from __future__ import annotations

import pandas as pd

from mrkd_core.layout import EVALUATIONS, RUNS
from mrkd_core.partitioned import SOURCE_COLUMN
from mrkd_core.results import MANIFEST
from mrkd_core.revision import UNRECORDED_REVISION, stored_revision
from mrkd_core.storage import ArtifactStore


def read_evaluations(store: ArtifactStore, evaluation_id: str) -> list[dict]:
    """The per-model records of ``evaluations/<evaluation_id>/`` in ``store`` (none when absent).

    Each is the stored record plus ``trained_hash`` (the config hash of the model's run
    directory) and ``evaluation_revision`` (the code that scored it; 1 when unrecorded).
    """
    base = f"{EVALUATIONS}/{evaluation_id}/"
    out = []
    for path in store.list(base, recursive=True):
        # <base><dataset>/<category>/<hash>/metrics.json; <base>metrics.json is the summary
        if not path.endswith("/metrics.json") or path.count("/") != base.count("/") + 3:
            continue
        rec = store.read_json(path)
        out.append({**rec, "trained_hash": rec["model"].rsplit("/", 2)[-2],
                    "evaluation_revision": stored_revision(rec, "evaluation_revision")})
    return out


def with_run_revisions(store: ArtifactStore, metrics: pd.DataFrame) -> pd.DataFrame:
    """``metrics`` with column ``evaluation_revision`` read from the manifest of the run directory
    that computed each row (metrics rows do not carry it; the manifest records the code that
    scored the run; 1 when absent).

    That directory is the row's ``SOURCE_COLUMN`` (``read_metrics(..., with_source=True)``): a
    result a run reused from an earlier run (a skipped key) was scored there, not under the
    row's own run id. Rows without it fall back to ``runs/<run_id>/<dataset>/<category>/<hash>``.
    """
    out = metrics.copy()
    sources = out[SOURCE_COLUMN] if SOURCE_COLUMN in out.columns else [""] * len(out)
    manifests = [f"{source or f'{RUNS}/{r.run_id}/{r.dataset}/{r.category}/{r.config_hash}'}/{MANIFEST}"
                 for r, source in zip(out.itertuples(), sources)]
    recorded = {m: stored_revision(store.read_json(m), "evaluation_revision") if store.exists(m)
                else UNRECORDED_REVISION for m in dict.fromkeys(manifests)}  # one read per run directory
    out["evaluation_revision"] = [recorded[m] for m in manifests]
    return out
