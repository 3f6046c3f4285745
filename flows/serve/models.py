"""What the service serves: a name per model, the version in use, and the Predictor that scores it.

``MODEL_REF`` is anything ``mrkd predict`` takes: a ``model.pt`` (path or URI), an ``.onnx``
export, or a registry reference ``<store>/models/<name>/<dataset>/<category>@champion``
(``@latest``, ``@<N>``); with a store (``--store``) also ``<name>/<dataset>/<category>@…`` and
``<name>@…`` (``mrkd_core.registry.reference.expand_reference``). ``SERVED=MODEL_REF`` names
it in URLs; otherwise the name is the category (a registry reference, or a ``model.pt`` in
the store layout ``runs/<run>/<dataset>/<category>/<hash>/model.pt``) or the file's stem.

A reference whose selector is ``champion`` or ``latest`` *follows* the registry: the
service reads it again every ``--follow-seconds``. Everything here is plain library calls
(the registry, ``mrkd_core.inference.Predictor``): the service scores with the same code as
``mrkd predict``.
"""

from __future__ import annotations

import logging
import posixpath
import re
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

from flows.serve.options import ENGINES
from mrkd_core.errors import ConfigError, MRKDError
from mrkd_core.inference.backends import is_onnx
from mrkd_core.inference.record import recorded_name
from mrkd_core.registry.records import CHAMPION, LATEST
from mrkd_core.registry.reference import ModelReference, expand_reference, parse_reference, resolve
from mrkd_core.storage import absolute_location

log = logging.getLogger(__name__)

# A served name is one URL path segment.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
FOLLOWED_SELECTORS = (CHAMPION, LATEST)


@dataclass(frozen=True)
class ServedModel:
    """One served model: its URL name, where it comes from and which engine runs it (JSON-able).

    ``location``: a full registry reference or a model file's path/URI. ``engine``: one of
    :data:`ENGINES`.
    """

    name: str
    location: str
    engine: str

    @property
    def reference(self) -> ModelReference | None:
        return parse_reference(self.location)

    @property
    def follows(self) -> str | None:
        """``champion``/``latest`` when the version follows the registry; None for a fixed one."""
        ref = self.reference
        return ref.selector if ref is not None and ref.selector in FOLLOWED_SELECTORS else None

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "location": self.location, "engine": self.engine}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServedModel:
        return cls(str(data["name"]), str(data["location"]), str(data["engine"]))


def served_models(items: list[str], store_root: str | None, engine: str | None) -> list[ServedModel]:
    """``[SERVED=]MODEL_REF`` arguments → served models, names checked and unique.

    ``engine`` None: PyTorch for a ``model.pt``, ONNX Runtime for an ``.onnx``. Errors are
    one line (``ConfigError``) naming the argument and the fix.
    """
    if engine is not None and engine not in ENGINES:
        raise ConfigError(f"--engine {engine!r}: choose one of {', '.join(ENGINES)}")
    out: list[ServedModel] = []
    for item in items:
        name, sep, rest = item.partition("=")
        explicit = bool(sep) and "/" not in name and "@" not in name
        location = _absolute(expand_reference(rest if explicit else item, _absolute(store_root)))
        name = name if explicit else recorded_name(location)
        if not NAME_PATTERN.match(name):
            raise ConfigError(f"{item}: {name!r} cannot name a model in a URL (letters, digits, '.', '_', '-'; "
                              f"at most 64) — name it: mrkd serve NAME={rest if explicit else item}")
        chosen = engine or ("onnxruntime" if is_onnx(location) else "torch")
        if chosen == "torch" and is_onnx(location):
            raise ConfigError(f"{item}: --engine torch runs a model.pt; an .onnx export runs with --engine "
                              "onnxruntime or openvino")
        if any(m.name == name for m in out):
            raise ConfigError(f"two models would be served as {name!r}: name them, e.g. mrkd serve {name}-a=REF "
                              f"{name}-b=REF")
        out.append(ServedModel(name, location, chosen))
    if not out:
        raise ConfigError("no model to serve: pass MODEL_REF (a model.pt, an .onnx or NAME@champion)")
    return out


def _absolute(location: str | None) -> str | None:
    """A local path made absolute (replicas do not share the command's working folder); URIs unchanged."""
    return None if location is None else absolute_location(location)


def current_version(model: ServedModel) -> tuple[int | None, str]:
    """(registry version or None for a model file, the model file's URI) that ``model`` names now."""
    ref = model.reference
    if ref is None:
        return None, model.location
    resolved = resolve(ref)
    return resolved.version, resolved.uri


def version_location(model: ServedModel, version: int | None) -> str:
    """The model file of ``version`` of ``model`` (its own location for a model file)."""
    ref = model.reference
    if ref is None or version is None:
        return model.location
    return resolve(ModelReference(ref.store, ref.key, str(version))).uri


class LoadedModel:
    """A :class:`~mrkd_core.inference.Predictor` for one version, and the export it may run on.

    ``--engine onnxruntime|openvino`` on a ``model.pt`` exports it (``mrkd export``'s
    ``export_onnx``) into a temporary folder that :meth:`close` removes; OpenVINO reads a
    remote ``.onnx`` from a local copy.
    """

    def __init__(self, model: ServedModel, version: int | None, device: str, batch_size: int):
        from mrkd_core.inference.predict import Predictor

        self.version = version
        self.source = version_location(model, version)
        self._tmp: str | None = None
        location = self.source
        try:
            if model.engine != "torch" and not is_onnx(location):
                location = self._export(location)
            elif model.engine == "openvino" and "://" in location:
                location = self._local_copy(location)
            engine = "auto" if model.engine == "torch" else model.engine
            self.predictor = Predictor.load(location, device=device, batch_size=batch_size, engine=engine)
        except BaseException:
            self.close()
            raise
        self.engine = self.predictor.backend.info.engine

    def _tmpdir(self) -> str:
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="mrkd-serve-")
        return self._tmp

    def _export(self, location: str) -> str:
        from mrkd_core.inference.export import export_onnx
        from mrkd_core.model_io import load_model_file

        return str(export_onnx(load_model_file(location, device="cpu"), posixpath.join(self._tmpdir(), "model.onnx")))

    def _local_copy(self, location: str) -> str:
        from mrkd_core.model_io import read_location

        path = posixpath.join(self._tmpdir(), "model.onnx")
        with open(path, "wb") as fh:
            fh.write(read_location(location, "file not found"))
        return path

    def describe(self) -> dict[str, Any]:
        """What ``GET /models`` shows of this version: engine, file and calibration."""
        cal = self.predictor.calibration
        calibration = None if cal is None else {
            "policy": cal.policy, "image_threshold": cal.image_threshold, "pixel_threshold": cal.pixel_threshold,
            "source": cal.source, "n_good": cal.n_good, "n_defective": cal.n_defective,
            "target_false_alarm_rate": cal.target_false_alarm_rate, "summary": cal.summary()}
        import torch

        return {"version": self.version, "source": self.source, "engine": self.engine,
                "image_size": self.predictor.image_size, "threads": torch.get_num_threads(),
                "calibration": calibration}

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


UNCALIBRATED = ("the model is uncalibrated, so it gives scores without a verdict — calibrate it: "
                "mrkd calibrate MODEL DATA_ROOT")


def check_loadable(model: ServedModel) -> None:
    """Fail now, with one line, when ``model``'s file is missing or not a model (before Ray starts).

    A ``model.pt``'s records are read as ``mrkd predict`` reads them (weights-only unpickling,
    no network built), so a broken file is the library's one-line error, not a failed deployment.
    """
    from mrkd_core.model_io import load_model_file
    from mrkd_core.storage import open_uri

    _, uri = current_version(model)
    try:
        open_uri(uri, "rb").close()
    except FileNotFoundError:
        raise MRKDError(f"{uri}: model file not found — pass a model.pt from `mrkd train`, an .onnx from "
                        "`mrkd export` or a registered model (NAME@champion)") from None
    except OSError as exc:
        raise MRKDError(f"{uri}: cannot read ({type(exc).__name__}: {exc})") from None
    if not is_onnx(uri):
        load_model_file(uri, build=False)


__all__ = ["LoadedModel", "NAME_PATTERN", "ServedModel", "UNCALIBRATED", "check_loadable",
           "current_version", "served_models", "version_location"]
