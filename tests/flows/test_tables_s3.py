"""Partitioned tables on S3 (moto server): the documented readers, plain ones included, get the strings written,
and files of an older schema read with nulls — as tests/core/test_partitioned.py on a folder.

No training here: rows are written through the same ``PartitionedTable.write`` the engine uses.
"""

from __future__ import annotations

import io
import uuid

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import s3fs

from mrkd_core.partitioned import METRICS_TABLE, SCORES_TABLE
from mrkd_core.registry.tables import HISTORY_TABLE, PROMOTIONS_TABLE
from mrkd_core.storage import ArtifactStore
from tests import readers
from tests.datagen import write_table_rows
from tests.flows.servers import S3_KEYS, make_bucket

RUN_IDS = ["0001", "0002", "nuit du 30 nov", "essai-été", "x=1 100%"]
NEW_COLUMNS = ["train_fingerprint", "test_fingerprint", "training_revision"]


@pytest.fixture
def s3_store(moto_s3, monkeypatch):
    bucket = f"tables-{uuid.uuid4().hex[:8]}"
    make_bucket(moto_s3, bucket)
    monkeypatch.setenv("MRKD_S3_ENDPOINT_URL", moto_s3)
    for k, v in S3_KEYS.items():
        monkeypatch.setenv(k, v)
    return ArtifactStore(f"s3://{bucket}/prefix"), bucket, moto_s3


def _clients(endpoint: str):
    opts = {"key": S3_KEYS["AWS_ACCESS_KEY_ID"], "secret": S3_KEYS["AWS_SECRET_ACCESS_KEY"],
            "client_kwargs": {"endpoint_url": endpoint, "region_name": S3_KEYS["AWS_REGION"]}}
    arrow_fs = pafs.S3FileSystem(endpoint_override=endpoint.split("://", 1)[1], scheme="http",
                                 access_key=S3_KEYS["AWS_ACCESS_KEY_ID"], secret_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
                                 region=S3_KEYS["AWS_REGION"])
    fsspec_fs = s3fs.S3FileSystem(skip_instance_cache=True, **opts)
    return opts, arrow_fs, fsspec_fs


@pytest.mark.parametrize("table", [METRICS_TABLE, SCORES_TABLE, PROMOTIONS_TABLE, HISTORY_TABLE], ids=lambda t: t.name)
def test_partition_values_round_trip_on_s3(s3_store, table):
    store, bucket, endpoint = s3_store
    for i, run_id in enumerate(RUN_IDS):
        write_table_rows(store, table, "123" if i < 2 else "my data", run_id)
    written = {("123" if i < 2 else "my data", r) for i, r in enumerate(RUN_IDS)}
    opts, arrow_fs, fsspec_fs = _clients(endpoint)
    uri = store.uri(table.root)

    ours = table.read(store)
    assert set(zip(ours["dataset"], ours["run_id"])) == written
    by_pandas = readers.with_pandas(uri, table.schema, storage_options=opts)
    assert set(zip(by_pandas["dataset"], by_pandas["run_id"])) == written
    assert (by_pandas["run_id"] == "0001").sum() == 1
    by_pyarrow = readers.with_pyarrow(f"{bucket}/prefix/{table.root}", table.schema, arrow_fs)
    assert set(zip(by_pyarrow.column("dataset").to_pylist(), by_pyarrow.column("run_id").to_pylist())) == written
    by_duckdb = readers.with_duckdb(uri, fsspec_fs)
    assert set(zip(by_duckdb["dataset"], by_duckdb["run_id"])) == written
    assert list(readers.with_duckdb(uri, fsspec_fs, where="WHERE run_id = '0001'")["dataset"]) == ["123"]
    # the plain calls (no schema, no options): the strings written, too
    plain = readers.plain_pandas(uri, storage_options=opts)
    assert set(zip(plain["dataset"], plain["run_id"])) == written and (plain["run_id"] == "0001").sum() == 1
    by_arrow = readers.plain_pyarrow(f"{bucket}/prefix/{table.root}", arrow_fs)
    assert set(zip(by_arrow.column("dataset").to_pylist(), by_arrow.column("run_id").to_pylist())) == written
    assert list(readers.plain_duckdb(uri, fsspec_fs, where="WHERE run_id = '0001'")["dataset"]) == ["123"]


def test_older_files_read_with_nulls_on_s3(s3_store):
    store, bucket, endpoint = s3_store
    old = write_table_rows(store, METRICS_TABLE, "folder", "0001")  # sorts first: pyarrow's schema source
    t = pq.read_table(io.BytesIO(store.read_bytes(old))).drop_columns(NEW_COLUMNS)
    buf = io.BytesIO()
    pq.write_table(t, buf)
    store.write_bytes(old, buf.getvalue())
    write_table_rows(store, METRICS_TABLE, "folder", "0002", train_fingerprint="f" * 64, training_revision=2)
    opts, arrow_fs, fsspec_fs = _clients(endpoint)
    uri = store.uri("tables/metrics")
    for df in (METRICS_TABLE.read(store), readers.with_pandas(uri, METRICS_TABLE.schema, storage_options=opts),
               readers.with_pyarrow(f"{bucket}/prefix/tables/metrics", METRICS_TABLE.schema, arrow_fs).to_pandas(),
               readers.with_duckdb(uri, fsspec_fs)):
        df = df.set_index(df["run_id"].astype(str))
        assert df.loc["0001", NEW_COLUMNS].isna().all()
        assert df.loc["0002", "train_fingerprint"] == "f" * 64
