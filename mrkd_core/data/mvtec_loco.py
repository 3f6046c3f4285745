"""MVTec LOCO AD (Bergmann et al., "Beyond Dents and Scratches: Logical Constraints in Unsupervised
Anomaly Detection and Localization", IJCV 130, 947-969, 2022): logical and structural anomalies.

Layout (``mvtec_loco_anomaly_detection.tar.xz``, categories at the top; as anomalib's
``MVTecLOCODataset`` and the dataset's evaluation code read it)::

    <root>/<category>/train/good/*.png
    <root>/<category>/validation/good/*.png
    <root>/<category>/test/{good,logical_anomalies,structural_anomalies}/<id>.png
    <root>/<category>/ground_truth/<type>/<id>/000.png, 001.png, ...   one PNG per defect
    <root>/<category>/defects_config.json                               per defect type: pixel value,
                                                                         saturation threshold
    <root>/<category>/license.txt, readme.txt

A defective image's ground truth is a *folder*: each PNG holds one defect, its pixels set to
the defect type's ``pixel_value``. The image's mask is the union of the folder's PNGs (what
the paper's metrics see); the protocol keeps them apart for sPRO, each with the saturation
area of its type (``defects_config.json``: an absolute pixel count, or a fraction of the
defect's area when ``relative_saturation``).

Protocol (the dataset's evaluation code, ``get_auc_spro_results``): per anomaly type T
(logical, structural), the test images of T together with every good one: image AU-ROC and
AU-sPRO up to FPR 0.05; and the mean of the two types. Metrics are computed at the
evaluated image size: absolute saturation thresholds, which count pixels of the original
image, are scaled by the area ratio (docs/metrics.md).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from mrkd_core.data.base import (
    EvaluationProtocol,
    GroundTruth,
    Problem,
    Sample,
    ScoreMaps,
    is_hidden,
    list_dirs,
    list_images,
)
from mrkd_core.data.catalog import catalogued
from mrkd_core.data.download import DownloadableMixin, DownloadInfo
from mrkd_core.data.io import open_image
from mrkd_core.data.mvtec import MVTecLayout
from mrkd_core.data.validate import check_image
from mrkd_core.errors import DataError
from mrkd_core.metrics import SaturatedRegion, au_spro, image_auroc, saturation_area

log = logging.getLogger(__name__)

MVTEC_LOCO_CATEGORIES: tuple[str, ...] = (
    "breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors",
)
LOGICAL = "logical_anomalies"
STRUCTURAL = "structural_anomalies"
ANOMALY_TYPES: dict[str, str] = {LOGICAL: "logical", STRUCTURAL: "structural"}
DEFECTS_CONFIG = "defects_config.json"
VALIDATION_DIR = "validation"
# The headline integration limit of AU-sPRO in the LOCO paper and its evaluation code's default set.
SPRO_LIMIT = 0.05

MVTEC_LOCO_DOWNLOAD = DownloadInfo(
    dataset="mvtec_loco",
    filename="mvtec_loco_anomaly_detection.tar.xz",
    # MVTec's mydrive share, and the sha256, as anomalib's MVTecLOCODataset lists them.
    urls=(("https://www.mydrive.ch/shares/48237/1b9106ccdfbb09a0c414bd49fe44a14a/download/"
           "430647091-1646842701/mvtec_loco_anomaly_detection.tar.xz"),),
    sha256="9e7c84dba550fd2e59d8e9e231c929c45ba737b6b6a6d3814100f54d63aae687",
    env_var="MRKD_MVTEC_LOCO_URL",
)


@dataclass(frozen=True)
class DefectType:
    """One entry of ``defects_config.json``: the pixel value that marks the defect, and its saturation."""

    name: str
    pixel_value: int
    saturation_threshold: float
    relative: bool


def read_defects_config(path: str | os.PathLike[str]) -> dict[int, DefectType]:
    """``defects_config.json`` as {pixel value: DefectType}, checked as the evaluation code checks it.

    The file is a JSON list of ``{"defect_name", "pixel_value" (1-255), "saturation_threshold"
    (an int of pixels, or a float in (0, 1] when "relative_saturation" is true),
    "relative_saturation"}``. Anything else is a DataError naming the file and the entry.
    """
    p = Path(path)
    try:
        entries = json.loads(p.read_text())
    except FileNotFoundError:
        raise DataError(f"{p}: not found — MVTec LOCO AD's saturation thresholds are in it; restore it from the "
                        "archive") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{p}: not readable as JSON ({exc}) — restore it from the archive") from None
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{p}: expected a non-empty JSON list of defect types")
    defects: dict[int, DefectType] = {}
    for i, e in enumerate(entries):
        try:
            name, value = str(e["defect_name"]), int(e["pixel_value"])
            relative = bool(e["relative_saturation"])
            threshold = e["saturation_threshold"]
            ok = 1 <= value <= 255 and value == e["pixel_value"] and (
                isinstance(threshold, float) and 0.0 < threshold <= 1.0 if relative
                else isinstance(threshold, int) and not isinstance(threshold, bool) and threshold > 0)
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok or value in defects:
            raise DataError(f"{p}: entry {i} ({e!r}) is not a defect type: expected defect_name, a unique "
                            "pixel_value in 1-255, saturation_threshold (pixels, or a fraction in (0, 1] when "
                            "relative_saturation) and relative_saturation")
        defects[value] = DefectType(name, value, float(threshold), relative)
    return defects


def read_channel(path: Path, defects: dict[int, DefectType], config: Path) -> tuple[np.ndarray, DefectType]:
    """One ground-truth PNG of LOCO: its defect pixels (bool, original size) and its defect type.

    As the evaluation code requires, the PNG holds exactly one non-zero value, a
    ``pixel_value`` of ``defects_config.json``; a DataError names the file otherwise.
    """
    with open_image(path) as img:
        values = np.asarray(img)
    if values.ndim != 2:
        raise DataError(f"{path}: a LOCO mask must have one channel, this one has {values.shape[2]} — restore it")
    found = np.unique(values)
    positive = found[found > 0]
    if positive.size != 1:
        raise DataError(f"{path}: a LOCO mask holds one defect (one non-zero value), found values "
                        f"{positive.tolist()[:5]} — restore it from the archive")
    value = int(positive[0])
    if value not in defects:
        raise DataError(f"{path}: pixel value {value} is no defect type of {config} "
                        f"(known: {sorted(defects)}) — restore the mask or the config")
    return values > 0, defects[value]


@dataclass(frozen=True)
class LogicalStructural(EvaluationProtocol):
    """MVTec LOCO AD's metrics per anomaly type: image AU-ROC and AU-sPRO (FPR 0.05), and their means."""

    config: str  # the category's defects_config.json
    defects: tuple[DefectType, ...]
    fpr_limit: float = SPRO_LIMIT
    metrics: ClassVar[tuple[str, ...]] = ("image_auroc_logical", "image_auroc_structural", "image_auroc_mean_types",
                                          "au_spro_logical", "au_spro_structural", "au_spro_mean_types")

    def describe(self) -> str:
        return (f"MVTec LOCO AD protocol: image AU-ROC and AU-sPRO (FPR {self.fpr_limit}) per anomaly type "
                f"(logical, structural, each with the good images) and their means; saturation of "
                f"{len(self.defects)} defect types from {DEFECTS_CONFIG}")

    def compute(self, maps: np.ndarray, masks: np.ndarray, scores: np.ndarray, samples: Sequence[Sample],
                score_maps: ScoreMaps) -> dict[str, float]:
        by_value = {d.pixel_value: d for d in self.defects}
        size = maps.shape[1:]
        regions: dict[int, list[tuple[np.ndarray, float]]] = {}
        vanished = 0
        for i, s in enumerate(samples):
            if s.label != 1 or s.mask_path is None:
                continue
            regions[i] = []
            for png in list_images(Path(s.mask_path)):
                mask, defect = read_channel(png, by_value, Path(self.config))
                area_scale = size[0] * size[1] / mask.size
                small = np.asarray(Image.fromarray(mask).resize((size[1], size[0]), Image.Resampling.NEAREST))
                area = int(np.count_nonzero(small))
                if area == 0:  # smaller than a pixel at the evaluated size: no map can find it there
                    vanished += 1
                    continue
                regions[i].append((small, saturation_area(area, defect.saturation_threshold, defect.relative,
                                                          area_scale)))
        if vanished:
            log.warning("%d ground-truth defect(s) vanish at %d×%d px and are left out of sPRO", vanished, *size)
        out: dict[str, float] = {}
        for folder, kind in ANOMALY_TYPES.items():
            keep = [i for i, s in enumerate(samples) if s.label == 0 or s.defect_type == folder]
            labels = np.array([samples[i].label for i in keep])
            out[f"image_auroc_{kind}"] = image_auroc(scores[keep], labels)
            picked = [SaturatedRegion(j, mask, sat) for j, i in enumerate(keep)
                      for mask, sat in regions.get(i, [])]
            out[f"au_spro_{kind}"] = au_spro(maps[keep], picked, self.fpr_limit)
        for metric in ("image_auroc", "au_spro"):
            out[f"{metric}_mean_types"] = 0.5 * (out[f"{metric}_logical"] + out[f"{metric}_structural"])
        return out


@catalogued("mvtec_loco")
class MVTecLOCO(DownloadableMixin, MVTecLayout):
    """The 5 categories of MVTec LOCO AD; a defective image's mask is the union of its ground-truth folder."""

    description = "MVTec LOCO AD: 5 categories, logical and structural anomalies, masks as folders of PNGs"
    known_categories = MVTEC_LOCO_CATEGORIES
    mask_names = ("{stem}",)  # a folder named like the image, one PNG per defect inside
    category_entries = ("train", VALIDATION_DIR, "test", "ground_truth", DEFECTS_CONFIG, "license.txt", "readme.txt")
    download_info = MVTEC_LOCO_DOWNLOAD

    def ground_truth(self, root: str | os.PathLike[str], category: str) -> GroundTruth:
        return GroundTruth(True, "ground_truth/<type>/<id>/*.png, one PNG per defect; the mask is their union")

    def find_mask(self, cat_dir: Path, defect: str, image: Path, index: dict[str, Path] | None = None) -> Path | None:
        folder = self.gt_root(cat_dir) / defect / image.stem
        return folder if folder.is_dir() else None

    def defects(self, root: str | os.PathLike[str], category: str) -> dict[int, DefectType]:
        """The category's ``defects_config.json``, by pixel value."""
        return read_defects_config(self._category_dir(root, category) / DEFECTS_CONFIG)

    def evaluation_protocol(self, root: str | os.PathLike[str], category: str) -> LogicalStructural:
        config = self._category_dir(root, category) / DEFECTS_CONFIG
        return LogicalStructural(str(config), tuple(read_defects_config(config).values()))

    def _check_ground_truth(self, cat_dir: Path, test_defects: set[str], used: set[Path]) -> list[Problem]:
        problems: list[Problem] = []
        gt = self.gt_root(cat_dir)
        for entry in sorted(gt.iterdir()) if gt.is_dir() else []:
            if is_hidden(entry):
                continue
            if not entry.is_dir() or entry.name == self.good_dir or entry.name not in test_defects:
                problems.append(Problem(str(entry), "unexpected", "not a ground-truth folder of a test anomaly type",
                                        f"ground_truth/<type>/ for the types in {self.test_root(cat_dir)}"))
                continue
            for folder in sorted(entry.iterdir()):
                if is_hidden(folder) or folder in used:
                    continue
                what = "mask folder without a test image" if folder.is_dir() else "file outside a mask folder"
                problems.append(Problem(str(folder), "unexpected", what,
                                        f"ground_truth/{entry.name}/<id>/ holding the masks of test/{entry.name}/<id>.png"))
        return problems

    def _check_extra(self, cat_dir: Path) -> list[Problem]:
        problems: list[Problem] = []
        for entry in list_dirs(cat_dir / VALIDATION_DIR):
            if entry.name != self.good_dir:
                problems.append(Problem(str(entry), "unexpected", f"unexpected entry in {VALIDATION_DIR}/",
                                        f"only {VALIDATION_DIR}/{self.good_dir}"))
        for image in self._images_in(cat_dir / VALIDATION_DIR / self.good_dir, problems):
            check_image(image, problems)
        config = cat_dir / DEFECTS_CONFIG
        try:
            defects = read_defects_config(config)
        except DataError as exc:
            problems.append(Problem(str(config), "missing_file", str(exc).split(": ", 1)[-1].split(" — ")[0],
                                    f"MVTec LOCO AD's {DEFECTS_CONFIG} (pixel values and saturation thresholds)"))
            return problems
        gt = self.gt_root(cat_dir)
        for kind in ANOMALY_TYPES:
            for folder in list_dirs(gt / kind):
                for png in list_images(folder):
                    try:
                        read_channel(png, defects, config)
                    except DataError as exc:
                        if "cannot read image" not in str(exc):  # unreadable files are reported by check_mask
                            problems.append(Problem(str(png), "mask_value", str(exc).split(": ", 1)[-1],
                                                    f"one defect per PNG, valued as in {config}"))
        return problems
