"""Predictions for MVTec AD 2's private test sets, in the layout its evaluation server expects.

MVTec AD 2 keeps the ground truth of ``test_private`` and ``test_private_mixed`` to itself:
a method is scored by uploading its predictions to https://benchmark.mvtec.com. The layout
is the one MVTec's public code writes (``mvtec_ad_2_public_offline.py``,
``get_relative_anomaly_image_out_path``; its ``check_and_prepare_data_for_upload.py``
checks and packs the folder for upload)::

    <out>/anomaly_images/<category>/<split>/<image stem>.tiff              real-valued map, float16
    <out>/anomaly_images_thresholded/<category>/<split>/<image stem>.png   0 / 255, the segmentation

each at the size of its image: the model's map (Eq. 5, at ``image_size``) is upsampled
bilinearly to the image's own size, and thresholded there at the category's segmentation
threshold, chosen as for ``seg_f1`` on ``validation/good`` (mean + 3 std of its pixel scores,
``mrkd_core.data.mvtec_ad2``). ``thresholds.json`` records the threshold and the model of
each category. Run MVTec's checker on ``<out>`` before uploading.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from mrkd_core.data import get_dataset
from mrkd_core.data.io import image_size
from mrkd_core.data.mvtec_ad2 import PRIVATE_SPLITS, SEG_THRESHOLD_K
from mrkd_core.device import place_model, resolve_device
from mrkd_core.errors import DataError
from mrkd_core.evaluate import evaluate
from mrkd_core.layout import find_models
from mrkd_core.metrics import normal_threshold
from mrkd_core.model_io import load_model_file
from mrkd_core.storage import ArtifactStore

log = logging.getLogger(__name__)

MAPS_DIR = "anomaly_images"
MASKS_DIR = "anomaly_images_thresholded"


def write_prediction(amap: np.ndarray, size: tuple[int, int], threshold: float, tiff: Path, png: Path) -> None:
    """One image's map (S×S) at its own ``size`` (width, height): the float16 TIFF and the 0/255 PNG."""
    full = np.asarray(Image.fromarray(amap.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR))
    tiff.parent.mkdir(parents=True, exist_ok=True)
    png.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(tiff, full.astype(np.float16))
    Image.fromarray(np.where(full >= threshold, 255, 0).astype(np.uint8), mode="L").save(png)


def write_ad2_submission(models: ArtifactStore, root: str | os.PathLike[str], out: str | os.PathLike[str],
                         categories: Sequence[str] | None = None, device: str | None = None) -> dict[str, dict]:
    """Write the server's folders for every category's newest ``mvtec_ad2`` model in ``models``; return the records.

    ``root``: the MVTec AD 2 root; ``categories``: default every category with a model.
    Raises ``DataError`` when a category has no model or its images are missing.
    """
    ds = get_dataset("mvtec_ad2")
    root, out = Path(root), Path(out)
    newest: dict[str, object] = {}
    for m in find_models(models, "mvtec_ad2"):  # newest first
        newest.setdefault(m.category, m)
    cats = list(categories) if categories else sorted(newest)
    if not cats:
        raise DataError(f"{models.uri()}: no complete mvtec_ad2 model — train one with "
                        "`mrkd train ROOT --dataset mvtec_ad2` first")
    records: dict[str, dict] = {}
    for cat in cats:
        stored = newest.get(cat)
        if stored is None:
            raise DataError(f"{models.uri()}: no trained mvtec_ad2 model for {cat!r} — train it first")
        loaded = load_model_file(models, stored.model)
        cfg = loaded.config.replace(progress=False, **({"device": device} if device else {}))
        place_model(loaded.model, cfg, resolve_device(cfg.device))
        validation = ds.validation_samples(root, cat)
        threshold = normal_threshold(evaluate(loaded.model, cfg, validation, keep_maps=True, metrics=False).maps,
                                     SEG_THRESHOLD_K)
        written = 0
        for split in PRIVATE_SPLITS:
            samples = ds.private_samples(root, cat, split)
            maps = evaluate(loaded.model, cfg, samples, keep_maps=True, metrics=False).maps
            for sample, amap in zip(samples, maps):
                rel = Path(sample.path).relative_to(root).with_suffix("")
                write_prediction(amap, image_size(sample.path), threshold, out / MAPS_DIR / rel.with_suffix(".tiff"),
                                 out / MASKS_DIR / rel.with_suffix(".png"))
                written += 1
        records[cat] = {"model": models.uri(stored.model), "threshold": threshold, "images": written}
        log.info("%s: %d private images written (threshold %.6g)", cat, written, threshold)
    (out / "thresholds.json").write_text(json.dumps(records, indent=2, sort_keys=True))
    return records
