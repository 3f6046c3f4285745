"""Stored ``mrkd evaluate`` records, for the scripts of ``bench/`` that print tables from them.

``mrkd evaluate --evaluation-id ID`` writes one record per model evaluated to
``evaluations/ID/<dataset>/<category>/<config_hash>/metrics.json`` (and a summary to
``evaluations/ID/metrics.json``). A record's own ``config_hash`` is that of the config it
was *evaluated* with (``--no-flm-at-test`` changes it); the model it scored is named by
``model`` (``…/<trained config_hash>/model.pt``).
"""

from __future__ import annotations

from mrkd_core.layout import EVALUATIONS
from mrkd_core.revision import stored_revision
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
