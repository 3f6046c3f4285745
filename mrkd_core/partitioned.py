"""Partitioned Parquet tables in the store: one way to write and read them all.

``tables/<name>/<dataset>/<run_id>/<file>.parquet`` is what pandas, pyarrow.dataset and
DuckDB read in one plain call (``pandas.read_parquet("<store>/tables/metrics")``). Three
things make such a folder treacherous, and this module handles them for every
partitioned table (``metrics``, ``scores``, the registry's ``promotions`` and
``history``, and any later one):

* **Partition values are strings, and readers type what a path says.** A hive folder
  ``run_id=0001`` is read as the integer 1 by every reader that infers partition types
  (pandas' and pyarrow's defaults, DuckDB's ``hive_types_autocast``), so
  ``df[df.run_id == "0001"]`` selected nothing. So the partition columns are stored
  *in each file*, as strings, and the folders are named by the bare values, without
  ``=``: no reader takes them for partitions, and every reader gets the strings written.
  Folder names are percent-encoded (``urllib.parse.quote``, plus a leading ``.`` or
  ``_``, which pandas and pyarrow would skip), so spaces, ``=``, ``%`` and any Unicode
  survive the path.
* **Stores written before this layout** have hive folders (``<col>=<value>``, the
  partition columns only in the path). They stay readable (:meth:`PartitionedTable.read`
  reads both layouts; the calls in docs/storage.md that pass the table's schema read
  them as strings), and a table that has hive folders is appended to in the hive layout:
  one table never mixes the two, which DuckDB refuses and plain pandas would type wrongly.
* **Files are written once.** Rows that record a run's result (``metrics``, ``scores``, a
  run's promotion decision) go to a file named by the task, written once
  (:meth:`PartitionedTable.write`); rows that record events (``history``, a person's
  decisions) each get a file of their own (:meth:`PartitionedTable.append`). Nothing
  stored is replaced.
* **Files differ in schema.** A newer version adds columns; pyarrow takes a dataset's
  schema from the first file it finds. Files are never rewritten: readers of a store
  written by several versions pass the current schema (pandas/pyarrow: ``schema=``;
  DuckDB: ``union_by_name``), and :meth:`PartitionedTable.read` conforms every file to
  it — a column a file lacks is null for its rows.

Each file records the run directory its rows came from (footer key ``mrkd.run_dir``):
:meth:`PartitionedTable.read` leaves out rows whose run directory lost its manifest.
"""

from __future__ import annotations

import io
import logging
import unicodedata
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import pyarrow as pa
import pyarrow.parquet as pq

from mrkd_core.errors import ConfigError, StorageError
from mrkd_core.results import (
    MANIFEST,
    METRICS_SCHEMA,
    SCORES_SCHEMA,
    read_parquet_bytes,
    to_table,
    utcnow,
)
from mrkd_core.storage import ArtifactStore

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow.dataset as pads

log = logging.getLogger(__name__)

PARTITION_COLUMNS = ("dataset", "run_id")
# Which run directory a partition file was copied from (a skipped task's rows come from an
# earlier run): stored in the Parquet footer, so the schema stays the table's.
SOURCE_KEY = b"mrkd.run_dir"
# The column PartitionedTable.read(with_source=True) adds: SOURCE_KEY's run directory, per row.
SOURCE_COLUMN = "source_run_dir"
# The options of a DuckDB read of a table of a store written by several versions (docs/storage.md):
# the partition values of hive folders as text, and the files' columns unified by name.
DUCKDB_OPTIONS = "hive_partitioning = true, hive_types_autocast = false, union_by_name = true"

MAX_RUN_ID_CHARS = 128
# One path component on common file systems is at most 255 bytes; leave room for '<col>='.
_MAX_SEGMENT_BYTES = 240
# pyarrow reads this hive value as null.
_HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
# fsspec treats these as glob patterns in paths it expands (e.g. recursive removal).
_GLOB_CHARS = frozenset("*?[]")
# Control characters, surrogates (not UTF-8) and line/paragraph separators.
_BAD_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})


def _forbidden(c: str) -> bool:
    return c in "/\\" or c in _GLOB_CHARS or unicodedata.category(c) in _BAD_CATEGORIES


# --------------------------------------------------------------------------- values and names
def check_partition_value(column: str, value: Any) -> str:
    """``value`` if it can name a folder and a partition; else a ``ConfigError`` saying why.

    Allowed: any text of letters, digits, spaces and punctuation in any script, e.g.
    ``0001``, ``2026-11-30``, ``nightly 30 Nov``, ``essai-été``. Refused: empty text,
    leading or trailing whitespace, control characters, ``/`` and ``\\`` (path
    separators), ``*?[]`` (glob patterns), ``.`` and ``..``.
    """
    where = f"{column} {value!r}"
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: must be non-empty text")
    if value != value.strip():
        raise ConfigError(f"{where}: must not start or end with whitespace")
    if value in (".", "..", _HIVE_NULL):
        raise ConfigError(f"{where}: is reserved; choose another name")
    bad = sorted({c for c in value if _forbidden(c)})
    if bad:
        raise ConfigError(f"{where}: must not contain {''.join(repr(c) for c in bad)} "
                          f"(it names a folder; '/', '\\', '*?[]' and control characters are not allowed)")
    if len(encode_value(value).encode()) > _MAX_SEGMENT_BYTES:
        raise ConfigError(f"{where}: too long once percent-encoded (at most {_MAX_SEGMENT_BYTES} bytes)")
    return value


def check_run_id(run_id: Any) -> str:
    """A run id names ``runs/<run_id>/``, ``reports/<run_id>/`` and a partition: see :func:`check_partition_value`."""
    check_partition_value("run id", run_id)
    if len(run_id) > MAX_RUN_ID_CHARS:
        raise ConfigError(f"run id {run_id!r}: at most {MAX_RUN_ID_CHARS} characters")
    return run_id


def encode_value(value: str) -> str:
    """A partition value as a path segment: percent-encoded UTF-8, unreserved characters kept.

    Values of the old ``[A-Za-z0-9._-]`` kind are unchanged, so stores written before
    encoding read the same.
    """
    return quote(value, safe="")


def encode_folder(value: str) -> str:
    """A partition value as a folder name of the plain layout: :func:`encode_value`, and a
    leading ``.`` or ``_`` percent-encoded too (pandas and pyarrow skip such folders)."""
    segment = encode_value(value)
    return f"%{ord(segment[0]):02X}{segment[1:]}" if segment.startswith((".", "_")) else segment


def decode_value(segment: str) -> str:
    """A partition folder's value as written (percent-decoding; the inverse of the encoding on write)."""
    return unquote(segment)


def safe_file_name(name: str) -> str:
    """``name`` usable as one file name that every reader lists.

    Percent-encodes path separators, ``%``, glob and control characters, and a leading
    ``.`` or ``_``: pyarrow and pandas silently skip files whose name starts with one of
    those, so a category called ``_scratch`` would vanish from every read.
    """
    out = []
    for i, c in enumerate(name):
        if c == "%" or _forbidden(c) or (i == 0 and c in "._"):
            out.append("".join(f"%{b:02X}" for b in c.encode()))  # quote() keeps '.' and '_'
        else:
            out.append(c)
    return "".join(out)


# --------------------------------------------------------------------------- schemas
def conform(table: pa.Table, schema: pa.Schema, source: str = "") -> pa.Table:
    """``table`` with exactly ``schema``'s columns: a missing one is null, another type is cast.

    Columns the schema does not know (written by a newer version) are dropped.
    """
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table.column(field.name)
        if not column.type.equals(field.type):
            try:
                column = column.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise StorageError(f"{source or 'table'}: column {field.name!r} is {column.type}, "
                                   f"cannot be read as {field.type} ({exc})") from None
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


# --------------------------------------------------------------------------- tables
@dataclass(frozen=True)
class PartitionedTable:
    """``tables/<name>/``, partitioned by ``partition_by`` (outermost folder first).

    ``schema`` is the full schema, partition columns included (as strings): what each
    file of the plain layout holds, and what readers of several versions' files pass to
    pandas/pyarrow.
    """

    name: str
    schema: pa.Schema
    partition_by: tuple[str, ...] = PARTITION_COLUMNS

    def __post_init__(self) -> None:
        for col in self.partition_by:
            if self.schema.field(col).type != pa.string():
                raise ValueError(f"table {self.name}: partition column {col!r} must be a string column")

    @property
    def root(self) -> str:
        return f"tables/{self.name}"

    @property
    def file_schema(self) -> pa.Schema:
        """The schema without the partition columns: what a file of the hive layout holds."""
        return pa.schema([f for f in self.schema if f.name not in self.partition_by])

    def partition_dir(self, values: Mapping[str, str], hive: bool = False) -> str:
        """``tables/<name>/<encoded value>/...`` for the partition ``values``; with ``hive``,
        ``tables/<name>/<col>=<encoded value>/...`` (the layout of stores written before)."""
        checked = [(col, check_partition_value(col, values[col])) for col in self.partition_by]
        parts = [f"{col}={encode_value(v)}" if hive else encode_folder(v) for col, v in checked]
        return "/".join([self.root, *parts])

    def is_hive(self, store: ArtifactStore) -> bool:
        """Whether the store's table was started in the hive layout (it is then appended to in it)."""
        marker = f"{self.partition_by[0]}="
        return any(path.rsplit("/", 1)[-1].startswith(marker) for path in store.list(self.root))

    def write(self, store: ArtifactStore, rows: Sequence[Mapping[str, Any]], file_name: str,
              source_run_dir: str | None) -> str:
        """Store ``rows`` (all of one partition) as one file, once; returns its path.

        Files are written once and never replaced. The same ``file_name`` in the same
        partition from the same ``source_run_dir`` is the same record written again (a
        retried task, a re-run that reuses the result): nothing is written. From another
        run directory it is a ``StorageError`` (the caller records another result under
        another run id: ``layout.record_run_id``). For rows that record an event, each
        write one more, use :meth:`append`. In the plain layout, unless the table is in
        the hive layout already (:meth:`is_hive`). ``source_run_dir``: the run directory the rows
        come from (readers skip them once it loses its manifest); None for rows of no run (the
        service's ``inspections``, whose file names are unique).
        """
        values, hive = self._values(rows), self.is_hive(store)
        path = self._file(values, file_name, hive)
        held = self._held_by(store, path)
        if held is None:
            return self._store(store, rows, path, source_run_dir, hive)
        if held != (source_run_dir or ""):
            raise StorageError(f"{store.uri(path)}: holds the rows of {held or 'an unrecorded run directory'}, not "
                               f"of {source_run_dir}; table files are written once — record this result under "
                               "another run id")
        return path

    def held_by(self, store: ArtifactStore, values: Mapping[str, str], file_name: str) -> str | None:
        """The run directory whose rows the partition ``values``' file ``file_name`` holds ('' when it
        records none); None when there is no such file (what :meth:`write` would write)."""
        return self._held_by(store, self._file(values, file_name, self.is_hive(store)))

    def _file(self, values: Mapping[str, str], file_name: str, hive: bool) -> str:
        return f"{self.partition_dir(values, hive)}/{safe_file_name(file_name)}"

    @staticmethod
    def _held_by(store: ArtifactStore, path: str) -> str | None:
        if not store.exists(path):
            return None
        source = (pq.read_schema(io.BytesIO(store.read_bytes(path))).metadata or {}).get(SOURCE_KEY)
        return source.decode() if source is not None else ""

    def append(self, store: ArtifactStore, rows: Sequence[Mapping[str, Any]], stem: str, source_run_dir: str) -> str:
        """Store ``rows`` (all of one partition) as a new file ``<stem>-<UTC time>-<random>.parquet``.

        For tables whose rows record what happened (``history``, a person's ``promotions``):
        every call adds its rows, and no earlier file is touched (a re-run of a night adds
        its own rows beside the first run's).
        """
        values, hive = self._values(rows), self.is_hive(store)
        unique = f"{utcnow().strftime('%Y%m%dT%H%M%S%fZ')}-{uuid.uuid4().hex[:8]}"
        path = self._file(values, f"{stem}-{unique}.parquet", hive)
        return self._store(store, rows, path, source_run_dir, hive)

    def _values(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not rows:
            raise ValueError(f"table {self.name}: no rows to write")
        values = {col: rows[0][col] for col in self.partition_by}
        for r in rows:
            if any(r[col] != values[col] for col in self.partition_by):
                raise ValueError(f"table {self.name}: rows of several partitions in one write ({values})")
        return values

    def _store(self, store: ArtifactStore, rows: Sequence[Mapping[str, Any]], path: str, source_run_dir: str | None,
               hive: bool) -> str:
        table = to_table([dict(r) for r in rows], self.schema)
        if hive:  # pyarrow refuses a column that is both in the path and in the file
            table = table.drop_columns(list(self.partition_by))
        if source_run_dir is not None:
            table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                                   SOURCE_KEY: source_run_dir.encode()})
        buf = io.BytesIO()
        pq.write_table(table, buf)
        store.write_bytes(path, buf.getvalue())
        return path

    def _partition_values(self, rel: str) -> dict[str, str] | None:
        """The partition values of a file path below ``root`` (either layout), or None when it is not a table file."""
        parts = rel.split("/")
        if len(parts) != len(self.partition_by) + 1 or not parts[-1].endswith(".parquet"):
            return None
        if any(p.startswith((".", "_")) for p in parts):  # what pyarrow and pandas skip
            return None
        values = {}
        for col, segment in zip(self.partition_by, parts):
            key, sep, value = segment.partition("=")
            if sep and key != col:
                return None
            values[col] = decode_value(value if sep else segment)  # hive, or a plain folder (no '=' in it)
        return values

    def read(self, store: ArtifactStore, with_source: bool = False, **equals: str | None) -> pd.DataFrame:
        """Every row (with the partition values ``equals``, e.g. ``run_id="0001"``) of complete runs.

        Both layouts; the partition values come from the path (a plain folder is named by
        its value). Files of every schema version are conformed to ``schema`` (old rows get
        nulls in newer columns). A file whose source run directory has no manifest (deleted)
        is left out with a warning. With ``with_source`` the frame gains column
        ``SOURCE_COLUMN``: the run directory (store-relative) that computed each row, which
        for a result a run reused from an earlier one is the earlier run's ('' when the
        file records none).
        """
        wanted = {k: v for k, v in equals.items() if v is not None}
        unknown = set(wanted) - set(self.partition_by)
        if unknown:
            raise ValueError(f"table {self.name} is partitioned by {self.partition_by}, not {sorted(unknown)}")
        tables = []
        complete: dict[str, bool] = {}
        prefix = self.root + "/"
        for path in store.list(self.root, recursive=True):
            values = self._partition_values(path[len(prefix):]) if path.startswith(prefix) else None
            if values is None or any(values[k] != v for k, v in wanted.items()):
                continue
            table = read_parquet_bytes(store.read_bytes(path))
            source = (table.schema.metadata or {}).get(SOURCE_KEY)
            if source is not None:
                src = source.decode()
                if src not in complete:
                    complete[src] = store.exists(f"{src}/{MANIFEST}")
                if not complete[src]:
                    log.warning("%s: its run %s has no manifest; ignored", store.uri(path), store.uri(src))
                    continue
            table = conform(table, self.file_schema, store.uri(path))
            for col in self.partition_by:
                table = table.append_column(col, pa.array([values[col]] * table.num_rows, pa.string()))
            table = table.select(self.schema.names)
            if with_source:
                table = table.append_column(SOURCE_COLUMN, pa.array([source.decode() if source is not None else ""]
                                                                    * table.num_rows, pa.string()))
            tables.append(table)
        if not tables:
            empty = self.schema.empty_table()
            return (empty.append_column(SOURCE_COLUMN, pa.array([], pa.string())) if with_source else empty).to_pandas()
        return pa.concat_tables(tables).to_pandas()

    def dataset(self, path: str, filesystem: Any = None) -> pads.Dataset:
        """``pyarrow.dataset`` over ``<store>/tables/<name>`` with this schema, in either layout (docs/storage.md).

        ``path`` is a local folder or a path on ``filesystem`` (e.g. ``bucket/prefix/tables/metrics``
        with a ``pyarrow.fs.S3FileSystem``).
        """
        import pyarrow.dataset as pads

        return pads.dataset(path, schema=self.schema, format="parquet", partitioning="hive", filesystem=filesystem)


METRICS_TABLE = PartitionedTable("metrics", METRICS_SCHEMA)
SCORES_TABLE = PartitionedTable("scores", SCORES_SCHEMA)

__all__ = ["DUCKDB_OPTIONS", "METRICS_TABLE", "PARTITION_COLUMNS", "PartitionedTable", "SCORES_TABLE", "SOURCE_COLUMN",
           "SOURCE_KEY", "check_partition_value", "check_run_id", "conform", "decode_value", "encode_folder",
           "encode_value", "read_metrics", "read_run", "read_scores", "safe_file_name"]


def read_metrics(store: ArtifactStore, run_id: str | None = None, with_source: bool = False) -> pd.DataFrame:
    """All metrics rows (of one run, or all) from the partitioned tables; complete runs only.

    Files written by older versions are conformed to ``METRICS_SCHEMA`` (null in the columns added
    since). ``with_source`` adds ``SOURCE_COLUMN`` (:meth:`PartitionedTable.read`).
    """
    return METRICS_TABLE.read(store, with_source, run_id=run_id)


def read_scores(store: ArtifactStore, run_id: str | None = None) -> pd.DataFrame:
    """All per-image score rows (of one run, or all) from the partitioned tables; complete runs only."""
    return SCORES_TABLE.read(store, run_id=run_id)


TaskRow = tuple[str, str, str, str]  # (dataset, category, variant, config_hash): one task's rows of a run


def read_run(store: ArtifactStore, run_id: str,
             recorded_elsewhere: Mapping[TaskRow, str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(metrics, scores) of run ``run_id``, with the tasks it recorded under another run id taken from there.

    A run records a task's result under ``<run_id>.<n>`` when ``run_id`` already held another
    result of it (``layout.record_run_id``): ``recorded_elsewhere`` maps those tasks to the run
    id used, and their rows come from that partition instead of ``run_id``'s (what the
    flows' report of a re-run shows).
    """
    import pandas as pd

    moved = dict(recorded_elsewhere or {})
    out = []
    for read in (read_metrics, read_scores):
        frames = [read(store, run_id)]
        for rid in sorted(set(moved.values())):
            frames.append(read(store, rid))
        df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        if moved:
            keys = zip(df["dataset"], df["category"], df["variant"], df["config_hash"], df["run_id"])
            df = df[[moved.get((d, c, v, h), run_id) == rid for d, c, v, h, rid in keys]].reset_index(drop=True)
        out.append(df)
    return out[0], out[1]

