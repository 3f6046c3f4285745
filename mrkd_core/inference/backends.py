"""What runs the network for prediction: PyTorch on a ``model.pt``, or ONNX Runtime on an export.

Both take a normalised N×3×S×S float32 batch and return the N×S×S anomaly maps (Eq. 5)
and N scores (Eq. 6), with the same fixed test-time masks; they differ only in the
engine. ``open_backend`` picks one by the file: ``.onnx`` → ONNX Runtime, else PyTorch.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
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
    onnx_packages,
)
from mrkd_core.model_io import load_model_file, read_location
from mrkd_core.score import fuse_maps, image_score

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
    info: ModelInfo

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N×S×S float32 maps, N float32 scores) of a normalised N×3×S×S float32 batch."""
        ...


class TorchBackend:
    """PyTorch eager on the model file's network (``mrkd_core.evaluate.infer``, Eq. 5-6)."""

    def __init__(self, location: str, device: str = "auto"):
        dev = resolve_device(device)
        record = load_model_file(location, device=dev)
        self.model = record.model
        self.device = dev
        cfg = record.config.replace(device=dev.type)
        self.info = ModelInfo(record.source, "pytorch", cfg, record.calibration, record.extra)

    @torch.no_grad()
    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.info.config
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        maps = fuse_maps(infer(self.model, x, cfg), cfg.score_scales, cfg.gaussian_sigma)
        return maps.cpu().numpy(), image_score(maps).cpu().numpy()


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
        try:
            self.session = ort.InferenceSession(data, providers=providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
            raise MRKDError(f"{location}: not a readable ONNX file ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get(KEY_FORMAT) != ONNX_FORMAT:
            raise MRKDError(f"{location}: not an MRKD export (no {KEY_FORMAT}={ONNX_FORMAT} in its metadata) — "
                            "export the model with `mrkd export`")
        cfg = MRKDConfig.from_json(meta[KEY_CONFIG], source=f"{location} metadata")
        pre = json.loads(meta[KEY_PREPROCESSING])
        if int(pre["image_size"]) != cfg.image_size:
            raise MRKDError(f"{location}: metadata disagree on the image size; export the model again")
        calibration = json.loads(meta[KEY_CALIBRATION]) if meta.get(KEY_CALIBRATION) else None
        extra = json.loads(meta.get(KEY_EXTRA) or "{}")
        self.info = ModelInfo(location, "onnxruntime", cfg, calibration, extra)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = self.session.run(None, {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})
        return maps, scores


def is_onnx(location: str) -> bool:
    return str(location).lower().endswith(".onnx")


def open_backend(location: str, device: str = "auto") -> Backend:
    """ONNX Runtime for ``*.onnx`` files, PyTorch for model files written by ``mrkd train``."""
    return OnnxBackend(location, device) if is_onnx(location) else TorchBackend(location, device)
