"""From what a user gave (``mrkd serve``'s options, a RayService's ``args``) to checked :class:`ServeOptions`.

Both doors go through :func:`options_from`, so they check the same way: what is served, the
batching, the limits, the record's store, the replicas. Errors are one ``ConfigError`` line
naming the option and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flows.serve.models import ServedModel, served_models
from flows.serve.options import DEFAULTS, STORE_ENV, ServeOptions
from mrkd_core.errors import ConfigError
from mrkd_core.inspections import record_location


def _positive(name: str, value: Any, kind: type = float) -> Any:
    try:
        number = kind(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not number > 0:
        raise ConfigError(f"--{name.replace('_', '-')} {value!r}: must be a positive {kind.__name__}")
    return number


def _at_least_zero(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if not number >= 0:
        raise ConfigError(f"--{name.replace('_', '-')} {value!r}: must be a number, 0 or more")
    return number


def replica_count(value: Any) -> int | None:
    """``--replicas``: a positive number, or ``auto`` (None: autoscaling)."""
    if str(value).strip().lower() == "auto":
        return None
    return _positive("replicas", value, int)


def record_store(record: str | None, store_root: str | None, models: list[ServedModel]) -> str | None:
    """Where the ``inspections`` table goes: ``--record`` (``none``: nowhere), else the store, else the
    first registered model's store; a one-line error when none of them exists."""
    if record is not None:
        return record_location(record)
    if store_root:
        return store_root
    for model in models:
        if model.reference is not None:
            return model.reference.store
    raise ConfigError("every answer is recorded in a store's tables/inspections: pass --record URI (a folder or "
                      f"s3://bucket/prefix), --store, set {STORE_ENV}, or turn the record off with --record none")


def options_from(args: Mapping[str, Any], token_digest: str | None = None) -> ServeOptions:
    """Check and resolve the settings (keys as ``mrkd serve``'s options, underscores) into ServeOptions.

    ``models`` is the list of ``[SERVED=]MODEL_REF``; ``store`` defaults to ``MRKD_STORE``.
    Errors are one ``ConfigError`` line naming the option.
    """
    given = {k: v for k, v in args.items() if v is not None}
    values = {**DEFAULTS, **given}
    store_root = given.get("store") or os.environ.get(STORE_ENV) or None
    models = served_models(list(given.get("models") or []), store_root, given.get("engine"))
    replicas = replica_count(values["replicas"])
    # 0: with --replicas auto, as many as the Ray holds (flows.serve.command fits it to the cluster)
    max_replicas = _positive("max_replicas", given["max_replicas"], int) if "max_replicas" in given else replicas or 0
    return ServeOptions(
        models=tuple(models),
        max_batch_size=_positive("max_batch_size", values["max_batch_size"], int),
        batch_wait_ms=_at_least_zero("batch_wait_ms", values["batch_wait_ms"]),
        max_body_mb=_positive("max_body_mb", values["max_body_mb"]),
        follow_seconds=_positive("follow_seconds", values["follow_seconds"]),
        record=record_store(given.get("record"), store_root, models),
        token_digest=token_digest,
        device=str(values["device"]),
        replicas=replicas,
        max_replicas=max_replicas,
        cpus_per_replica=_at_least_zero("cpus_per_replica", values["cpus_per_replica"]),
        gpus_per_replica=_at_least_zero("gpus_per_replica", given.get("gpus_per_replica", 0.0)),
    )


__all__ = ["options_from", "record_store", "replica_count"]
