"""Where a registered model lives in the store, and the records that make it.

A registered model is one (model name, dataset, category): the name a team gives the
models of one purpose (default ``<spec>-<variant>``, e.g. ``mvtec-full-mrkd``), for one
category of one dataset. Everything of it lives under one folder::

    models/<name>/<dataset>/<category>/model.json            the index (versions, aliases): the commit point
    models/<name>/<dataset>/<category>/versions/<N>.json      one record per version, written once
    models/<name>/<dataset>/<category>/evaluations/<N>/<test fingerprint>.json
                                                              version N re-evaluated on other test data
    claims/models/<name>/<dataset>/<category>.json           while a process changes the entry

Versions are numbered 1, 2, … per entry. A version points at a complete run directory
(``runs/<run_id>/<dataset>/<category>/<config_hash>/``): its ``model.pt`` is the model,
nothing is copied. The ``champion`` alias names the version in use; every change of an
alias is kept in the index's ``alias_history`` (what ``rollback`` walks back).

Every change of an entry happens while holding the entry's claim (``mrkd_core.claims``,
the same mechanism as a training key's): a version record is written first, then the
index, atomically (one object), so readers always see a consistent entry and two tasks —
on one machine or on S3 from several Ray nodes — never hand out the same number.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from mrkd_core.claims import KeyClaim
from mrkd_core.errors import ConfigError, MRKDError, StorageError
from mrkd_core.partitioned import check_partition_value
from mrkd_core.results import MANIFEST, utcnow
from mrkd_core.storage import ArtifactStore

log = logging.getLogger(__name__)

MODELS = "models"
INDEX = "model.json"
INDEX_FORMAT = "mrkd-registered-model/1"
VERSION_FORMAT = "mrkd-model-version/1"
CHAMPION = "champion"
LATEST = "latest"
REFERENCE_SEPARATOR = "@"  # <store>/models/<name>/<dataset>/<category>@<champion|latest|N>


def check_model_name(name: Any) -> str:
    """``name`` if it can name a registered model (a folder, and no ``@``); else a ``ConfigError``."""
    check_partition_value("model name", name)
    if REFERENCE_SEPARATOR in name:
        raise ConfigError(f"model name {name!r}: must not contain '@' (it separates a model from its version)")
    return name


@dataclass(frozen=True)
class EntryKey:
    """(model name, dataset, category): one registered model."""

    name: str
    dataset: str
    category: str

    def __post_init__(self) -> None:
        check_model_name(self.name)
        check_partition_value("dataset", self.dataset)
        check_partition_value("category", self.category)

    @property
    def path(self) -> str:
        """``models/<name>/<dataset>/<category>`` (relative to the store)."""
        return f"{MODELS}/{self.name}/{self.dataset}/{self.category}"

    def __str__(self) -> str:
        return f"{self.name}/{self.dataset}/{self.category}"

    def version_path(self, version: int) -> str:
        return f"{self.path}/versions/{version}.json"

    def evaluation_path(self, version: int, test_fingerprint: str) -> str:
        return f"{self.path}/evaluations/{version}/{test_fingerprint}.json"


@dataclass
class RegisteredModel:
    """The index of one entry (``model.json``): its versions in order, aliases and their history.

    ``versions`` holds one summary per version (``version``, ``run_id``, ``run_dir``,
    ``config_hash``, ``variant``, ``registered_at``, ``decision``, ``metrics``); the full
    record is ``versions/<N>.json``. ``aliases`` maps an alias (``champion``) to a version.
    """

    key: EntryKey
    versions: list[dict[str, Any]] = field(default_factory=list)
    aliases: dict[str, int] = field(default_factory=dict)
    alias_history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def champion(self) -> int | None:
        return self.aliases.get(CHAMPION)

    @property
    def next_version(self) -> int:
        return max((v["version"] for v in self.versions), default=0) + 1

    def summary(self, version: int) -> dict[str, Any] | None:
        return next((v for v in self.versions if v["version"] == version), None)

    def version_of_run_dir(self, run_dir: str) -> int | None:
        """The version registered for ``run_dir`` (a retried or skipped task finds its own), else None."""
        return next((v["version"] for v in self.versions if v["run_dir"] == run_dir), None)

    def resolve(self, selector: str) -> int:
        """``champion``, ``latest`` or a version number → the version; ``MRKDError`` naming what exists."""
        known = ", ".join(str(v["version"]) for v in self.versions) or "none"
        if selector == CHAMPION:
            if self.champion is None:
                raise MRKDError(f"registered model {self.key} has no champion yet (versions: {known})")
            return self.champion
        if selector == LATEST:
            if not self.versions:
                raise MRKDError(f"registered model {self.key} has no versions")
            return self.versions[-1]["version"]
        if selector.isdigit() and self.summary(int(selector)) is not None:
            return int(selector)
        raise MRKDError(f"registered model {self.key}: no version {selector!r} — use @champion, @latest or one of "
                        f"the versions {known}")

    def set_alias(self, alias: str, version: int, decision: str, run_id: str, by: str) -> None:
        """Point ``alias`` at ``version`` and record the change (with the version it replaced)."""
        self.alias_history.append({"alias": alias, "version": version, "previous": self.aliases.get(alias),
                                   "decision": decision, "run_id": run_id, "by": by,
                                   "at": utcnow().isoformat()})
        self.aliases[alias] = version

    def rollback_target(self) -> int:
        """The champion before the current one was made champion (undoing rollbacks like a stack).

        Walking the champion's history backwards, each rollback cancels the change before
        it; the first change not cancelled made the current champion, and the version it
        replaced is the target. ``MRKDError`` when there is none (the first champion).
        """
        cancelled = 0
        for change in reversed([c for c in self.alias_history if c["alias"] == CHAMPION]):
            if change["decision"] == "rollback":
                cancelled += 1
            elif cancelled:
                cancelled -= 1
            elif change["previous"] is None:
                break
            else:
                return int(change["previous"])
        raise MRKDError(f"registered model {self.key}: version {self.champion} is the first champion; there is "
                        "nothing to roll back to (promote a version instead: mrkd models promote REF@N)")

    def to_dict(self) -> dict[str, Any]:
        return {"format": INDEX_FORMAT, "name": self.key.name, "dataset": self.key.dataset,
                "category": self.key.category, "versions": self.versions, "aliases": self.aliases,
                "alias_history": self.alias_history, "updated_at": utcnow().isoformat()}


# --------------------------------------------------------------------------- reading and writing
def read_index(store: ArtifactStore, key: EntryKey) -> RegisteredModel:
    """The entry's index; an empty one when nothing is registered yet. ``StorageError`` if unreadable."""
    rel = f"{key.path}/{INDEX}"
    if not store.exists(rel):
        return RegisteredModel(key)
    data = store.read_json(rel)
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT:
        raise StorageError(f"{store.uri(rel)}: not an {INDEX_FORMAT} index — move it away, or restore it from "
                           f"the versions/ records next to it")
    return RegisteredModel(key, list(data.get("versions") or []),
                           {k: int(v) for k, v in (data.get("aliases") or {}).items()},
                           list(data.get("alias_history") or []))


def write_index(store: ArtifactStore, model: RegisteredModel) -> None:
    """Commit the entry (one atomic object): call while holding :func:`entry_claim`."""
    store.write_json(f"{model.key.path}/{INDEX}", model.to_dict())


def read_version(store: ArtifactStore, key: EntryKey, version: int) -> dict[str, Any]:
    """The record ``versions/<N>.json`` of ``key``; ``StorageError`` when it is missing or not one."""
    rel = key.version_path(version)
    try:
        record = store.read_json(rel)
    except FileNotFoundError:
        raise StorageError(f"{store.uri(rel)}: the record of version {version} of {key} is missing") from None
    if not isinstance(record, dict) or record.get("format") != VERSION_FORMAT:
        raise StorageError(f"{store.uri(rel)}: not an {VERSION_FORMAT} record")
    return record


def write_version(store: ArtifactStore, key: EntryKey, record: dict[str, Any]) -> None:
    """Write a version record (written once, before the index names it; docs/storage.md)."""
    store.write_json(key.version_path(int(record["version"])), {"format": VERSION_FORMAT, **record})


def version_files(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """What a version records of its run directory's files: name → ``{"size", "sha256"}``, from the manifest."""
    return {name: {"size": meta["size"], "sha256": meta["sha256"]}
            for name, meta in sorted((manifest.get("files") or {}).items())}


def verify_version(store: ArtifactStore, key: EntryKey, record: dict[str, Any]) -> None:
    """Check that version ``record`` of ``key`` still points at the files it was registered with.

    Every file the record lists (``files``: the run directory's manifest entries at
    registration) must have its size and sha256; a record of before file hashes is checked
    against its run directory's manifest, which must still name the training data it was
    registered with. Called before a version is served (:mod:`mrkd_core.registry.reference`),
    promoted or rolled back to (:mod:`mrkd_core.registry.promotion`), and before a reused
    result is registered. Raises ``StorageError``, one line naming the file and the fix.
    Reads every listed file (a WRN50 ``model.pt`` is ~0.5 GB).
    """
    run_dir, version = record["run_dir"], record["version"]
    what = f"version {version} of {key}"
    fix = ("restore it from a backup of the store, or serve another version (`mrkd models list` shows them, "
           "`mrkd models promote REF@N` makes one the champion)")
    files = record.get("files")
    if files is None:  # registered before versions recorded their files: the manifest must still be theirs
        rel = f"{run_dir}/{MANIFEST}"
        if not store.exists(rel):
            raise StorageError(f"{store.uri(rel)}: the run directory of {what} has no manifest any more — {fix}")
        manifest = store.read_json(rel)
        if manifest.get("train_fingerprint") != record.get("train_fingerprint"):
            raise StorageError(f"{store.uri(rel)}: the run directory of {what} was rewritten (training data "
                               f"{str(manifest.get('train_fingerprint'))[:12]}…, registered with "
                               f"{str(record.get('train_fingerprint'))[:12]}…) — {fix}")
        files = version_files(manifest)
    for name, meta in sorted(files.items()):
        path = f"{run_dir}/{name}"
        try:
            data = store.read_bytes(path)
        except FileNotFoundError:
            raise StorageError(f"{store.uri(path)}: missing, but {what} was registered with it — {fix}") from None
        digest = hashlib.sha256(data).hexdigest()
        if len(data) != meta["size"] or digest != meta["sha256"]:
            raise StorageError(f"{store.uri(path)}: sha256 {digest[:12]}… differs from the {meta['sha256'][:12]}… "
                               f"{what} was registered with (the file changed since) — {fix}")


def list_entries(store: ArtifactStore, name: str | None = None) -> list[EntryKey]:
    """Every registered model in the store (with a ``model.json``), optionally of one name; sorted."""
    found = []
    prefix = f"{MODELS}/"
    root = f"{MODELS}/{check_model_name(name)}" if name else MODELS
    for path in store.list(root, recursive=True):
        parts = path[len(prefix):].split("/") if path.startswith(prefix) else []
        if len(parts) == 4 and parts[3] == INDEX:
            found.append(EntryKey(*parts[:3]))
    return sorted(found, key=lambda k: (k.name, k.dataset, k.category))


@contextmanager
def entry_claim(store: ArtifactStore, key: EntryKey, run_id: str) -> Iterator[KeyClaim]:
    """Hold the entry's claim (``claims/models/<name>/<dataset>/<category>.json``) while changing it.

    The claim is the same one-owner-with-heartbeat object a training key uses: a second
    process waits, a dead owner's claim is taken over. Entries of different names or
    categories never wait for each other.
    """
    with KeyClaim(store, key.path, run_id) as claim:
        yield claim


__all__ = ["CHAMPION", "EntryKey", "INDEX", "LATEST", "MODELS", "REFERENCE_SEPARATOR",
           "RegisteredModel", "check_model_name", "entry_claim", "list_entries", "read_index", "read_version",
           "verify_version", "version_files", "write_index", "write_version"]
