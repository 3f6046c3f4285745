"""The model loop's step after a result is stored: register it, decide, and write the history.

``engine.train_evaluate(..., register=RegistryOptions(...))`` calls :func:`track` for every
evaluated result, trained in this run or reused from an earlier one (the skip rule):

1. while holding the entry's claim (:func:`mrkd_core.registry.records.entry_claim`), find
   the version of this run directory, or register it as the next version;
2. for a new version, compare it with the champion on the same test data (re-evaluating
   the champion's stored model when the test data changed) and apply the promotion rule
   (:mod:`mrkd_core.registry.promotion`); the decision is a ``promotions`` row;
3. one ``history`` row for this run, appended (a re-run adds its own): the result's metrics,
   the champion's, the decision and whether the category regressed (worse than the
   champion beyond the tolerance).

A result trained by a run that did not register is never registered here (``not-registered``:
``register_models=false`` keeps the registry clean); a reused result's files are checked
before it becomes a version, and the version records them (``files``).

A reused result that is not the champion is compared again, so a nightly whose config
stays worse than the model in use keeps saying so. Returns a JSON-safe outcome that the
flows turn into their final message and artifacts.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mrkd_core.errors import ConfigError
from mrkd_core.layout import table_name
from mrkd_core.lineage import Lineage
from mrkd_core.registry.promotion import (
    AUTO,
    PromotionPolicy,
    Standing,
    decide,
    metric_values,
    promotion_row,
    standing,
    write_promotion,
)
from mrkd_core.registry.records import (
    CHAMPION,
    EntryKey,
    check_model_name,
    entry_claim,
    read_index,
    read_version,
    verify_version,
    version_files,
    write_index,
    write_version,
)
from mrkd_core.registry.tables import HISTORY_TABLE
from mrkd_core.results import ABSENT_COLUMN, MANIFEST, METRIC_COLUMNS, utcnow
from mrkd_core.specs import TRAINED
from mrkd_core.storage import ArtifactStore

if TYPE_CHECKING:
    from mrkd_core.data import Sample
    from mrkd_core.specs import Task

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "{spec}-{variant}"
# The manifest entry saying whether the run that trained a result registers its results (written by
# the engine); a result whose run did not is never registered later (``track``).
REGISTERING_RUN = "registering_run"
NOT_REGISTERED = "not-registered"  # the decision (and history row) of such a result met by a registering run


@dataclass(frozen=True)
class RegistryOptions:
    """How a run registers its results: the model name (template) and the promotion policy.

    ``model_name`` may use ``{spec}`` and ``{variant}`` (default ``{spec}-{variant}``, e.g.
    ``mvtec-full-mrkd``); the result must name a folder and contain no ``@``.
    """

    model_name: str = DEFAULT_MODEL_NAME
    policy: PromotionPolicy = field(default_factory=PromotionPolicy)

    @classmethod
    def from_parameters(cls, model_name: str | None = None,
                        tolerance: Mapping[str, float] | None = None) -> RegistryOptions:
        """From the flow's parameters (None: the defaults); ``ConfigError`` for a bad tolerance."""
        return cls(model_name or DEFAULT_MODEL_NAME, PromotionPolicy.from_mapping(tolerance))

    def name_for(self, task: Task) -> str:
        """The registered model name of ``task``; ``ConfigError`` naming the template when it cannot be used."""
        try:
            name = self.model_name.format(spec=task.spec or "", variant=task.variant)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"model name {self.model_name!r}: unknown placeholder ({exc}); use {{spec}} and "
                              "{variant}") from None
        if "{spec}" in self.model_name and not task.spec:
            raise ConfigError(f"model name {self.model_name!r}: this run has no spec; give the model a name")
        return check_model_name(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe, for Prefect parameters and Ray tasks."""
        return {"model_name": self.model_name, "tolerance": self.policy.as_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RegistryOptions:
        return cls.from_parameters(data.get("model_name"), data.get("tolerance"))


def stored_calibration(store: ArtifactStore, model_rel: str) -> dict[str, Any] | None:
    """The calibration a model file records (``state["calibration"]``: a dict), or None.

    Read from the file itself, generically: files without one (written before calibration
    existed, or never calibrated) give None.
    """
    import torch

    state = torch.load(io.BytesIO(store.read_bytes(model_rel)), map_location="cpu", weights_only=True)
    calibration = state.get("calibration") if isinstance(state, dict) else None
    return dict(calibration) if isinstance(calibration, dict) else None


def _text(value: Any) -> str | None:
    """A string column's value; None for null (pandas reads a stored null string as NaN)."""
    return value if isinstance(value, str) and value else None


def _version_record(store: ArtifactStore, task: Task, key: EntryKey, version: int, run_id: str, run_dir: str,
                    row: Mapping[str, Any], lineage: Lineage, manifest: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "model_name": key.name, "dataset": key.dataset, "category": key.category, "version": version,
        "run_id": run_id, "run_dir": run_dir, "model": f"{run_dir}/model.pt", "key": task.key,
        "variant": task.variant, "spec": task.spec, "config_hash": lineage.config_hash,
        "train_fingerprint": lineage.train_fingerprint, "test_fingerprint": lineage.test_fingerprint,
        "training_revision": lineage.training_revision,
        # recorded by versions of the engine that have one (None otherwise): part of "the same test data"
        "evaluation_revision": manifest.get("evaluation_revision"),
        "metrics": metric_values(row), "pixel_metrics_absent": _text(row.get(ABSENT_COLUMN)),
        "calibration": stored_calibration(store, f"{run_dir}/model.pt"),
        # the code that trained it (its metrics row says so; a reused result keeps its own)
        "code_version": {"mrkd_version": _text(row.get("mrkd_version")), "git_revision": _text(row.get("git_revision"))},
        "trained_in_run": manifest.get("run_id"), "registered_at": utcnow().isoformat(),
        # what it points at, checked before it is served, promoted or rolled back to (records.verify_version)
        "files": version_files(manifest),
    }


def _regression_text(version: int, found: Standing) -> str | None:
    if not found.regressed:
        return None
    assert found.comparison is not None
    return (f"v{version} worse than champion v{found.champion}: "
            + "; ".join(c.describe() for c in found.comparison.worse))


def track(store: ArtifactStore, task: Task, run_id: str, run_dir: str, row: Mapping[str, Any], lineage: Lineage,
          test_samples: Sequence[Sample], options: RegistryOptions, status: str) -> dict[str, Any]:
    """Register the result in ``run_dir`` (once), decide about a new version, append this run's history row.

    ``row`` is the result's main metrics row (the config's own fusion); ``lineage`` what
    it was computed from; ``test_samples`` the split it was evaluated on (to re-evaluate
    the champion when the champion was evaluated on other test data); ``status`` is
    ``trained`` or ``skipped``. A result trained by a run that did not register
    (``registering_run`` false in its manifest) is never registered here: its decision is
    ``not-registered`` and the reason names how to register the category (train it again
    in a run that registers). A reused result's files are checked before it is registered
    (:func:`~mrkd_core.registry.records.verify_version`). Returns ``{"model_name", "model",
    "version", "champion", "decision", "reason", "regressed", "regression",
    "champion_reevaluated"}``.
    """
    key = EntryKey(options.name_for(task), task.dataset, task.category)
    manifest = store.read_json(f"{run_dir}/{MANIFEST}")
    found = Standing(None, None, False, None)
    with entry_claim(store, key, run_id):
        model = read_index(store, key)
        version = model.version_of_run_dir(run_dir)
        if version is None and manifest.get(REGISTERING_RUN) is False:
            record = {"metrics": metric_values(row), "pixel_metrics_absent": _text(row.get(ABSENT_COLUMN))}
            outcome = NOT_REGISTERED
            reason = (f"{run_dir} was trained by run {manifest.get('run_id')}, which did not register its results "
                      "(register_models=false, or mrkd train without --register): a result is registered only by "
                      "the run that trains it — to register this category, train it again in a run that registers "
                      "(force=true; mrkd train --no-resume --register NAME)")
            log.warning("%s: not registered — %s", key, reason)
        elif version is None:
            version = model.next_version
            record = _version_record(store, task, key, version, run_id, run_dir, row, lineage, manifest)
            if status != TRAINED:  # stored earlier: its files must still be the manifest's before they are registered
                verify_version(store, key, record)
            write_version(store, key, record)  # before the index, which commits it
            found = standing(store, model, record, task, test_samples, options.policy)
            decision = decide(version, found)
            promotion = promotion_row(key, run_id, decision.decision, decision.reason, record, found.champion,
                                      decision.champion_after, found.champion_metrics, found.reevaluated,
                                      options.policy, found.comparison.compared if found.comparison else (), AUTO)
            write_promotion(store, promotion, record, manual=False)
            model.versions.append({"version": version, "run_id": run_id, "run_dir": run_dir,
                                   "config_hash": record["config_hash"], "variant": task.variant,
                                   "registered_at": record["registered_at"], "decision": decision.decision,
                                   "metrics": record["metrics"]})
            if decision.promotes:
                model.set_alias(CHAMPION, version, decision.decision, run_id, AUTO)
            write_index(store, model)
            outcome, reason = decision.decision, decision.reason
            log.info("%s v%d: %s — %s", key, version, outcome, reason)
        else:
            record = read_version(store, key, version)
            found = standing(store, model, record, task, test_samples, options.policy)
            summary = model.summary(version) or {}
            # A retry of the run that registered it reports that run's decision.
            outcome = summary.get("decision", "unchanged") if summary.get("run_id") == run_id else "unchanged"
            reason = (f"v{version} registered by run {summary.get('run_id')}; champion v{model.champion}"
                      if outcome == "unchanged" else "decided by this run before a retry")
    regression = _regression_text(version, found) if version is not None else None
    if regression:
        log.warning("%s: regression — %s", key, regression)
    history = {
        "run_id": run_id, "dataset": task.dataset, "category": task.category, "model_name": key.name,
        "variant": task.variant, "config_hash": lineage.config_hash, "spec": task.spec, "status": status,
        "run_dir": run_dir, "version": version, "champion_version": model.champion, "decision": outcome,
        "regressed": found.regressed, "regression": regression, **record["metrics"],
        ABSENT_COLUMN: record.get("pixel_metrics_absent"),
        **{f"champion_{m}": (found.champion_metrics or {}).get(m) for m in METRIC_COLUMNS},
        "tolerance": options.policy.to_json(), "train_fingerprint": lineage.train_fingerprint,
        "test_fingerprint": lineage.test_fingerprint, "training_revision": lineage.training_revision,
        "recorded_at": utcnow(),
    }
    # Appended: a re-run of the same night adds its own row beside the first run's (docs/storage.md).
    HISTORY_TABLE.append(store, [history], table_name(task).removesuffix(".parquet"), run_dir)
    return {"model_name": key.name, "model": str(key), "version": version, "champion": model.champion,
            "decision": outcome, "reason": reason, "regressed": found.regressed, "regression": regression,
            "champion_reevaluated": found.reevaluated}


__all__ = ["DEFAULT_MODEL_NAME", "NOT_REGISTERED", "REGISTERING_RUN", "RegistryOptions", "stored_calibration", "track"]
