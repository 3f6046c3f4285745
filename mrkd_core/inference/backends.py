"""What runs the network for prediction: PyTorch on a ``model.pt``; ONNX Runtime or OpenVINO on an export.

All take a normalised N×3×S×S float32 batch and return the N×S×S anomaly maps (Eq. 5)
and N scores (Eq. 6), with the same fixed test-time masks; they differ only in the
engine. For a tiled model the batch holds tiles and the maps come before Eq. 5's Gaussian
(``tiling.network_sigma``): the Predictor stitches and smooths them (``mrkd_core.tiling``).
``open_backend`` picks one by the file (``.onnx`` → an export) and ``engine``.

Threads: every engine runs on as many CPU threads as the process's PyTorch setting
(``torch.get_num_threads()``, what ``torch.set_num_threads`` and ``OMP_NUM_THREADS`` set; by
default the machine's cores), read when the backend is made. One knob for all engines:
``mrkd serve --cpus-per-replica C`` sets it to C in each replica, so an ONNX Runtime or
OpenVINO replica keeps to its reserved CPUs as a PyTorch one does (left to themselves both
take every core).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from mrkd_core.config import MRKDConfig
from mrkd_core.device import resolve_device
from mrkd_core.errors import MRKDError
from mrkd_core.evaluate import infer
from mrkd_core.inference.export import (
    INPUT_NAME,
    KEY_CALIBRATION,
    KEY_CONFIG,
    KEY_EXTRA,
    KEY_FORMAT,
    KEY_PREPROCESSING,
    ONNX_FORMAT,
    OUTPUT_NAMES,
    onnx_packages,
)
from mrkd_core.model_io import load_model_file, read_location
from mrkd_core.score import fuse_maps, image_score
from mrkd_core.tiling import network_sigma

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """What a predictor needs to know about a model file, whatever its engine."""

    source: str
    engine: str  # "pytorch" or "onnxruntime"
    config: MRKDConfig
    calibration: dict[str, Any] | None
    extra: dict[str, Any]

    @property
    def image_size(self) -> int:
        return self.config.image_size


class Backend(Protocol):
    """What runs the test path for ``Predictor``: PyTorch (model.pt), ONNX Runtime or OpenVINO (.onnx)."""

    info: ModelInfo

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N×S×S float32 maps, N float32 scores) of a normalised N×3×S×S float32 batch."""
        ...


def cpu_threads() -> int:
    """CPU threads for an engine: the process's PyTorch setting (module docstring), at least 1."""
    return max(1, torch.get_num_threads())


class TorchBackend:
    """PyTorch eager on the model file's network (``mrkd_core.evaluate.infer``, Eq. 5-6)."""

    def __init__(self, location: str, device: str = "auto"):
        record = load_model_file(location, runtime={"device": device})
        dev = resolve_device(record.config.device)
        self.model = record.model
        self.device = dev
        cfg = record.config.replace(device=dev.type)
        self.info = ModelInfo(record.source, "pytorch", cfg, record.calibration, record.extra)

    @torch.no_grad()
    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.info.config
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        maps = fuse_maps(infer(self.model, x, cfg), cfg.score_scales, network_sigma(cfg))
        return maps.cpu().numpy(), image_score(maps).cpu().numpy()


def _export_info(location: str, engine: str, meta: dict[str, str]) -> ModelInfo:
    """ModelInfo from an export's metadata; a file ``mrkd export`` did not write is a one-line error."""
    if meta.get(KEY_FORMAT) != ONNX_FORMAT:
        raise MRKDError(f"{location}: not an MRKD export (no {KEY_FORMAT}={ONNX_FORMAT} in its metadata) — "
                        "export the model with `mrkd export`")
    cfg = MRKDConfig.from_json(meta[KEY_CONFIG], source=f"{location} metadata")
    if int(json.loads(meta[KEY_PREPROCESSING])["image_size"]) != cfg.image_size:
        raise MRKDError(f"{location}: metadata disagree on the image size; export the model again")
    calibration = json.loads(meta[KEY_CALIBRATION]) if meta.get(KEY_CALIBRATION) else None
    return ModelInfo(location, engine, cfg, calibration, json.loads(meta.get(KEY_EXTRA) or "{}"))


def _not_onnx(location: str, exc: Exception) -> MRKDError:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return MRKDError(f"{location}: not a readable ONNX file ({type(exc).__name__}: {first})")


class OnnxBackend:
    """ONNX Runtime on a file written by ``mrkd export`` (CPU; CUDA when asked and available)."""

    def __init__(self, location: str, device: str = "auto"):
        _, ort = onnx_packages()
        data = read_location(location, "file not found — pass the .onnx written by `mrkd export`")
        providers = ["CPUExecutionProvider"]
        if device in ("auto", "cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        elif device == "cuda":
            raise MRKDError(f"{location}: --device cuda needs onnxruntime-gpu; this onnxruntime runs on CPU only")
        options = ort.SessionOptions()
        options.intra_op_num_threads = cpu_threads()  # the module docstring's one knob
        try:
            self.session = ort.InferenceSession(data, sess_options=options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise _not_onnx(location, exc) from None
        self.info = _export_info(location, "onnxruntime", self.session.get_modelmeta().custom_metadata_map)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = self.session.run(None, {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})
        return maps, scores


class OpenVinoBackend:
    """OpenVINO (CPU) on a local file written by ``mrkd export`` (the ``openvino`` extra).

    In float32: on CPUs with bf16 units OpenVINO's default precision hint is bf16, which
    moved the maps by ~6e-3 here (docs/inference.md).
    """

    def __init__(self, location: str, device: str = "auto"):
        try:
            import openvino as ov
        except ImportError:
            raise MRKDError("OpenVINO is not installed — pip install 'mrkd[openvino]', or use --engine "
                            "onnxruntime") from None
        if device not in ("auto", "cpu"):
            raise MRKDError(f"--engine openvino runs on the CPU; --device {device} is not supported with it")
        path = Path(location)
        if not path.is_file():
            raise MRKDError(f"{location}: file not found — pass a local .onnx written by `mrkd export`")
        from mrkd_core.inference.export import onnx_metadata

        try:
            meta = onnx_metadata(path)
            self.compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                                       "INFERENCE_NUM_THREADS": cpu_threads()})
        except Exception as exc:  # noqa: BLE001 - onnx and OpenVINO raise their own exception types
            raise _not_onnx(location, exc) from None
        self.info = _export_info(location, "openvino", meta)
        self._outputs = [self.compiled.output(name) for name in OUTPUT_NAMES]

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = self.compiled(np.ascontiguousarray(batch, dtype=np.float32))
        return result[self._outputs[0]], result[self._outputs[1]]


ENGINES = ("auto", "onnxruntime", "openvino")


def is_onnx(location: str) -> bool:
    """Whether ``location`` names an ONNX export (by its ``.onnx`` suffix, any case)."""
    return str(location).lower().endswith(".onnx")


def open_backend(location: str, device: str = "auto", engine: str = "auto") -> Backend:
    """PyTorch for model files written by ``mrkd train``; for ``*.onnx`` files ONNX Runtime
    (``engine`` auto or onnxruntime) or OpenVINO (``engine`` openvino)."""
    if engine not in ENGINES:
        raise MRKDError(f"--engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if not is_onnx(location):
        if engine != "auto":
            raise MRKDError(f"--engine {engine} runs an .onnx export; export {location} with `mrkd export` first")
        return TorchBackend(location, device)
    return OpenVinoBackend(location, device) if engine == "openvino" else OnnxBackend(location, device)
