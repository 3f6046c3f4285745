"""The reader calls docs/storage.md shows users, one function each, for local and S3 stores.

Keep these and the docs' snippets identical: the tests prove what users copy. ``plain_*``:
what an analyst types without reading the docs (no schema, no options); ``with_*``: the
calls for a store written by several versions, or before the plain layout (hive folders).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pyarrow as pa

from mrkd_core.partitioned import DUCKDB_OPTIONS


def with_pandas(uri: str, schema: pa.Schema, storage_options: dict | None = None) -> pd.DataFrame:
    # docs: pd.read_parquet(".../tables/metrics", schema=METRICS_SCHEMA, storage_options=opts)
    return pd.read_parquet(uri, schema=schema, storage_options=storage_options)


def with_pyarrow(path: str, schema: pa.Schema, filesystem: Any = None) -> pa.Table:
    # docs: ds.dataset(".../tables/metrics", filesystem=fs, schema=METRICS_SCHEMA, format="parquet", partitioning="hive")
    import pyarrow.dataset as ds

    return ds.dataset(path, filesystem=filesystem, schema=schema, format="parquet", partitioning="hive").to_table()


def with_duckdb(uri: str, filesystem: Any = None, where: str = "") -> pd.DataFrame:
    # docs: read_parquet('.../tables/metrics/**/*.parquet', hive_partitioning = true,
    #                    hive_types_autocast = false, union_by_name = true)
    import duckdb

    assert DUCKDB_OPTIONS == "hive_partitioning = true, hive_types_autocast = false, union_by_name = true"
    con = duckdb.connect()
    if filesystem is not None:
        con.register_filesystem(filesystem)
    return con.sql(f"SELECT * FROM read_parquet('{uri}/**/*.parquet', hive_partitioning = true, "
                   f"hive_types_autocast = false, union_by_name = true) {where}").df()


def plain_pandas(uri: str, storage_options: dict | None = None) -> pd.DataFrame:
    # docs: pd.read_parquet(".../tables/metrics")
    return pd.read_parquet(uri, storage_options=storage_options)


def plain_pyarrow(path: str, filesystem: Any = None) -> pa.Table:
    # docs: ds.dataset(".../tables/metrics", format="parquet").to_table()
    import pyarrow.dataset as ds

    return ds.dataset(path, filesystem=filesystem, format="parquet").to_table()


def plain_duckdb(uri: str, filesystem: Any = None, where: str = "") -> pd.DataFrame:
    # docs: SELECT * FROM read_parquet('.../tables/metrics/**/*.parquet')
    import duckdb

    con = duckdb.connect()
    if filesystem is not None:
        con.register_filesystem(filesystem)
    return con.sql(f"SELECT * FROM read_parquet('{uri}/**/*.parquet') {where}").df()
