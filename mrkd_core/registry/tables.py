"""The registry's two Parquet tables: every promotion decision, and the history of every run.

Both are partitioned like the metrics (folders ``<dataset>/<run_id>``, the values also in
each file, read back as strings by any reader: :mod:`mrkd_core.partitioned`; stores written
before issue 25 keep a table's ``dataset=<d>/run_id=<r>`` hive folders)::

    tables/promotions/<d>/<r>/<category>-<model name>-v<N>.parquet                      a run's decision
    tables/promotions/<d>/<r>/<category>-<model name>-v<N>-<decision>-<time>-<id>.parquet   a person's
    tables/history/<d>/<r>/<category>-<variant>-<config_hash>-<time>-<id>.parquet

Both record what happened, so neither is ever rewritten: every history row and every
person's decision is a file of its own (``PartitionedTable.append``: a re-run of a night
adds its rows beside the first run's), and a run's decision about a version, made once
when the version is registered, is written once (``PartitionedTable.write``).

``promotions``: one row per decision about a registered model — ``first`` (its first
version becomes champion), ``promoted``/``kept`` (a new version against the champion, on
the same test data), ``promote``/``rollback`` (a person, ``mrkd models promote|rollback``) —
with the reason, both sets of metrics and the tolerance. ``history``: one row per task of
every run (and re-run) that tracked its result in the registry, trained or reused: the
run's metrics, the champion's on the same test data, the decision and whether the
category regressed (``not-registered``, version null: a result of a run that did not
register, met by one that does).
Metrics are fractions in [0, 1] like the metrics table; tolerances are percentage points.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

from mrkd_core.partitioned import PartitionedTable
from mrkd_core.results import ABSENT_COLUMN, METRIC_COLUMNS

if TYPE_CHECKING:
    import pandas as pd

    from mrkd_core.storage import ArtifactStore

_TS = pa.timestamp("us", tz="UTC")


def _metric_fields(prefix: str) -> list[pa.Field]:
    return [pa.field(f"{prefix}{m}", pa.float64()) for m in METRIC_COLUMNS]


PROMOTIONS_SCHEMA = pa.schema([
    pa.field("run_id", pa.string()),       # the run that decided (promote-/rollback-<time> for a person)
    pa.field("dataset", pa.string()),
    pa.field("category", pa.string()),
    pa.field("model_name", pa.string()),
    pa.field("decision", pa.string()),     # first | promoted | kept | promote | rollback
    pa.field("reason", pa.string()),
    pa.field("version", pa.int64()),       # the version decided about
    pa.field("champion_before", pa.int64()),
    pa.field("champion_after", pa.int64()),
    pa.field("variant", pa.string()),
    pa.field("config_hash", pa.string()),
    *_metric_fields("candidate_"),
    *_metric_fields("champion_"),          # the champion's, on the same test data (null without a champion)
    pa.field("champion_reevaluated", pa.bool_()),  # the champion was evaluated again on this test data
    pa.field("test_fingerprint", pa.string()),
    pa.field("compared", pa.string()),     # metrics compared, e.g. 'image_auroc,pixel_auroc'
    pa.field("tolerance", pa.string()),    # JSON: metric → percentage points
    pa.field("decided_by", pa.string()),   # 'auto' (the run) or user@host
    pa.field("decided_at", _TS),
])

HISTORY_SCHEMA = pa.schema([
    pa.field("run_id", pa.string()),
    pa.field("dataset", pa.string()),
    pa.field("category", pa.string()),
    pa.field("model_name", pa.string()),
    pa.field("variant", pa.string()),
    pa.field("config_hash", pa.string()),
    pa.field("spec", pa.string()),
    pa.field("status", pa.string()),       # trained | skipped (reused a complete result)
    pa.field("run_dir", pa.string()),      # where the result lives (an earlier run's for a skipped task)
    pa.field("version", pa.int64()),       # null when not-registered
    pa.field("champion_version", pa.int64()),  # after this run's decision
    pa.field("decision", pa.string()),     # first | promoted | kept | unchanged (registered before) | not-registered
    pa.field("regressed", pa.bool_()),
    pa.field("regression", pa.string()),   # what got worse, by how much, against which tolerance
    *_metric_fields(""),                   # this run's result
    pa.field(ABSENT_COLUMN, pa.string()),
    *_metric_fields("champion_"),
    pa.field("tolerance", pa.string()),
    pa.field("train_fingerprint", pa.string()),
    pa.field("test_fingerprint", pa.string()),
    pa.field("training_revision", pa.int64()),
    pa.field("recorded_at", _TS),
])

PROMOTIONS_TABLE = PartitionedTable("promotions", PROMOTIONS_SCHEMA)
HISTORY_TABLE = PartitionedTable("history", HISTORY_SCHEMA)


def read_promotions(store: ArtifactStore, **equals: str | None) -> pd.DataFrame:
    """Every promotion decision (optionally of one ``dataset``/``run_id``), oldest first."""
    df = PROMOTIONS_TABLE.read(store, **equals)
    return df.sort_values("decided_at", kind="stable").reset_index(drop=True)


def read_history(store: ArtifactStore, **equals: str | None) -> pd.DataFrame:
    """The history of every run (optionally of one ``dataset``/``run_id``), oldest first."""
    df = HISTORY_TABLE.read(store, **equals)
    return df.sort_values("recorded_at", kind="stable").reset_index(drop=True)


__all__ = ["HISTORY_SCHEMA", "HISTORY_TABLE", "PROMOTIONS_SCHEMA", "PROMOTIONS_TABLE", "read_history",
           "read_promotions"]
