"""The record of ``mrkd predict``'s decisions, in the same table as the service's answers.

A quality department asks which model judged which part, when, and how, whichever door
the image came through. The HTTP service appends each answer to a store's
``tables/inspections`` (``flows.serve``); ``mrkd predict`` appends each image it scored
there too, with the same columns (:data:`mrkd_core.inspections.INSPECTIONS_SCHEMA`,
docs/storage.md):

- ``model``: the name the model is recorded (and served) under, :func:`recorded_name`;
- ``request_id``: one id per ``mrkd predict`` call (``predict-<hex>``, printed), ``image_index``
  the image's position in the call, ``received_at`` when its score was computed;
- ``filename``: the image's path as given; ``image_sha256``: of its bytes;
- ``latency_ms``: null (a batch answers no request).

An unreadable file that ``--skip-unreadable`` skipped is no decision and is not recorded.
The call's own ``predictions.parquet`` holds the same decisions with the same audit columns
(``PREDICTIONS_SCHEMA``), so a call without a record store (a plain model file) still says
which model decided what, on which bytes, when.
"""

from __future__ import annotations

import posixpath
import uuid
from collections.abc import Sequence

from mrkd_core.errors import StorageError
from mrkd_core.inference.predict import Prediction
from mrkd_core.inspections import (
    INSPECTIONS_TABLE,
    NO_RECORD,
    file_name,
    inspection_row,
    new_writer_id,
    record_location,
)
from mrkd_core.registry.reference import parse_reference
from mrkd_core.storage import ArtifactStore

def recorded_name(location: str) -> str:
    """The name a model's decisions are recorded (and its service is served) under, when none is given.

    A registry reference: its category; a ``model.pt`` in the store layout
    ``runs/<run>/<dataset>/<category>/<hash>/model.pt``: that category; any other file: its
    stem (``/parts/bracket.onnx`` → ``bracket``).
    """
    ref = parse_reference(location)
    if ref is not None:
        return ref.key.category
    path = location.rstrip("/")
    stem = posixpath.splitext(posixpath.basename(path))[0]
    parts = path.split("/")
    if stem == "model" and len(parts) >= 6 and parts[-6] == "runs":  # runs/<run>/<dataset>/<category>/<hash>/model.pt
        return parts[-3]
    return stem


def record_store(record: str | None, model: str) -> str | None:
    """Where ``mrkd predict`` records its decisions: ``--record`` (``none``: nowhere), else the
    store of a registry reference ``model``, else nowhere (the call's predictions.parquet is its record)."""
    if record is not None:
        return record_location(record)
    ref = parse_reference(model)
    return ref.store if ref is not None else None


def new_request_id() -> str:
    """One id per ``mrkd predict`` call (the service's ids are Serve's request ids)."""
    return f"predict-{uuid.uuid4().hex}"


def inspection_rows(name: str, request_id: str, predictions: Sequence[Prediction]) -> list[dict]:
    """The ``INSPECTIONS_SCHEMA`` rows of the scored ``predictions`` (skipped files left out)."""
    rows = []
    for index, p in enumerate(predictions):
        if p.error is not None:
            continue
        rows.append(inspection_row(name, request_id, index, p.predicted_at, filename=p.path,
                                   image_sha256=p.image_sha256, width=p.width, height=p.height,
                                   model_version=p.model_version, model_source=p.model_source, engine=p.engine,
                                   score=p.score, normalized_score=p.normalized_score, verdict=p.verdict,
                                   threshold=p.threshold, defect_area_fraction=p.defect_area_fraction,
                                   latency_ms=None))
    return rows


def record_predictions(store: ArtifactStore, name: str, request_id: str, predictions: Sequence[Prediction]) -> int:
    """Append the decisions of one ``mrkd predict`` call to ``store``'s ``tables/inspections``.

    One new file per partition (UTC date), named as the service's recorder names its files
    (:func:`mrkd_core.inspections.file_name`); nothing stored before is touched. Returns the
    rows written. Raises ``StorageError`` naming the table and the fix when the store does not
    take them.
    """
    rows = inspection_rows(name, request_id, predictions)
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["date"], []).append(row)
    writer, written = new_writer_id(), 0
    for sequence, group in enumerate(groups.values(), start=1):
        try:
            INSPECTIONS_TABLE.write(store, group, file_name(group[0]["received_at"], writer, sequence), None)
        except Exception as exc:  # noqa: BLE001 - any store failure is this one line
            raise StorageError(
                f"{store.uri('tables/inspections')}: {len(rows) - written} of {len(rows)} decisions of {request_id} "
                f"not recorded ({type(exc).__name__}: {exc}) — the call's predictions.parquet holds them; make the "
                f"store writable and predict again, or pass --record {NO_RECORD}") from None
        written += len(group)
    return written


__all__ = ["inspection_rows", "new_request_id", "record_predictions", "record_store", "recorded_name"]
