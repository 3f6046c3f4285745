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

from mrkd_core.registry.records import (MODELS, REFERENCE_SEPARATOR, EntryKey, list_entries, read_index,
                                        read_version, verify_version)
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


def expand_reference(text: str, store_root: str | None) -> str:
    """A reference written relative to a store → the full reference; anything else unchanged.

    With ``store_root`` (``mrkd serve --store``), ``<name>/<dataset>/<category>@<selector>``
    is ``<store_root>/models/<name>/<dataset>/<category>@<selector>``, and ``<name>@<selector>``
    names the one entry registered under ``name`` (an ``MRKDError`` lists the entries when
    there are several, or says none exists). Full references, paths and URIs are returned as
    they are.
    """
    from mrkd_core.errors import MRKDError

    name, sep, selector = str(text).rpartition(REFERENCE_SEPARATOR)
    if not store_root or not sep or not name or "://" in name or parse_reference(text) is not None:
        return str(text)
    parts = name.split("/")
    if len(parts) == 3:
        return f"{store_root.rstrip('/')}/{MODELS}/{name}{REFERENCE_SEPARATOR}{selector}"
    if len(parts) != 1:
        return str(text)
    store = ArtifactStore(store_root)
    entries = list_entries(store, name)
    if len(entries) != 1:
        found = ", ".join(f"{k}{REFERENCE_SEPARATOR}{selector}" for k in entries)
        raise MRKDError(f"{text}: " + (f"{name} names {len(entries)} registered models in {store.uri()}; name one: "
                                       f"{found}" if entries else
                                       f"no registered model {name!r} in {store.uri()} — `mrkd models list --store "
                                       f"{store_root}` shows them"))
    return f"{store_root.rstrip('/')}/{entries[0].path}{REFERENCE_SEPARATOR}{selector}"


def resolve_model_location(location: str) -> str:
    """A model reference → the URI of its ``model.pt``; any other location is returned as it is.

    The one call a command makes before it opens a model (``mrkd calibrate``, ``export``, ``models info``).
    """
    return resolve_model_version(location)[0]


def resolve_model_version(location: str) -> tuple[str, int | None]:
    """(the model file to open, its registry version): a reference → its version's ``model.pt`` URI
    and number; any other location → (itself, None). ``mrkd predict`` records the version."""
    ref = parse_reference(str(location))
    if ref is None:
        return str(location), None
    resolved = resolve(ref)
    log.info("%s is version %d of %s: %s", ref, resolved.version, ref.key, resolved.uri)
    return resolved.uri, resolved.version


__all__ = ["ModelReference", "ResolvedModel", "expand_reference", "parse_entry", "parse_reference", "resolve",
           "resolve_model_location", "resolve_model_version"]
