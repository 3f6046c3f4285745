"""Saving and loading trained models as self-contained files.

A model file holds the config and the *whole* state dict, teacher included, so that an
inspection engineer can score images on a machine without ImageNet weights or a
network. It contains only tensors, strings and numbers: ``torch.load(weights_only=True)``
reads it, and nothing in it can execute code.

It may also hold a calibration (``mrkd_core.inference.calibration``: thresholds, their
normalisation and how they were obtained) as a plain dict; recalibrating writes a new
file with the new one and the previous ones in ``calibration_history`` (a stored
``model.pt`` never changes: :func:`write_calibration`).

One loader (:func:`load_model_file`: the record, or the network built, loaded and placed
with a command's runtime overrides) and one "evaluate a stored model"
(:func:`evaluate_stored_model`: what ``mrkd evaluate``, the registry's champion
re-evaluation and ``mrkd calibrate`` run).
"""

from __future__ import annotations

import io
import logging
import posixpath
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from mrkd_core.config import RUNTIME_FIELDS, MRKDConfig
from mrkd_core.data.base import EvaluationProtocol, Sample
from mrkd_core.device import place_model, resolve_device
from mrkd_core.errors import ConfigError, MRKDError, StorageError, unpickle_error
from mrkd_core.evaluate import EvalResult, evaluate
from mrkd_core.model import MRKD, build_mrkd
from mrkd_core.results import MANIFEST
from mrkd_core.revision import TRAINING_REVISION, stored_revision
from mrkd_core.storage import ArtifactStore, open_uri

log = logging.getLogger(__name__)

MODEL_FORMAT = "mrkd-model/1"


@dataclass
class ModelFile:
    """A loaded model file: the network (None when only the record was read), its config,
    calibration (a dict, None when uncalibrated) and what else the file records."""

    model: MRKD | None
    config: MRKDConfig
    calibration: dict[str, Any] | None
    extra: dict[str, Any] = field(default_factory=dict)
    training_revision: int = TRAINING_REVISION
    calibration_history: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""


def _state_bytes(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def model_bytes(model: MRKD, cfg: MRKDConfig, extra: dict | None = None,
                calibration: dict | None = None) -> bytes:
    """The model file's bytes: format, training revision, config JSON, the whole state dict,
    ``extra`` and, when given, the calibration."""
    state = {
        "format": MODEL_FORMAT,
        "training_revision": TRAINING_REVISION,
        "config": cfg.to_json(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": dict(extra or {}),
    }
    if calibration is not None:
        state["calibration"] = dict(calibration)
    return _state_bytes(state)


def save_model(model: MRKD, cfg: MRKDConfig, store: ArtifactStore, rel_path: str = "model.pt",
               extra: dict | None = None, calibration: dict | None = None) -> str:
    """Write ``model.pt`` atomically into ``store``; returns its URI."""
    store.write_bytes(rel_path, model_bytes(model, cfg, extra, calibration))
    return store.uri(rel_path)


def _read_state(data: bytes, source: str) -> dict:
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not our model file"
        raise MRKDError(f"{source}: not a readable MRKD model file ({unpickle_error(exc)})") from None
    if not isinstance(state, dict) or state.get("format") != MODEL_FORMAT:
        raise MRKDError(f"{source}: not an MRKD model file (expected format {MODEL_FORMAT}); "
                        "pass the model.pt written by `mrkd train`")
    return state


def _model_file(state: dict, source: str) -> ModelFile:
    calibration = state.get("calibration")
    return ModelFile(
        model=None,
        config=MRKDConfig.from_json(state["config"], source=source),
        calibration=dict(calibration) if isinstance(calibration, dict) else None,
        extra=dict(state.get("extra") or {}),
        training_revision=stored_revision(state),
        calibration_history=list(state.get("calibration_history") or []),
        source=source,
    )


def load_model_file(location: str | ArtifactStore, rel_path: str | None = None, *,
                    runtime: Mapping[str, Any] | None = None, build: bool = True) -> ModelFile:
    """The model file at a path/URI (or ``rel_path`` inside a store): the one loader.

    ``build=False`` reads config, calibration and records only (no weights built).
    Otherwise the config is the stored one with ``runtime`` applied (fields of
    ``config.RUNTIME_FIELDS`` only, e.g. ``{"device": "cuda", "eval_batch_size": 4}``: they
    change where and how fast, never what is computed) and progress bars off; the network is
    built, loaded in eval mode and placed on that config's device in its memory layout.
    State dicts in an earlier naming load too (``bottleneck.*`` → ``ocbe.*``,
    ``MRKD.load_state_dict``). Raises ``MRKDError`` naming the file when it is missing or
    not a model file, ``ConfigError`` for an override that is not a runtime field.
    """
    data, source = _model_file_data(location, rel_path)
    state = _read_state(data, source)
    record = _model_file(state, source)
    overrides = dict(runtime or {})
    not_runtime = sorted(set(overrides) - RUNTIME_FIELDS)
    if not_runtime:
        raise ConfigError(f"{source}: {not_runtime} change what the model computes; only runtime fields "
                          f"({', '.join(sorted(RUNTIME_FIELDS))}) can be set when loading it")
    record.config = record.config.replace(**overrides).replace(progress=False)
    if not build:
        return record
    cfg = record.config
    # The teacher's weights are inside the file: build it randomly initialised, then load.
    model = build_mrkd(cfg.replace(teacher_weights="none"))
    try:
        model.load_state_dict(state["state_dict"], strict=True)
    except RuntimeError as exc:
        raise MRKDError(f"{source}: weights do not match the {cfg.backbone} architecture ({exc})") from None
    record.model = place_model(model, cfg, resolve_device(cfg.device)).eval()
    return record


def evaluate_stored_model(location: str | ArtifactStore, rel_path: str | None = None, *,
                          samples: Callable[[ModelFile], Sequence[Sample]],
                          runtime: Mapping[str, Any] | None = None, flm_at_test: bool | None = None,
                          protocol: EvaluationProtocol | None = None, keep_maps: bool = False,
                          metrics: bool = True) -> tuple[ModelFile, list[Sample], EvalResult]:
    """Load a stored model (:func:`load_model_file` with ``runtime``) and evaluate it (Eq. 5-6 and metrics).

    ``samples`` chooses the images from the loaded file (its config and records: a test
    split subsampled as the model's config says, the calibration images of its dataset).
    ``flm_at_test`` overrides the test-time FLM of Sec. 3.4 (``mrkd evaluate
    --no-flm-at-test``); ``protocol`` (the benchmark's own metrics), ``keep_maps`` and ``metrics``
    as in :func:`mrkd_core.evaluate.evaluate`.
    Returns the loaded file (its config as evaluated), the samples and the evaluation.
    """
    record = load_model_file(location, rel_path, runtime=runtime)
    if flm_at_test is not None:
        record.config = record.config.replace(flm_at_test=flm_at_test)
    chosen = list(samples(record))
    return record, chosen, evaluate(record.model, record.config, chosen, keep_maps=keep_maps, metrics=metrics,
                                    protocol=protocol)


def write_calibration(location: str, calibration: dict[str, Any], output: str) -> str:
    """Write the model file at ``location`` (path or URI) with ``calibration`` to ``output``, atomically.

    The weights and everything else stay as they are; the calibration the file held is
    appended to ``calibration_history``, so recalibrating loses nothing. ``output`` is a new
    file: a file that a run directory's manifest lists (a stored result, which a registered
    version may point at) is never written, ``location`` included, a ``StorageError`` naming
    it and the fix. Returns the URI written.
    """
    parent, name = posixpath.split(str(output).rstrip("/"))
    store = ArtifactStore(parent or ".")
    if store.exists(MANIFEST) and name in (store.read_json(MANIFEST).get("files") or {}):
        raise StorageError(f"{store.uri(name)}: part of a complete run directory, whose files never change (a "
                           "registered version may point at it) — write the recalibrated model elsewhere: "
                           "-o FILE.pt")
    data, source = _model_file_data(location, None)
    state = _read_state(data, source)
    previous = state.get("calibration")
    if isinstance(previous, dict):
        state["calibration_history"] = [*list(state.get("calibration_history") or []), previous]
    state["calibration"] = dict(calibration)
    state["extra"] = {**dict(state.get("extra") or {}), "calibrated_from": source}  # where its weights come from
    store.write_bytes(name, _state_bytes(state))
    return store.uri(name)


def _model_file_data(location: str | ArtifactStore, rel_path: str | None) -> tuple[bytes, str]:
    """(bytes, source) of a model file; a missing or unreadable one is a one-line error."""
    if isinstance(location, ArtifactStore):
        rel = rel_path or "model.pt"
        source = location.uri(rel)
        data = location.read_bytes(rel)
    else:
        source = str(location)
        data = read_location(source, "model file not found — pass the model.pt written by `mrkd train`")
    return data, source


def read_location(location: str, missing: str) -> bytes:
    """The bytes at a path or URI. Missing: an MRKDError ``"<location>: <missing>"``; any
    other failure: a one-line StorageError."""
    try:
        with open_uri(location, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise MRKDError(f"{location}: {missing}") from None
    except Exception as exc:  # noqa: BLE001
        raise StorageError(f"{location}: cannot read ({type(exc).__name__}: {exc})") from None
