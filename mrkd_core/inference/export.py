"""Export a trained model to ONNX: one graph from a normalised batch to map and score.

The graph: input ``image`` (N×3×S×S float32, normalised like the dataset loaders;
dynamic N) → outputs ``anomaly_map`` (N×S×S float32: Eq. 5, per-scale 1 − cosine,
bilinear upsampling with ``align_corners=True``, sum over ``score_scales``, Gaussian
σ = ``gaussian_sigma`` as scipy's) and ``score`` (N float32: Eq. 6, the map's maximum).
A tiled model (``tile_size`` > 0) exports the same graph for one batch of tiles, without
the Gaussian (``tiling.network_sigma``): a frame of any size is cut, stitched, smoothed
and scored around the graph by ``mrkd_core.tiling``, as for every engine (the Predictor);
``mrkd.preprocessing`` says so.
The test-time FLM masks (``MRKD.test_masks``: a function of the model alone) are
constants of the graph, so the file gives the same maps as the PyTorch path.

The file's metadata (``metadata_props``) make it self-contained at the line:
``mrkd.preprocessing`` (size, resize, colour, mean/std), ``mrkd.calibration``
(thresholds and normalisation; empty when uncalibrated), ``mrkd.config`` and the
revisions. Exported with torch's TorchScript-based exporter (``dynamo=False``), opset
17: it exports the whole test path, which the stack notes checked.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mrkd_core.config import MRKDConfig
from mrkd_core.errors import MRKDError
from mrkd_core.model import MRKD
from mrkd_core.model_io import ModelFile
from mrkd_core.revision import EVALUATION_REVISION
from mrkd_core.score import fuse_maps, image_score, per_scale_maps
from mrkd_core.tiling import network_sigma

log = logging.getLogger(__name__)

ONNX_FORMAT = "mrkd-onnx/1"
OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAMES = ("anomaly_map", "score")
EXPORT_FORMATS = ("onnx",)

# metadata_props keys
KEY_FORMAT = "mrkd.format"
KEY_PREPROCESSING = "mrkd.preprocessing"
KEY_CALIBRATION = "mrkd.calibration"
KEY_CONFIG = "mrkd.config"
KEY_EXTRA = "mrkd.extra"
KEY_TRAINING_REVISION = "mrkd.training_revision"
KEY_EVALUATION_REVISION = "mrkd.evaluation_revision"


def onnx_packages():
    """(onnx, onnxruntime), or an MRKDError saying how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise MRKDError(f"ONNX support is not installed ({exc.name} missing) — pip install 'mrkd[onnx]'") from None
    return onnx, onnxruntime


def preprocessing(cfg: MRKDConfig) -> dict[str, Any]:
    """How an image becomes the graph's input, as the dataset loaders do it (docs/inference.md)."""
    return {
        "image_size": cfg.image_size,
        "resize": f"LANCZOS to {cfg.image_size}×{cfg.image_size}, aspect ratio not kept",
        "color": "RGB; grey images repeated to 3 channels",
        "scale": "uint8 / 255, then (x − mean) / std per channel",
        "mean": list(cfg.normalize_mean),
        "std": list(cfg.normalize_std),
        "layout": "N×3×S×S float32 (NCHW)",
        "outputs": "anomaly_map N×S×S (Eq. 5, Gaussian σ included); score N (Eq. 6, max of the map)",
        **({"tiling": tiling_preprocessing(cfg)} if cfg.tiled else {}),
    }


def tiling_preprocessing(cfg: MRKDConfig) -> dict[str, Any]:
    """How a tiled model's frames become the graph's batches and its outputs a frame's map (docs/tiling.md)."""
    return {
        "tile_size": cfg.tile_size,
        "tile_stride": cfg.stride,
        "tiles": f"squares of {cfg.tile_size} px of the original frame, origins {cfg.stride} px apart, a last tile "
                 "aligned to the far edge; each tile resized like an image (LANCZOS to S×S) into the batch",
        "outputs": "anomaly_map N×S×S per tile WITHOUT the Gaussian; score unused. Each tile map is resized "
                   "(bilinear) to its tile, overlaps averaged, then the Gaussian with σ = gaussian_sigma × "
                   "tile / S per axis on the stitched frame; the score is its maximum (mrkd_core.tiling)",
    }


class MapAndScore(nn.Module):
    """The test path as one module: normalised N×3×S×S batch → (N×S×S map, N scores).

    The test-time masks for S×S inputs are buffers (constants once exported).
    """

    def __init__(self, model: MRKD, cfg: MRKDConfig):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.flm = bool(cfg.flm and cfg.flm_at_test and model.generation is not None and model.generation.ratio > 0)
        if self.flm:
            with torch.no_grad():
                probe = torch.zeros(1, 3, cfg.image_size, cfg.image_size, device=next(model.parameters()).device)
                shapes = [f.shape for f in model.teacher(probe)]  # the student restores these shapes
            for i, m in enumerate(model.test_masks(shapes)):
                self.register_buffer(f"flm_mask_{i + 1}", m)

    def masks(self) -> list[Tensor] | None:
        if not self.flm:
            return None
        return [getattr(self, f"flm_mask_{i + 1}") for i in range(len(self.model.generation))]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f_t, f_s = self.model.forward_test(x, flm=self.flm, masks=self.masks())
        amap = fuse_maps(per_scale_maps(f_t, f_s, self.cfg.image_size), self.cfg.score_scales, network_sigma(self.cfg))
        return amap, image_score(amap)


def export_onnx(record: ModelFile, out_path: str | Path, opset: int = OPSET) -> Path:
    """Write ``record``'s model as an ONNX file with its preprocessing and calibration in the metadata.

    ``record`` comes from ``model_io.load_model_file`` (on the CPU). Returns the path.
    """
    onnx, _ = onnx_packages()
    if record.model is None:
        raise ValueError("export_onnx needs a loaded model (load_model_file(..., build=True))")
    cfg = record.config
    model = record.model.to(memory_format=torch.contiguous_format).cpu().eval()
    model.channels_last = False  # the graph's layout is ONNX Runtime's business
    module = MapAndScore(model, cfg).eval()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, 3, cfg.image_size, cfg.image_size)
    tmp = out.with_name(out.name + ".partial")
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer flags the shape checks and the constant index of the fused scales:
        # both are constants of the graph by design (only the batch size is dynamic).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(module, (dummy,), str(tmp), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAMES[0]: {0: "batch"},
                                        OUTPUT_NAMES[1]: {0: "batch"}})
    graph = onnx.load(str(tmp))
    meta = {
        KEY_FORMAT: ONNX_FORMAT,
        KEY_PREPROCESSING: json.dumps(preprocessing(cfg)),
        KEY_CALIBRATION: json.dumps(record.calibration) if record.calibration is not None else "",
        KEY_CONFIG: cfg.to_json(),
        KEY_EXTRA: json.dumps(record.extra, default=str),
        KEY_TRAINING_REVISION: str(record.training_revision),
        KEY_EVALUATION_REVISION: str(EVALUATION_REVISION),
    }
    del graph.metadata_props[:]
    for key, value in meta.items():
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    graph.doc_string = f"MRKD anomaly map and score ({cfg.backbone}, {cfg.image_size} px), exported from {record.source}"
    onnx.save(graph, str(tmp))
    tmp.replace(out)  # atomic: a reader never sees a half-written file
    log.info("exported %s → %s (%.1f MB)", record.source, out, out.stat().st_size / 2**20)
    return out


def onnx_metadata(data: bytes | str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (path or bytes), without loading its weights twice."""
    onnx, _ = onnx_packages()
    graph = onnx.load_model_from_string(data) if isinstance(data, bytes) else onnx.load(str(data), load_external_data=False)
    return {p.key: p.value for p in graph.metadata_props}
