"""Model references: ``<store>/models/<name>/<dataset>/<category>@<champion|latest|N>`` → a ``model.pt`` URI.

What ``mrkd predict`` (and anything else that takes a model) accepts besides a path::

    mrkd predict s3://bucket/mrkd/models/mvtec-full-mrkd/mvtec/bottle@champion images/
    mrkd predict ./artifacts/models/mvtec-full-mrkd/mvtec/bottle@3 images/

``<store>`` is the artifact store's root (a folder or ``s3://bucket/prefix``); the part
after ``@`` names the version in use (``champion``), the newest (``latest``) or a number.
:func:`resolve_model_location` is the one function callers use: a reference is resolved
through the registry's index, and the version's files are checked against the sha256 it
was registered with before anything is served; anything else is returned unchanged.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from mrkd_core.registry.records import (
    MODELS,
    REFERENCE_SEPARATOR,
    EntryKey,
    read_index,
    read_version,
    verify_version,
)
from mrkd_core.storage import ArtifactStore

log = logging.getLogger(__name__)

_REFERENCE = re.compile(rf"^(?P<store>.+?)/{MODELS}/(?P<name>[^/@]+)/(?P<dataset>[^/@]+)/(?P<category>[^/@]+)"
                        rf"{REFERENCE_SEPARATOR}(?P<selector>[^/@]+)$")
_ENTRY = re.compile(rf"^(?P<store>.+?)/{MODELS}/(?P<name>[^/@]+)/(?P<dataset>[^/@]+)/(?P<category>[^/@]+)/?$")


@dataclass(frozen=True)
class ModelReference:
    """A parsed reference: the store root, the entry and the selector (``champion``, ``latest``, ``3``)."""

    store: str
    key: EntryKey
    selector: str

    def __str__(self) -> str:
        return f"{self.store}/{self.key.path}{REFERENCE_SEPARATOR}{self.selector}"


def parse_reference(text: str) -> ModelReference | None:
    """The reference ``text`` spells, or None when it is not one (e.g. a plain ``model.pt`` path)."""
    match = _REFERENCE.match(text.rstrip())
    if match is None:
        return None
    return ModelReference(match["store"], EntryKey(match["name"], match["dataset"], match["category"]),
                          match["selector"])


def parse_entry(text: str) -> tuple[str, EntryKey] | None:
    """``<store>/models/<name>/<dataset>/<category>`` (optionally ``@…``, ignored) → (store root, entry)."""
    ref = parse_reference(text)
    if ref is not None:
        return ref.store, ref.key
    match = _ENTRY.match(text.rstrip())
    if match is None:
        return None
    return match["store"], EntryKey(match["name"], match["dataset"], match["category"])


@dataclass(frozen=True)
class ResolvedModel:
    """A reference resolved: the version, its ``model.pt`` URI and its record."""

    reference: ModelReference
    version: int
    uri: str
    record: dict


def resolve(ref: ModelReference) -> ResolvedModel:
    """Look the reference up in its store's registry and check its files; the one resolution every server uses.

    ``MRKDError`` naming what exists when the version is not there; ``StorageError``
    naming the file when one of the version's files is missing or not the one it was
    registered with (:func:`~mrkd_core.registry.records.verify_version`): nothing is served.
    """
    from mrkd_core.errors import MRKDError

    store = ArtifactStore(ref.store)
    model = read_index(store, ref.key)
    if not model.versions:
        raise MRKDError(f"{ref}: no registered model {ref.key} in {store.uri()} — `mrkd models list --store "
                        f"{ref.store}` shows the registered models")
    version = model.resolve(ref.selector)
    record = read_version(store, ref.key, version)
    verify_version(store, ref.key, record)
    return ResolvedModel(ref, version, store.uri(record["model"]), record)


def resolve_model_location(location: str) -> str:
    """A model reference → the URI of its ``model.pt``; any other location is returned as it is.

    The one call a command makes before it opens a model (``mrkd predict``).
    """
    ref = parse_reference(str(location))
    if ref is None:
        return str(location)
    resolved = resolve(ref)
    log.info("%s is version %d of %s: %s", ref, resolved.version, ref.key, resolved.uri)
    return resolved.uri


__all__ = ["ModelReference", "ResolvedModel", "parse_entry", "parse_reference", "resolve", "resolve_model_location"]
