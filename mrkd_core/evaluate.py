"""Evaluation of a trained MRKD model (Algorithm 1, testing stage) on a test split.

Test images are not synthesised (Fig. 3: "during inference, NSA is not performed");
FLM masks are applied at test time as Sec. 3.4 prescribes, the same fixed masks for
every image (``MRKD.test_masks``, a function of ``cfg.flm_test_seed``, the scale and
the feature map's size), so that an image's score does not depend on the batch size,
its companions, their order or the device (the official code draws them unseeded per
call, so its scores vary by ~0.4%). ``mrkd_core.revision.EVALUATION_REVISION`` records
the change from the per-call stream of masks used before.

A tiled config (``tile_size`` > 0) scores each test image at its own resolution: its tiles'
maps stitched, smoothed once and maxed (``mrkd_core.tiling``), the masks the original ones.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader

from mrkd_core.config import MRKDConfig
from mrkd_core.data.base import EvaluationProtocol, Sample
from mrkd_core.data.torch_datasets import TestDataset, TestFrames, normalize
from mrkd_core.device import autocast_context
from mrkd_core.errors import DataError, unwrap_worker_errors
from mrkd_core.metrics import absent_metrics, compute_all
from mrkd_core.model import MRKD
from mrkd_core.score import fuse_maps, image_score, per_scale_maps
from mrkd_core.tiling import Tiling

log = logging.getLogger(__name__)


def scales_key(scales: Sequence[int]) -> str:
    """'1,2,3' — how a set of fused scales is named in tables (Table 7)."""
    return ",".join(str(s) for s in sorted(scales))


@dataclass
class EvalResult:
    """What :func:`evaluate` returns for one test split.

    ``metrics``: the metrics of ``cfg.score_scales`` (``image_auroc``, ``pixel_auroc``,
    ``au_pro``, ``au_pro_per_image``, ``f1_max_image``, ``f1_max_pixel``; each in [0, 1], NaN
    when undefined). ``scores``: one ``{"path", "category", "defect_type", "label", "score"}``
    per test image, in test order (``score`` = Eq. 6). ``metrics_by_scales``: metrics per
    fusion key (``'1,2,3'``, ``'1,3'``...) when extra ``scale_sets`` were asked, else {}.
    ``maps``/``masks``: N×S×S fused anomaly maps (float32: calibration reuses them) and
    ground truth (uint8; all zeros without pixel ground truth), only with ``keep_maps``.
    ``seconds``: wall time of the evaluation. ``absent``: metric → why it was not
    computed (the pixel metrics of a test set without masks), {} otherwise.
    ``protocol_metrics``: what the dataset's evaluation protocol computed (``protocol=``).
    """

    metrics: dict[str, float]
    scores: list[dict]
    metrics_by_scales: dict[str, dict[str, float]] = field(default_factory=dict)
    maps: np.ndarray | None = None  # N×H×W float32 fused maps (cfg.score_scales)
    masks: np.ndarray | None = None  # N×H×W uint8 ground truth (all zeros without pixel ground truth)
    seconds: float = 0.0
    # metric → why it was not computed (the pixel metrics of an image-labelled test set);
    # those metrics are NaN in ``metrics`` and are reported as absent, not as undefined.
    absent: dict[str, str] = field(default_factory=dict)
    # The dataset protocol's metrics (``PROTOCOL_METRICS``: MVTec AD 2, MVTec LOCO AD) of the
    # configuration's fusion; {} for every other dataset (those columns stay null).
    protocol_metrics: dict[str, float] = field(default_factory=dict)


def has_pixel_ground_truth(samples: Sequence[Sample]) -> bool:
    """True when every defective sample has a mask, False when none has (image labels only).

    A mix is a DataError naming the first defective image without a mask: in a dataset
    that has masks, a missing one is an error, never a reason to drop the pixel metrics.
    """
    defective = [s for s in samples if s.label == 1]
    with_mask = [s for s in defective if s.mask_path is not None]
    if with_mask and len(with_mask) < len(defective):
        lacking = next(s for s in defective if s.mask_path is None)
        raise DataError(f"{lacking.path}: defective test image without a mask while {len(with_mask)} of "
                        f"{len(defective)} have one — add its mask (run `mrkd data check` to list every problem)")
    return bool(with_mask) or not defective


@torch.no_grad()
def infer(model: MRKD, images: torch.Tensor, cfg: MRKDConfig) -> torch.Tensor:
    """Per-scale anomaly maps (B×3×S×S, unblurred, float32) of a normalised B×3×S×S batch.

    Each image's maps depend on that image and the model only (fixed test-time masks).
    """
    use_flm = cfg.flm and cfg.flm_at_test
    device = next(model.parameters()).device
    with autocast_context(device, cfg.precision):
        f_t, f_s = model.forward_test(images, flm=use_flm)
    return per_scale_maps([f.float() for f in f_t], [f.float() for f in f_s], cfg.image_size)


TestBatch = tuple[list[tuple[str, str, str, int]], dict[str, np.ndarray], np.ndarray]


def _resized_maps(model: MRKD, cfg: MRKDConfig, samples: Sequence[Sample],
                  want: dict[str, tuple[int, ...]]) -> Iterator[TestBatch]:
    """Whole images resized to S×S (the paper's test stage): per batch, the images' (path, category,
    defect type, label), their N×S×S maps per fusion key of ``want`` and N×S×S uint8 masks."""
    device = next(model.parameters()).device
    dataset = TestDataset(list(samples), cfg.image_size, cfg.normalize_mean, cfg.normalize_std)
    loader = DataLoader(dataset, batch_size=cfg.eval_batch_size, shuffle=False,
                        num_workers=cfg.num_workers, pin_memory=device.type == "cuda")
    for batch in unwrap_worker_errors(loader):  # a bad file's DataError stays one line
        images = batch["image"].to(device, non_blocking=True)  # MRKD.prepare_input applies the model's layout
        psm = infer(model, images, cfg)
        maps = {key: fuse_maps(psm, s, cfg.gaussian_sigma).cpu().numpy().astype(np.float32) for key, s in want.items()}
        meta = [(batch["path"][i], batch["category"][i], batch["defect_type"][i], int(batch["label"][i]))
                for i in range(images.shape[0])]
        yield meta, maps, batch["mask"][:, 0].numpy().astype(np.uint8)


def fused_tile_maps(model: MRKD, cfg: MRKDConfig,
                    scale_sets: Sequence[Sequence[int]]) -> Callable[[np.ndarray], torch.Tensor]:
    """The ``tile_maps`` of ``Tiling.stitched_maps`` for a PyTorch model: B tiles (B×S×S×C uint8,
    already at ``image_size``) to B×K×S×S float32 on the CPU, per tile the unsmoothed fusion (Eq. 5
    without its Gaussian) of each of the K ``scale_sets``. Eq. 5 is linear up to its Gaussian, so
    fusing before stitching is fusing after."""
    device = next(model.parameters()).device

    def tile_maps(tiles: np.ndarray) -> torch.Tensor:
        x = torch.stack([normalize(t, cfg.normalize_mean, cfg.normalize_std) for t in tiles])
        psm = infer(model, x.to(device), cfg)
        return torch.stack([fuse_maps(psm, s, 0.0) for s in scale_sets], dim=1).cpu()

    return tile_maps


def _tiled_maps(model: MRKD, cfg: MRKDConfig, samples: Sequence[Sample],
                want: dict[str, tuple[int, ...]]) -> Iterator[TestBatch]:
    """Tiled frames (``mrkd_core.tiling``): per image, 1×H×W maps per fusion key, stitched at the
    image's own resolution and smoothed once, and its 1×H×W mask; ``cfg.eval_batch_size`` tiles
    per forward pass. Read in order, one image at a time (DataLoader workers decode ahead)."""
    tiling = Tiling.of(cfg)
    loader = DataLoader(TestFrames(list(samples)), batch_size=None, shuffle=False, num_workers=cfg.num_workers,
                        collate_fn=_as_is)
    tile_maps = fused_tile_maps(model, cfg, list(want.values()))

    def frames() -> Iterator[tuple[dict, np.ndarray]]:
        first: tuple[str, tuple[int, ...]] | None = None
        for item in unwrap_worker_errors(loader):
            image = item.pop("image")
            first = first or (item["path"], image.shape[:2])
            if image.shape[:2] != first[1]:
                _other_size(item["path"], image.shape[:2], *first)
            yield item, image

    for item, stitched, grid in tiling.stitched_maps(frames(), tile_maps, cfg.eval_batch_size):
        maps = {key: tiling.anomaly_map(stitched, grid, (k + 1,)).numpy()[None] for k, key in enumerate(want)}
        meta = [(item["path"], item["category"], item["defect_type"], int(item["label"]))]
        yield meta, maps, item["mask"][None]


def _other_size(path: str, size: tuple[int, ...], first_path: str, first: tuple[int, ...]) -> None:
    """A tiled model is scored at the images' own resolution, and the metrics pool their pixels:
    one test set, one frame size. A DataError naming the first image of another size."""
    raise DataError(
        f"{path}: {size[1]}×{size[0]} px while {first_path} is {first[1]}×{first[0]} — a tiled model (tile_size) "
        "is evaluated at the images' own resolution, so the test (and calibration) images of a category must "
        "share one size; crop them, or split them by size into categories")


def _as_is(item: dict) -> dict:
    """DataLoader's per-item collation for frames: keep the numpy arrays (no tensor conversion)."""
    return item


@torch.no_grad()
def evaluate(model: MRKD, cfg: MRKDConfig, samples: Sequence[Sample], keep_maps: bool = False,
             scale_sets: Sequence[Sequence[int]] | None = None, metrics: bool = True,
             protocol: EvaluationProtocol | None = None) -> EvalResult:
    """Anomaly maps (Eq. 5), image scores (Eq. 6) and metrics of every test sample.

    ``scale_sets``: extra fusions to score from the same forward passes (Table 7 needs
    no retraining); their metrics land in ``metrics_by_scales`` keyed like '1,3'.
    ``metrics=False``: scores (and maps) only, e.g. of defect-free calibration images.
    ``protocol``: the dataset's own metrics (``DatasetLayout.evaluation_protocol``), computed
    from the configuration's fusion into ``protocol_metrics``; it may score further images
    (MVTec AD 2's validation set) with this model.
    """
    if not samples:
        raise DataError("the test split is empty — add images to test/good and test/<defect> folders")
    pixel_ground_truth = has_pixel_ground_truth(samples)
    t0 = time.perf_counter()
    model.eval()
    # dict keeps order and drops duplicates of the main fusion
    want = {scales_key(s): tuple(s) for s in [cfg.score_scales, *(scale_sets or [])]}
    main_key = scales_key(cfg.score_scales)
    test_maps = _tiled_maps if cfg.tiled else _resized_maps
    fused: dict[str, list[np.ndarray]] = {key: [] for key in want}
    masks: list[np.ndarray] = []
    scores: list[dict] = []
    for meta, maps, mask in test_maps(model, cfg, samples, want):
        for key in want:
            fused[key].append(maps[key])
        masks.append(mask)
        main_scores = image_score(torch.from_numpy(maps[main_key])).numpy()
        for i, (path, category, defect_type, label) in enumerate(meta):
            scores.append({"path": path, "category": category, "defect_type": defect_type, "label": int(label),
                           "score": float(main_scores[i])})
    all_masks = np.concatenate(masks)
    labels = np.array([s["label"] for s in scores])
    by_scales: dict[str, dict[str, float]] = {}
    main_maps = None
    for key, chunks in fused.items():
        maps = np.concatenate(chunks)
        img_scores = maps.reshape(maps.shape[0], -1).max(axis=1)
        by_scales[key] = (compute_all(img_scores, labels, maps, all_masks if pixel_ground_truth else None)
                          if metrics else {})
        if key == main_key:
            main_maps = maps
    from_protocol: dict[str, float] = {}
    if protocol is not None and metrics and pixel_ground_truth:
        from_protocol = protocol.compute(
            main_maps, all_masks, main_maps.reshape(main_maps.shape[0], -1).max(axis=1), samples,
            lambda extra: evaluate(model, cfg, extra, keep_maps=True, metrics=False).maps)
    return EvalResult(
        metrics=by_scales[main_key],
        scores=scores,
        metrics_by_scales=by_scales if scale_sets else {},
        maps=main_maps if keep_maps else None,
        masks=all_masks if keep_maps else None,
        seconds=time.perf_counter() - t0,
        absent=absent_metrics(pixel_ground_truth),
        protocol_metrics=from_protocol,
    )
