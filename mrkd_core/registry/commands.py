"""``mrkd models list|promote|rollback``: the registry verbs of the ``models`` command group.

Registered on the group that ``mrkd_core.cli.build_parser`` creates (``add_models_group``),
beside the other verbs of that group. Errors follow the CLI's rule: one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mrkd_core.console import out as _out
from mrkd_core.errors import MRKDError

if TYPE_CHECKING:  # the registry is imported when a verb runs, so that building the parser stays fast
    from mrkd_core.storage import ArtifactStore

REFERENCE_SEPARATOR = "@"  # mrkd_core.registry.records.REFERENCE_SEPARATOR
StoreRoot = Callable[[str | None, str], str]  # (option value, option name) → store root (cli._store_root)



def _pct(value: Any) -> str:
    return "-" if value is None else f"{100.0 * float(value):.1f}"


def registry_listing(store: ArtifactStore, name: str | None = None) -> list[dict[str, Any]]:
    """Every registered model of the store: entry, reference, champion, aliases and versions (JSON-safe)."""
    from mrkd_core.registry.records import list_entries, read_index

    out = []
    for key in list_entries(store, name):
        model = read_index(store, key)
        by_version: dict[int, list[str]] = {}
        for alias, version in model.aliases.items():
            by_version.setdefault(version, []).append(alias)
        out.append({"model_name": key.name, "dataset": key.dataset, "category": key.category,
                    "reference": f"{store.uri(key.path)}", "champion": model.champion, "aliases": model.aliases,
                    "versions": [{**v, "aliases": by_version.get(v["version"], [])} for v in model.versions]})
    return out


def _table(listing: list[dict[str, Any]]) -> list[str]:
    header = ("MODEL", "DATASET", "CATEGORY", "VERSION", "ALIASES", "RUN", "DECISION", "IMAGE AU-ROC",
              "PIXEL AU-ROC", "REGISTERED")
    rows = [header]
    for entry in listing:
        for v in entry["versions"]:
            rows.append((entry["model_name"], entry["dataset"], entry["category"], str(v["version"]),
                         ",".join(v["aliases"]) or "-", v["run_id"], v.get("decision") or "-",
                         _pct(v["metrics"].get("image_auroc")), _pct(v["metrics"].get("pixel_auroc")),
                         str(v["registered_at"])[:19]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def cmd_models_list(args: argparse.Namespace, store_root: StoreRoot) -> int:
    from mrkd_core.storage import ArtifactStore

    store = ArtifactStore(store_root(args.store, "--store"))
    listing = registry_listing(store, args.name)
    if args.json:
        _out(json.dumps(listing, indent=2, default=str))
        return 0
    if not listing:
        _out(f"{store.uri()}: no registered models (a flow run registers its results as <spec>-<variant>; "
             "`mrkd train --register NAME` does for the CLI)")
        return 0
    for line in _table(listing):
        _out(line)
    first = listing[0]
    _out(f"\nscore images with a version: mrkd predict {first['reference']}{REFERENCE_SEPARATOR}champion IMAGES "
         f"(or {REFERENCE_SEPARATOR}latest, {REFERENCE_SEPARATOR}<version>)")
    return 0


def _entry(text: str) -> tuple[ArtifactStore, Any]:
    from mrkd_core.registry.reference import parse_entry
    from mrkd_core.storage import ArtifactStore

    found = parse_entry(text)
    if found is None:
        raise MRKDError(f"{text!r}: not a registered model — write <store>/models/<name>/<dataset>/<category>"
                        f"{REFERENCE_SEPARATOR}<version> (`mrkd models list` shows them)")
    root, key = found
    return ArtifactStore(root), key


def cmd_models_promote(args: argparse.Namespace) -> int:
    from mrkd_core.registry.promotion import promote_version
    from mrkd_core.registry.records import read_index
    from mrkd_core.registry.reference import parse_reference

    ref = parse_reference(args.reference)
    if ref is None:
        raise MRKDError(f"{args.reference!r}: name the version to promote, e.g. <store>/models/<name>/<dataset>/"
                        f"<category>{REFERENCE_SEPARATOR}3")
    store, key = _entry(args.reference)
    version = read_index(store, key).resolve(ref.selector)
    _out(json.dumps(promote_version(store, key, version, args.reason), indent=2))
    return 0


def cmd_models_rollback(args: argparse.Namespace) -> int:
    from mrkd_core.registry.promotion import rollback

    store, key = _entry(args.reference)
    _out(json.dumps(rollback(store, key, args.reason), indent=2))
    return 0


def add_registry_commands(models: argparse._SubParsersAction, store_root: StoreRoot) -> None:
    """Register ``list``, ``promote`` and ``rollback`` on the ``mrkd models`` group."""
    p = models.add_parser("list", help="registered models: versions, aliases (champion) and their metrics",
                          description="List the registered models of a store: every version with its run, "
                                      "promotion decision and metrics, and which one is the champion.")
    p.add_argument("--store", "-s", help="artifact store (folder or s3://bucket/prefix; default: MRKD_STORE)")
    p.add_argument("--name", help="only this model name")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=lambda args: cmd_models_list(args, store_root))

    p = models.add_parser("promote", help="make a version the champion (a person's decision, recorded)",
                          description="Point the champion alias at a version, without the metric check of the "
                                      "nightly; recorded as a row of the promotions table.")
    p.add_argument("reference", metavar="REF@VERSION",
                   help=f"<store>/models/<name>/<dataset>/<category>{REFERENCE_SEPARATOR}<version>")
    p.add_argument("--reason", help="why (stored with the decision)")
    p.set_defaults(func=cmd_models_promote)

    p = models.add_parser("rollback", help="make the previous champion the champion again (recorded)")
    p.add_argument("reference", metavar="REF", help="<store>/models/<name>/<dataset>/<category>")
    p.add_argument("--reason", help="why (stored with the decision)")
    p.set_defaults(func=cmd_models_rollback)


__all__ = ["add_registry_commands", "registry_listing"]
