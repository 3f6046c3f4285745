"""The record of every decision (mrkd_core/inspections.py): append-only, flushed on time and on close,
nothing lost when the store is down for a while, readable like every other table."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import duckdb
import pandas as pd
import pyarrow.dataset as pads
import pytest

from mrkd_core.inspections import INSPECTIONS_SCHEMA, INSPECTIONS_TABLE, InspectionRecorder, read_inspections
from mrkd_core.partitioned import DUCKDB_OPTIONS
from mrkd_core.storage import ArtifactStore

T0 = datetime(2026, 12, 6, 23, 59, 58, tzinfo=timezone.utc)


def _row(i: int, model: str = "bracket", at: datetime = T0, version: int | None = 3) -> dict:
    return {"model": model, "date": at.strftime("%Y-%m-%d"), "request_id": f"r{i:04d}", "image_index": 0,
            "received_at": at + timedelta(milliseconds=i), "filename": None, "image_sha256": "ab" * 32,
            "width": 64, "height": 48, "model_version": version, "model_source": "s3://b/runs/x/model.pt",
            "engine": "pytorch", "score": 0.5 + i / 1000, "normalized_score": None if version is None else 0.4,
            "verdict": None if version is None else "good", "threshold": None if version is None else 0.9,
            "defect_area_fraction": 0.0, "latency_ms": 12.5}


def test_rows_are_appended_per_partition_on_time_and_at_close(tmp_path):
    store = ArtifactStore(tmp_path)
    recorder = InspectionRecorder(store, flush_seconds=0.2)
    recorder.add([_row(i) for i in range(3)] + [_row(9, model="raw", version=None)])
    deadline = time.monotonic() + 10
    while recorder.pending and time.monotonic() < deadline:  # the thread flushes within its interval
        time.sleep(0.05)
    assert recorder.pending == 0
    files = sorted(p for p in store.list("tables/inspections", recursive=True))
    assert [f.rsplit("/", 1)[0] for f in files] == ["tables/inspections/bracket/2026-12-06",
                                                    "tables/inspections/raw/2026-12-06"]
    # the next day, another file: earlier files are never rewritten
    before = {f: store.read_bytes(f) for f in files}
    recorder.add([_row(4, at=T0 + timedelta(seconds=3))])
    assert recorder.close() == 1  # close writes what is left
    assert all(store.read_bytes(f) == data for f, data in before.items())
    df = read_inspections(store)
    assert list(df.request_id) == ["r0000", "r0001", "r0002", "r0009", "r0004"]
    assert list(df.date) == ["2026-12-06"] * 4 + ["2026-12-07"]
    assert df.model_version.isna().sum() == 1 and df.verdict.isna().sum() == 1
    assert list(read_inspections(store, model="raw").request_id) == ["r0009"]


def test_a_failed_flush_keeps_its_rows_for_the_next(tmp_path, monkeypatch):
    store = ArtifactStore(tmp_path)
    recorder = InspectionRecorder(store, flush_seconds=3600)
    recorder.add([_row(i) for i in range(5)])
    real = ArtifactStore.write_bytes
    monkeypatch.setattr(ArtifactStore, "write_bytes", lambda self, rel, data: (_ for _ in ()).throw(OSError("down")))
    assert recorder.flush() == 0 and recorder.pending == 5
    monkeypatch.setattr(ArtifactStore, "write_bytes", real)
    recorder.add([_row(5)])
    assert recorder.close() == 6
    assert list(read_inspections(store).request_id) == [f"r{i:04d}" for i in range(6)]


def test_pandas_pyarrow_and_duckdb_read_the_table_with_its_schema(tmp_path):
    store = ArtifactStore(tmp_path)
    for name in ("0042", "line 2"):  # a digits-only name stays text; spaces survive the path
        INSPECTIONS_TABLE.write(store, [_row(i, model=name) for i in range(2)], "f.parquet", None)
    root = store.uri("tables/inspections")
    df = pd.read_parquet(root, schema=INSPECTIONS_SCHEMA)
    assert sorted(set(df.model)) == ["0042", "line 2"] and len(df) == 4
    table = pads.dataset(root, schema=INSPECTIONS_SCHEMA, format="parquet", partitioning="hive").to_table()
    assert table.schema.field("date").type == "string" and table.num_rows == 4
    got = duckdb.sql(f"SELECT model, count(*) AS n FROM read_parquet('{root}/**/*.parquet', {DUCKDB_OPTIONS}) "
                     "GROUP BY model ORDER BY model").fetchall()
    assert got == [("0042", 2), ("line 2", 2)]
    # The plain calls an analyst types: the served name "0042" stays the text written.
    assert sorted(set(pd.read_parquet(root).model)) == ["0042", "line 2"]
    assert pads.dataset(root, format="parquet").to_table().schema.field("model").type == "string"
    assert duckdb.sql(f"SELECT DISTINCT model FROM read_parquet('{root}/**/*.parquet') ORDER BY 1").fetchall() == [
        ("0042",), ("line 2",)]


def test_flush_seconds_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="positive"):
        InspectionRecorder(ArtifactStore(tmp_path), flush_seconds=0)
