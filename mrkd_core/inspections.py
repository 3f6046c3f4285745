"""The record of every decision: one row per image the HTTP service answered or ``mrkd predict``
scored, append-only.

A quality department asks which model judged which part, when, and how; the service
(``mrkd serve``) appends each answer here, and ``mrkd predict`` each image it scored
(``mrkd_core.inference.record``). The table is partitioned like the others
(:mod:`mrkd_core.partitioned`: folders named by the percent-encoded values, the values
stored as strings in each file, so every reader gets them as written)::

    tables/inspections/<served name>/<UTC yyyy-mm-dd>/<HHMMSSffffff>-<writer>-<seq>.parquet

Files are only ever added: each flush of a writer (one service process or replica) writes
the rows it buffered as one new file per partition, named by the time of its first row,
the writer's random id and a sequence number, so two writers never write the same name
and nothing stored is rewritten. :class:`InspectionRecorder` flushes every
``flush_seconds`` (5 by default) and when it is closed, so a writer killed without warning
loses at most the rows of its last ``flush_seconds``; a flush that fails (store down)
keeps its rows for the next one. Readers: :func:`read_inspections`, or pandas, pyarrow and
DuckDB in one plain call, as for the other tables (docs/storage.md).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from mrkd_core.partitioned import PartitionedTable
from mrkd_core.storage import ArtifactStore

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

FLUSH_SECONDS = 5.0
NO_RECORD = "none"  # ``--record none`` of mrkd serve and mrkd predict: no record
PARTITION_COLUMNS = ("model", "date")

INSPECTIONS_SCHEMA = pa.schema([
    pa.field("model", pa.string()),          # the served name (partition)
    pa.field("date", pa.string()),           # UTC date of received_at, yyyy-mm-dd (partition)
    pa.field("request_id", pa.string()),     # one per HTTP request (the answer's request_id)
    pa.field("image_index", pa.int32()),     # the image's position in its request (0 for a single image)
    pa.field("received_at", pa.timestamp("us", tz="UTC")),
    pa.field("filename", pa.string()),       # the multipart part's file name; null for a bare body
    pa.field("image_sha256", pa.string()),   # of the bytes received
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("model_version", pa.int64()),   # the registry version that answered; null for a model file
    pa.field("model_source", pa.string()),   # the model file (URI) that answered
    pa.field("engine", pa.string()),         # pytorch, onnxruntime or openvino
    pa.field("score", pa.float64()),         # Eq. 6, raw
    pa.field("normalized_score", pa.float64()),
    pa.field("verdict", pa.string()),        # good / defective; null when the model is uncalibrated
    pa.field("threshold", pa.float64()),
    pa.field("defect_area_fraction", pa.float64()),
    pa.field("latency_ms", pa.float64()),    # from the request's arrival to this image's answer
])
INSPECTIONS_TABLE = PartitionedTable("inspections", INSPECTIONS_SCHEMA, PARTITION_COLUMNS)


def inspection_row(model: str, request_id: str, image_index: int, received_at: datetime,
                   **decision: Any) -> dict[str, Any]:
    """One row of ``INSPECTIONS_SCHEMA``, whichever writer: the partition values derived here (``date``:
    the UTC date of ``received_at``) and the decision's columns as given (``filename`` …
    ``latency_ms``; ``to_table`` refuses a row that lacks one)."""
    return {"model": model, "date": received_at.strftime("%Y-%m-%d"), "request_id": request_id,
            "image_index": image_index, "received_at": received_at, **decision}


def record_location(value: str) -> str | None:
    """A ``--record URI|none`` value (mrkd serve, mrkd predict): the store, or None for ``none``."""
    return None if value.strip().lower() == NO_RECORD else value


def file_name(first_received_at: datetime, writer: str, sequence: int) -> str:
    """A new file of the table: the time of its first row, the writer's id, the writer's sequence
    number (two writers never pick the same name; a writer never picks one twice)."""
    return f"{first_received_at:%H%M%S%f}-{writer}-{sequence:06d}.parquet"


def new_writer_id() -> str:
    return uuid.uuid4().hex[:12]


class InspectionRecorder:
    """Buffers rows of ``INSPECTIONS_SCHEMA`` and appends them to ``store``'s table.

    A background thread flushes every ``flush_seconds``; :meth:`close` stops it and
    flushes what is left. Thread-safe: :meth:`add` may be called from any thread.
    """

    def __init__(self, store: ArtifactStore, flush_seconds: float = FLUSH_SECONDS):
        if not flush_seconds > 0:
            raise ValueError(f"flush_seconds {flush_seconds} must be positive")
        self.store = store
        self.flush_seconds = float(flush_seconds)
        self.writer = new_writer_id()
        self._rows: list[dict[str, Any]] = []
        self._writing = 0  # rows taken by a flush and not yet written
        self._sequence = 0
        self._lock = threading.Lock()        # guards _rows
        self._flushing = threading.Lock()    # one flush at a time (the thread, close)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="inspections-flush", daemon=True)
        self._thread.start()

    def add(self, rows: Iterable[Mapping[str, Any]]) -> None:
        new = [dict(r) for r in rows]
        with self._lock:
            self._rows.extend(new)

    @property
    def pending(self) -> int:
        """Rows added and not written yet."""
        with self._lock:
            return len(self._rows) + self._writing

    def flush(self) -> int:
        """Write the buffered rows (one file per partition); returns how many were written.

        Rows of a partition whose write fails go back to the buffer, with a warning, and are
        tried again at the next flush.
        """
        with self._flushing:
            with self._lock:
                rows, self._rows = self._rows, []
                self._writing = len(rows)
            if not rows:
                return 0
            groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
            for row in rows:
                groups.setdefault(tuple(row[c] for c in PARTITION_COLUMNS), []).append(row)
            written = 0
            for part, group in groups.items():
                self._sequence += 1
                name = file_name(group[0]["received_at"], self.writer, self._sequence)
                try:
                    INSPECTIONS_TABLE.write(self.store, group, name, None)
                except Exception as exc:  # noqa: BLE001 - any store failure: keep the rows, try again
                    log.warning("inspections %s: %d rows not written yet (%s); retrying in %.0f s",
                                "/".join(part), len(group), exc, self.flush_seconds)
                    with self._lock:
                        self._rows[:0] = group
                        self._writing -= len(group)
                    continue
                written += len(group)
                with self._lock:
                    self._writing -= len(group)
            return written

    def close(self) -> int:
        """Stop the flushing thread and write what is left; returns the rows written now."""
        self._stop.set()
        self._thread.join(timeout=self.flush_seconds + 60)
        return self.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            self.flush()


def read_inspections(store: ArtifactStore, model: str | None = None, date: str | None = None) -> pd.DataFrame:
    """Every recorded answer (of one served ``model``, one UTC ``date``), oldest first."""
    df = INSPECTIONS_TABLE.read(store, model=model, date=date)
    return df.sort_values(["received_at", "request_id", "image_index"], kind="stable").reset_index(drop=True)


__all__ = ["FLUSH_SECONDS", "INSPECTIONS_SCHEMA", "INSPECTIONS_TABLE", "NO_RECORD", "InspectionRecorder", "file_name",
           "inspection_row", "new_writer_id", "read_inspections", "record_location"]
