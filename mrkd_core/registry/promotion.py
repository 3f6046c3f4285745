"""Promotion: is a new version at least as good as the champion, on the same test data?

The rule (docs/storage.md, "Promotion"): a candidate version replaces the champion only
when, on the *same test data*, none of the compared metrics is worse than the
champion's by more than its tolerance. The defaults compare image and pixel AU-ROC with a
tolerance of 0.5 percentage points each (:data:`DEFAULT_TOLERANCES`); a metric that one
side could not compute (pixel metrics of an image-labelled test set, an undefined AU-ROC)
is left out of the comparison and named in the reason. When no metric can be compared,
the champion is kept.

"The same test data" is the candidate's test split, identified by its fingerprint (and,
where recorded, the evaluation revision). The champion's recorded metrics are used when
they were measured on it; otherwise the champion's stored ``model.pt`` is evaluated on
the candidate's test split (no training) and the result is kept under
``models/<entry>/evaluations/<N>/<test fingerprint>.json`` for the next comparison.

Every decision is a row of the ``promotions`` table (:mod:`mrkd_core.registry.tables`):
automatic ones (``first``, ``promoted``, ``kept``) and a person's (``promote``,
``rollback``: :func:`promote_version`, :func:`rollback`).
"""

from __future__ import annotations

import getpass
import json
import logging
import math
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mrkd_core.config import RUNTIME_FIELDS
from mrkd_core.errors import ConfigError, MRKDError
from mrkd_core.metrics import PIXEL_METRICS
from mrkd_core.registry.records import (
    CHAMPION,
    EntryKey,
    RegisteredModel,
    entry_claim,
    read_index,
    read_version,
    verify_version,
    write_index,
)
from mrkd_core.registry.tables import PROMOTIONS_TABLE
from mrkd_core.results import METRIC_COLUMNS, utcnow
from mrkd_core.storage import ArtifactStore

if TYPE_CHECKING:
    from mrkd_core.data import Sample
    from mrkd_core.specs import Task

log = logging.getLogger(__name__)

# Percentage points a candidate may lose against the champion, per metric (the default).
DEFAULT_TOLERANCES: dict[str, float] = {"image_auroc": 0.5, "pixel_auroc": 0.5}
AUTO = "auto"  # decided_by of the decisions a run makes
_EPS = 1e-9  # float slack when a loss equals the tolerance exactly


def metric_values(row: Mapping[str, Any]) -> dict[str, float | None]:
    """The metric columns of a metrics row as floats; None where absent or undefined (NaN)."""
    out: dict[str, float | None] = {}
    for m in METRIC_COLUMNS:
        v = row.get(m)
        out[m] = None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
    return out


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.1f}"


# --------------------------------------------------------------------------- the rule
@dataclass(frozen=True)
class PromotionPolicy:
    """Which metrics are compared and how many percentage points each may drop (``tolerances``)."""

    tolerances: tuple[tuple[str, float], ...] = tuple(DEFAULT_TOLERANCES.items())

    @classmethod
    def from_mapping(cls, tolerances: Mapping[str, float] | None) -> PromotionPolicy:
        """``{"image_auroc": 0.5, ...}`` (points) → a policy; None → the defaults. ``ConfigError`` naming a bad entry."""
        if tolerances is None:
            return cls()
        if not isinstance(tolerances, Mapping) or not tolerances:
            raise ConfigError(f"tolerance {tolerances!r}: give a mapping of metric → percentage points, e.g. "
                              f"{json.dumps(DEFAULT_TOLERANCES)}")
        items = []
        for metric, points in tolerances.items():
            if metric not in METRIC_COLUMNS:
                raise ConfigError(f"tolerance: unknown metric {metric!r}; choose from {', '.join(METRIC_COLUMNS)}")
            if isinstance(points, bool) or not isinstance(points, (int, float)) or not 0 <= points < 100:
                raise ConfigError(f"tolerance of {metric}: {points!r} must be percentage points in [0, 100)")
            items.append((metric, float(points)))
        return cls(tuple(items))

    def as_dict(self) -> dict[str, float]:
        return dict(self.tolerances)

    def to_json(self) -> str:
        return json.dumps(self.as_dict())


@dataclass(frozen=True)
class MetricChange:
    """One compared metric: candidate and champion values (fractions) and the tolerance (points)."""

    metric: str
    candidate: float
    champion: float
    tolerance: float

    @property
    def delta_points(self) -> float:
        return 100.0 * (self.candidate - self.champion)

    @property
    def worse(self) -> bool:
        return -self.delta_points > self.tolerance + _EPS

    def describe(self) -> str:
        return (f"{self.metric} {_pct(self.champion)} → {_pct(self.candidate)} ({self.delta_points:+.1f} points, "
                f"tolerance {self.tolerance:g})")


@dataclass(frozen=True)
class Comparison:
    """A candidate against the champion: the metrics compared and the ones that could not be."""

    changes: tuple[MetricChange, ...]
    not_compared: tuple[tuple[str, str], ...]  # (metric, why)

    @property
    def worse(self) -> tuple[MetricChange, ...]:
        return tuple(c for c in self.changes if c.worse)

    @property
    def compared(self) -> tuple[str, ...]:
        return tuple(c.metric for c in self.changes)

    def describe(self) -> str:
        parts = [c.describe() for c in self.changes]
        parts += [f"{m} not compared ({why})" for m, why in self.not_compared]
        return "; ".join(parts)


def compare(candidate: Mapping[str, float | None], champion: Mapping[str, float | None], policy: PromotionPolicy,
            absent: str | None = None) -> Comparison:
    """Compare the policy's metrics; one that either side lacks is not compared (``absent``: why pixel metrics are)."""
    changes, skipped = [], []
    for metric, tolerance in policy.tolerances:
        c, h = candidate.get(metric), champion.get(metric)
        if c is None or h is None:
            why = f"absent: {absent}" if absent and metric in PIXEL_METRICS else "undefined for " + (
                "both" if c is None and h is None else "the candidate" if c is None else "the champion")
            skipped.append((metric, why))
        else:
            changes.append(MetricChange(metric, float(c), float(h), tolerance))
    return Comparison(tuple(changes), tuple(skipped))


# --------------------------------------------------------------------------- the champion on today's test data
def evaluate_version(store: ArtifactStore, record: Mapping[str, Any], task: Task,
                     test_samples: Sequence[Sample]) -> dict[str, float | None]:
    """Evaluate a version's stored ``model.pt`` on ``test_samples`` (no training) → metric values.

    The task's runtime settings (device, workers, evaluation batch size) are used, as for
    the candidate it is compared with.
    """
    from mrkd_core.model_io import evaluate_stored_model

    _, _, ev = evaluate_stored_model(store, record["model"], samples=lambda _record: test_samples,
                                     runtime={f: getattr(task.config, f) for f in RUNTIME_FIELDS})
    return metric_values({m: (None if m in ev.absent else ev.metrics.get(m)) for m in METRIC_COLUMNS})


def metrics_on(store: ArtifactStore, key: EntryKey, record: Mapping[str, Any], test_fingerprint: str | None,
               evaluation_revision: Any, task: Task, test_samples: Sequence[Sample]) -> tuple[dict, bool]:
    """(metrics of version ``record`` on the test data ``test_fingerprint``, whether they come from a re-evaluation).

    Its recorded metrics when it was evaluated on that data (by the same evaluation
    revision); else a stored re-evaluation; else it is evaluated now, and the result stored.
    """
    if record.get("test_fingerprint") == test_fingerprint and record.get("evaluation_revision") == evaluation_revision:
        return dict(record["metrics"]), False
    if test_fingerprint is None:
        raise MRKDError(f"{key} v{record['version']}: no test fingerprint to compare on")
    rel = key.evaluation_path(int(record["version"]), test_fingerprint)
    if store.exists(rel):
        cached = store.read_json(rel)
        if cached.get("evaluation_revision") == evaluation_revision:
            return dict(cached["metrics"]), True
    log.info("%s: re-evaluating champion v%s on today's test data (%s, was %s)", key, record["version"],
             test_fingerprint[:12], str(record.get("test_fingerprint"))[:12])
    verify_version(store, key, dict(record))  # the weights it was registered with, or a StorageError
    metrics = evaluate_version(store, record, task, test_samples)
    store.write_json(rel, {"version": record["version"], "test_fingerprint": test_fingerprint,
                           "evaluation_revision": evaluation_revision, "metrics": metrics,
                           "evaluated_at": utcnow().isoformat(), "n_test": len(test_samples)})
    return metrics, True


@dataclass(frozen=True)
class Standing:
    """A version against the entry's champion on the version's test data."""

    champion: int | None
    champion_metrics: dict[str, float | None] | None
    reevaluated: bool
    comparison: Comparison | None
    error: str | None = None  # the champion could not be evaluated (its model is gone or unreadable)

    @property
    def regressed(self) -> bool:
        return bool(self.comparison is not None and self.comparison.worse)


def standing(store: ArtifactStore, model: RegisteredModel, record: Mapping[str, Any], task: Task,
             test_samples: Sequence[Sample], policy: PromotionPolicy) -> Standing:
    """Compare version ``record`` with the champion (itself: no comparison; none: no champion yet)."""
    champ = model.champion
    if champ is None:
        return Standing(None, None, False, None)
    if champ == record["version"]:
        return Standing(champ, dict(record["metrics"]), False, None)
    champion_record = read_version(store, model.key, champ)
    try:
        metrics, reevaluated = metrics_on(store, model.key, champion_record, record.get("test_fingerprint"),
                                          record.get("evaluation_revision"), task, test_samples)
    except (MRKDError, FileNotFoundError) as exc:
        return Standing(champ, None, False, None, error=f"{type(exc).__name__}: {exc}")
    return Standing(champ, metrics, reevaluated,
                    compare(record["metrics"], metrics, policy, record.get("pixel_metrics_absent")))


@dataclass(frozen=True)
class Decision:
    """What happened to a new version: ``first``, ``promoted`` or ``kept`` (the champion stays), and why."""

    decision: str
    reason: str
    champion_after: int

    @property
    def promotes(self) -> bool:
        return self.decision in ("first", "promoted")


def decide(version: int, found: Standing) -> Decision:
    """The promotion rule applied to a new version's :class:`Standing`."""
    if found.champion is None:
        return Decision("first", f"v{version} is the first version: champion", version)
    champ = found.champion
    if found.error is not None:
        return Decision("promoted", f"champion v{champ} could not be evaluated on this test data ({found.error}); "
                                    f"v{version} replaces it", version)
    assert found.comparison is not None
    where = "on the same test data" + (" (champion re-evaluated)" if found.reevaluated else "")
    if found.comparison.worse:
        return Decision("kept", f"v{version} is worse than champion v{champ} {where} beyond the tolerance: "
                                + "; ".join(c.describe() for c in found.comparison.worse), champ)
    if not found.comparison.changes:
        return Decision("kept", f"no metric of v{version} could be compared with champion v{champ} "
                                f"({found.comparison.describe()}); champion kept", champ)
    return Decision("promoted", f"v{version} is not worse than champion v{champ} {where} beyond the tolerance: "
                                + found.comparison.describe(), version)


# --------------------------------------------------------------------------- the promotions table
def promotion_row(key: EntryKey, run_id: str, decision: str, reason: str, record: Mapping[str, Any],
                  champion_before: int | None, champion_after: int | None, champion_metrics: Mapping | None,
                  reevaluated: bool, policy: PromotionPolicy, compared: Sequence[str], decided_by: str) -> dict:
    """One ``PROMOTIONS_SCHEMA`` row."""
    return {
        "run_id": run_id, "dataset": key.dataset, "category": key.category, "model_name": key.name,
        "decision": decision, "reason": reason, "version": int(record["version"]),
        "champion_before": champion_before, "champion_after": champion_after, "variant": record.get("variant"),
        "config_hash": record.get("config_hash"),
        **{f"candidate_{m}": record["metrics"].get(m) for m in METRIC_COLUMNS},
        **{f"champion_{m}": (champion_metrics or {}).get(m) for m in METRIC_COLUMNS},
        "champion_reevaluated": reevaluated, "test_fingerprint": record.get("test_fingerprint"),
        "compared": ",".join(compared), "tolerance": policy.to_json(), "decided_by": decided_by,
        "decided_at": utcnow(),
    }


def write_promotion(store: ArtifactStore, row: Mapping[str, Any], record: Mapping[str, Any], manual: bool) -> str:
    """Store one promotions row in its run's partition; nothing stored is replaced.

    A run decides about a version once (the version is new), in a file of its own name: a
    retried task that registers the same version again (its index was never committed)
    finds that file and adds nothing. A person's decisions are appended, each a file.
    """
    name = f"{row['category']}-{row['model_name']}-v{row['version']}"
    if manual:
        return PROMOTIONS_TABLE.append(store, [row], f"{name}-{row['decision']}", record["run_dir"])
    return PROMOTIONS_TABLE.write(store, [row], f"{name}.parquet", record["run_dir"])


# --------------------------------------------------------------------------- a person's decisions
def _person() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name in a container without passwd entry
        user = "unknown"
    return f"{user}@{platform.node()}"


def _manual(store: ArtifactStore, key: EntryKey, decision: str, target: int | None, reason: str | None,
            by: str | None) -> dict[str, Any]:
    from mrkd_core.layout import resolve_run_id

    run_id = resolve_run_id(None, decision)
    with entry_claim(store, key, run_id):
        model = read_index(store, key)
        if not model.versions:
            raise MRKDError(f"no registered model {key} in {store.uri()} — `mrkd models list` shows what there is")
        before = model.champion
        if target is None and before is None:
            raise MRKDError(f"registered model {key} has no champion to roll back")
        version = model.rollback_target() if target is None else target
        if model.summary(version) is None:
            model.resolve(str(version))  # raises, naming the versions there are
        if version == before:
            return {"model": str(key), "champion": before, "changed": False}
        record = read_version(store, key, version)
        verify_version(store, key, record)  # never make a version whose files changed the champion
        champion_metrics = None
        if before is not None:
            previous = read_version(store, key, before)
            if previous.get("test_fingerprint") == record.get("test_fingerprint"):
                champion_metrics = previous["metrics"]
        verb = "promoted by hand" if decision == "promote" else "rolled back to"
        text = f"{verb} v{version} (champion was v{before})" + (f": {reason}" if reason else "")
        by = by or _person()
        row = promotion_row(key, run_id, decision, text, record, before, version, champion_metrics, False,
                            PromotionPolicy(()), (), by)
        write_promotion(store, row, record, manual=True)
        model.set_alias(CHAMPION, version, decision, run_id, by)
        write_index(store, model)
    log.info("%s: %s", key, text)
    return {"model": str(key), "champion": version, "previous": before, "changed": True, "run_id": run_id,
            "reason": text}


def promote_version(store: ArtifactStore, key: EntryKey, version: int, reason: str | None = None,
                    by: str | None = None) -> dict[str, Any]:
    """Make ``version`` the champion (a person's decision, no metric check); recorded in ``promotions``."""
    return _manual(store, key, "promote", int(version), reason, by)


def rollback(store: ArtifactStore, key: EntryKey, reason: str | None = None, by: str | None = None) -> dict[str, Any]:
    """Make the previous champion the champion again (:meth:`RegisteredModel.rollback_target`); recorded."""
    return _manual(store, key, "rollback", None, reason, by)


__all__ = ["AUTO", "Comparison", "DEFAULT_TOLERANCES", "Decision", "MetricChange", "PromotionPolicy", "Standing",
           "compare", "decide", "evaluate_version", "metric_values", "metrics_on", "promote_version",
           "promotion_row", "rollback", "standing", "write_promotion"]
