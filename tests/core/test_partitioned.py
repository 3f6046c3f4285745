"""Partitioned tables: values read back as the strings written, files of every schema version read.

Each reader the docs show (pandas, pyarrow.dataset, DuckDB: plain, and with the schema or
options for stores of several versions) and our own (``PartitionedTable.read`` =
``partitioned.read_metrics/read_scores``), on a local store; tests/flows/test_tables_s3.py
runs the same against the moto S3 server. Stores written before the plain layout (hive
folders): below, and tests/core/test_old_store.py on a real one.
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mrkd_core.errors import ConfigError
from mrkd_core.partitioned import (
    METRICS_TABLE,
    SCORES_TABLE,
    check_partition_value,
    check_run_id,
    encode_value,
    safe_file_name,
)
from mrkd_core.registry.tables import HISTORY_TABLE, PROMOTIONS_TABLE
from mrkd_core.storage import ArtifactStore
from tests import readers
from tests.datagen import write_hive_rows, write_table_rows

# Digits only is where type inference bites: every value of the column looks like a number.
NUMERIC = {"dataset": ["123"], "run_id": ["0001", "0002", "20261130"]}
MIXED = {"dataset": ["folder", "my data", "ünï"],
         "run_id": ["2026-11-30", "nuit du 30 nov", "essai-été", "x=1", "100%", "12.50", "1e3", "true", "null",
                    "+1", "日本語", "a,b;c", "it's"]}
TABLES = [METRICS_TABLE, SCORES_TABLE, PROMOTIONS_TABLE, HISTORY_TABLE]  # every partitioned table of the store


def _fill(store: ArtifactStore, values: dict[str, list[str]]) -> set[tuple[str, str]]:
    written = set()
    for i, run_id in enumerate(values["run_id"]):
        dataset = values["dataset"][i % len(values["dataset"])]
        for table in TABLES:
            write_table_rows(store, table, dataset, run_id)
        written.add((dataset, run_id))
    return written


def _pairs(df) -> set[tuple[str, str]]:
    assert all(isinstance(v, str) for v in df["run_id"]) and all(isinstance(v, str) for v in df["dataset"])
    return set(zip(df["dataset"], df["run_id"]))


@pytest.mark.parametrize("values", [NUMERIC, MIXED], ids=["digits-only", "any-text"])
@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.name)
def test_partition_values_round_trip_through_every_reader(tmp_path, values, table):
    store = ArtifactStore(tmp_path / "store")
    written = _fill(store, values)
    uri = store.uri(table.root)
    first = values["run_id"][0]

    ours = table.read(store)
    assert _pairs(ours) == written and list(ours.columns) == table.schema.names
    assert len(table.read(store, run_id=first)) == 1

    by_pandas = readers.with_pandas(uri, table.schema)
    assert _pairs(by_pandas.astype({"run_id": str, "dataset": str})) == written
    assert (by_pandas["run_id"] == first).sum() == 1

    by_pyarrow = readers.with_pyarrow(uri, table.schema)
    assert set(zip(by_pyarrow.column("dataset").to_pylist(), by_pyarrow.column("run_id").to_pylist())) == written
    assert table.dataset(uri).to_table().num_rows == len(written)

    by_duckdb = readers.with_duckdb(uri, where=f"WHERE run_id = '{first}'")
    assert list(by_duckdb["run_id"]) == [first]
    assert _pairs(readers.with_duckdb(uri)) == written

    # What an analyst types: no schema, no options, and run `0001` is still the string written.
    by_plain_pandas = readers.plain_pandas(uri)
    assert _pairs(by_plain_pandas) == written and (by_plain_pandas["run_id"] == first).sum() == 1
    assert list(by_plain_pandas.columns) == table.schema.names
    assert _pairs(readers.plain_pyarrow(uri).to_pandas()) == written
    assert _pairs(readers.plain_duckdb(uri)) == written
    assert list(readers.plain_duckdb(uri, where=f"WHERE run_id = '{first}'")["run_id"]) == [first]


def test_values_are_percent_encoded_in_the_path_and_no_folder_is_a_hive_partition(tmp_path):
    store = ArtifactStore(tmp_path)
    path = write_table_rows(store, METRICS_TABLE, "my data", "x=1 %")
    assert path.startswith("tables/metrics/my%20data/x%3D1%20%25/") and "=" not in path.rsplit("/", 1)[0]
    assert write_table_rows(store, METRICS_TABLE, "_d", ".r").startswith("tables/metrics/%5Fd/%2Er/")
    for plain in ("nightly-20261129", "s3-first", "r1.b_2"):
        assert encode_value(plain) == plain  # hive folders written before encoding read the same
    assert set(map(tuple, METRICS_TABLE.read(store)[["dataset", "run_id"]].values)) == \
        {("my data", "x=1 %"), ("_d", ".r")}
    assert {("_d", ".r"), ("my data", "x=1 %")} == set(map(tuple, readers.plain_pandas(
        store.uri("tables/metrics"))[["dataset", "run_id"]].values))  # no folder skipped for its '.' or '_'


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.name)
def test_a_table_of_an_older_store_is_appended_to_in_its_hive_layout_and_read_by_the_documented_calls(tmp_path,
                                                                                                     table):
    """Old partitions stay as written and new ones go next to them in the same layout: one table never mixes
    the two (DuckDB refuses a mix, plain pandas would type it wrongly)."""
    store = ArtifactStore(tmp_path / "store")
    old = write_hive_rows(store, table, "123", "0001")
    assert old.startswith(f"{table.root}/dataset=123/run_id=0001/") and table.is_hive(store)
    new = write_table_rows(store, table, "123", "0002")
    assert new.startswith(f"{table.root}/dataset=123/run_id=0002/")
    written = {("123", "0001"), ("123", "0002")}
    uri = store.uri(table.root)
    assert _pairs(table.read(store)) == written
    assert _pairs(readers.with_pandas(uri, table.schema)) == written
    assert _pairs(readers.with_pyarrow(uri, table.schema).to_pandas()) == written
    assert _pairs(readers.with_duckdb(uri)) == written
    # ...and a new store's table is in the plain layout
    assert not table.is_hive(ArtifactStore(tmp_path / "new")) and "=" not in write_table_rows(
        ArtifactStore(tmp_path / "new"), table, "123", "0001").rsplit("/", 1)[0]


@pytest.mark.parametrize("hive", [False, True], ids=["plain", "hive"])
def test_a_table_file_is_written_once_and_events_are_appended(tmp_path, hive):
    """Stored rows are never replaced: the same rows again write nothing, another result's rows under the
    same name are refused, and event rows (history, a person's decisions) each get a file of their own."""
    from mrkd_core.errors import StorageError
    from tests.datagen import table_row

    store = ArtifactStore(tmp_path)
    if hive:
        write_hive_rows(store, METRICS_TABLE, "d", "old")
        write_hive_rows(store, HISTORY_TABLE, "d", "old")
    store.write_json("runs/r1/d/cat/h/manifest.json", {"format": "mrkd-manifest/1"})  # its rows are read
    row = table_row(METRICS_TABLE.schema, dataset="d", run_id="r1")
    path = METRICS_TABLE.write(store, [row], "cat-mrkd-h.parquet", "runs/r1/d/cat/h")
    written = store.read_bytes(path)
    assert METRICS_TABLE.held_by(store, {"dataset": "d", "run_id": "r1"}, "cat-mrkd-h.parquet") == "runs/r1/d/cat/h"
    assert METRICS_TABLE.held_by(store, {"dataset": "d", "run_id": "r2"}, "cat-mrkd-h.parquet") is None
    assert METRICS_TABLE.write(store, [{**row, "image_auroc": 0.1}], "cat-mrkd-h.parquet", "runs/r1/d/cat/h") == path
    assert store.read_bytes(path) == written  # a retry or a re-run of the same result writes nothing
    with pytest.raises(StorageError, match="written once"):
        METRICS_TABLE.write(store, [row], "cat-mrkd-h.parquet", "runs/r0/d/cat/h")
    assert store.read_bytes(path) == written
    history = table_row(HISTORY_TABLE.schema, dataset="d", run_id="r1")
    first = HISTORY_TABLE.append(store, [history], "cat-mrkd-h", "runs/r1/d/cat/h")
    second = HISTORY_TABLE.append(store, [history], "cat-mrkd-h", "runs/r1/d/cat/h")
    assert first != second and len(HISTORY_TABLE.read(store, run_id="r1")) == 2
    assert ("=" in first) is hive


def test_file_names_every_reader_lists(tmp_path):
    """pyarrow and pandas skip files starting with '_' or '.': a category '_scratch' must not vanish."""
    assert safe_file_name("_scratch-mrkd-abc.parquet") == "%5Fscratch-mrkd-abc.parquet"
    assert safe_file_name(".x-mrkd-abc.parquet").startswith("%2E")
    assert safe_file_name("bottle-alpha=0.2-abc.parquet") == "bottle-alpha=0.2-abc.parquet"  # unchanged
    assert "/" not in safe_file_name("a/b-c.parquet")
    store = ArtifactStore(tmp_path)
    write_table_rows(store, METRICS_TABLE, "folder", "r", name="_scratch-mrkd-abc.parquet", category="_scratch")
    assert list(readers.with_pandas(store.uri("tables/metrics"), METRICS_TABLE.schema)["category"]) == ["_scratch"]
    assert list(METRICS_TABLE.read(store)["category"]) == ["_scratch"]


@pytest.mark.parametrize("bad", ["", " x", "x ", "a/b", "a\\b", "a*", "[x]", "?", ".", "..", "a\nb", "a\tb",
                                 "__HIVE_DEFAULT_PARTITION__", "é" * 200])
def test_values_that_cannot_name_a_folder_are_refused_with_the_reason(bad):
    with pytest.raises(ConfigError, match="run id"):
        check_run_id(bad)


def test_run_id_length_and_dataset_values():
    assert check_run_id("x" * 128) == "x" * 128
    with pytest.raises(ConfigError, match="at most 128"):
        check_run_id("x" * 129)
    assert check_partition_value("dataset", "ünï") == "ünï"


# ----------------------------------------------------------------------------- schema versions
def _old_file(store: ArtifactStore, table, dataset: str, run_id: str, dropped: list[str]) -> None:
    """A file as an older version wrote it: without ``dropped`` columns (and with its partition in the path)."""
    path = write_table_rows(store, table, dataset, run_id)
    t = pq.read_table(io.BytesIO(store.read_bytes(path)))
    buf = io.BytesIO()
    pq.write_table(t.drop_columns(dropped), buf)
    store.write_bytes(path, buf.getvalue())


@pytest.mark.parametrize("old_run", ["0000-old", "9999-old"], ids=["old-file-first", "old-file-last"])
def test_files_without_the_newer_columns_read_with_nulls(tmp_path, old_run):
    new_columns = ["train_fingerprint", "test_fingerprint", "training_revision"]
    store = ArtifactStore(tmp_path)
    _old_file(store, METRICS_TABLE, "folder", old_run, new_columns)
    write_table_rows(store, METRICS_TABLE, "folder", "5000-new", train_fingerprint="f" * 64, training_revision=2)
    uri = store.uri("tables/metrics")

    for df in (METRICS_TABLE.read(store), readers.with_pandas(uri, METRICS_TABLE.schema),
               readers.with_pyarrow(uri, METRICS_TABLE.schema).to_pandas(), readers.with_duckdb(uri)):
        df = df.set_index(df["run_id"].astype(str))
        assert set(new_columns) <= set(df.columns)
        assert df.loc["5000-new", "train_fingerprint"] == "f" * 64 and df.loc["5000-new", "training_revision"] == 2
        assert df.loc[old_run, new_columns].isna().all()
        assert df.loc[old_run, "image_auroc"] == 0.5


def test_conform_names_the_file_when_a_column_cannot_be_read():
    from mrkd_core.errors import StorageError
    from mrkd_core.partitioned import conform

    t = pa.table({"image_auroc": ["not a number"]})
    with pytest.raises(StorageError, match="somefile.*image_auroc"):
        conform(t, pa.schema([("image_auroc", pa.float64())]), "somefile")
