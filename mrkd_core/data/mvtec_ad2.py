"""MVTec AD 2 (Heckler-Kram et al., "The MVTec AD 2 Dataset: Advanced Scenarios for Unsupervised
Anomaly Detection", arXiv:2503.21622, 2025): 8 scenarios, large images, small defects.

Layout (``mvtec_ad_2.tar.gz``, categories at the top; as anomalib's ``MVTecAD2Dataset`` and
MVTec's own ``mvtec_ad_2_public_offline.py`` read it)::

    <root>/<category>/train/good/000_regular.png
    <root>/<category>/validation/good/*.png                   defect-free: where thresholds are chosen
    <root>/<category>/test_public/good/*.png
    <root>/<category>/test_public/bad/*.png
    <root>/<category>/test_public/ground_truth/bad/<stem>_mask.png
    <root>/<category>/test_private/*.png                      no labels: scored by MVTec's server
    <root>/<category>/test_private_mixed/*.png                the same, under mixed lighting

Protocol (docs/datasets.md): train on ``train/good``; the metrics are measured on
``test_public``: the paper's (image AU-ROC, pixel AU-ROC, AU-PRO up to FPR 0.3, ...) and
MVTec AD 2's own, AU-PRO up to FPR 0.05 (``au_pro_005``) and the segmentation F1
(``seg_f1``) at a threshold chosen on ``validation/good`` alone (mean + 3 std of its pixel
scores, ``seg_threshold``). Predictions for ``test_private``/``test_private_mixed`` are
written in the evaluation server's layout by ``mrkd ad2-submission``
(``mrkd_core.inference.submission``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from mrkd_core.data.base import (
    EvaluationProtocol,
    Problem,
    Sample,
    ScoreMaps,
    list_dirs,
    list_images,
)
from mrkd_core.data.catalog import catalogued
from mrkd_core.data.download import DownloadableMixin, DownloadInfo
from mrkd_core.data.mvtec import MVTecLayout
from mrkd_core.data.validate import check_image
from mrkd_core.errors import DataError
from mrkd_core.metrics import au_pro, normal_threshold, seg_f1

log = logging.getLogger(__name__)

MVTEC_AD2_CATEGORIES: tuple[str, ...] = (
    "can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts",
)
VALIDATION_DIR = "validation"
PRIVATE_SPLITS: tuple[str, ...] = ("test_private", "test_private_mixed")
# The threshold rule of the segmentation F1: mean + SEG_THRESHOLD_K std of the validation pixel scores.
SEG_THRESHOLD_K = 3.0
# MVTec AD 2 reports AU-PRO integrated up to this false-positive rate.
AD2_PRO_LIMIT = 0.05

MVTEC_AD2_DOWNLOAD = DownloadInfo(
    dataset="mvtec_ad2",
    filename="mvtec_ad_2.tar.gz",
    # MVTec's mydrive share, and the sha256, as anomalib's MVTecAD2 datamodule lists them.
    urls=(("https://www.mydrive.ch/shares/150997/701c90d3aea6588f404936e32a674602/download/"
           "466712769-1743429042/mvtec_ad_2.tar.gz"),),
    sha256="c0ded99ef32bfc8e352d52beb44515e5b292b8598cb963aadfa91ca0763505e4",
    env_var="MRKD_MVTEC_AD2_URL",
)


@dataclass(frozen=True)
class ThresholdedSegmentation(EvaluationProtocol):
    """MVTec AD 2's localisation metrics: AU-PRO up to FPR 0.05 and the F1 of maps binarised at a
    threshold that only defect-free validation images chose (mean + k std of their pixel scores)."""

    validation: tuple[Sample, ...]
    k: float = SEG_THRESHOLD_K
    fpr_limit: float = AD2_PRO_LIMIT
    metrics: ClassVar[tuple[str, ...]] = ("au_pro_005", "seg_f1", "seg_threshold")

    def inputs(self) -> list[Sample]:
        return list(self.validation)

    def describe(self) -> str:
        return (f"MVTec AD 2 protocol: au_pro_005 (AU-PRO up to FPR {self.fpr_limit}), seg_f1 at seg_threshold = "
                f"mean + {self.k:g} std of the pixel scores of validation/good ({len(self.validation)} images)")

    def compute(self, maps: np.ndarray, masks: np.ndarray, scores: np.ndarray, samples: Sequence[Sample],
                score_maps: ScoreMaps) -> dict[str, float]:
        threshold = normal_threshold(score_maps(self.validation), self.k)
        log.info("MVTec AD 2 segmentation threshold %.6g (mean + %g std over %d validation images)", threshold,
                 self.k, len(self.validation))
        return {"au_pro_005": au_pro(maps, masks, self.fpr_limit), "seg_f1": seg_f1(maps, masks, threshold),
                "seg_threshold": threshold}


@catalogued("mvtec_ad2")
class MVTecAD2(DownloadableMixin, MVTecLayout):
    """The 8 scenarios of MVTec AD 2: train/good, validation/good, test_public, and the unlabelled private sets."""

    description = "MVTec AD 2: 8 scenarios, validation set for thresholds, public and private test sets"
    known_categories = MVTEC_AD2_CATEGORIES
    test_dir = "test_public"
    ground_truth_dir = "test_public/ground_truth"
    category_entries = ("train", VALIDATION_DIR, "test_public", *PRIVATE_SPLITS)
    download_info = MVTEC_AD2_DOWNLOAD

    def validation_samples(self, root: str | os.PathLike[str], category: str) -> list[Sample]:
        """The defect-free ``validation/good`` images (label 0): where thresholds are chosen."""
        folder = self._category_dir(root, category) / VALIDATION_DIR / self.good_dir
        images = list_images(folder)
        if not images:
            raise DataError(f"{folder}: no validation images — MVTec AD 2 chooses its segmentation threshold on "
                            "them; restore the folder from the archive")
        return [Sample(str(p), None, 0, self.good_dir, category) for p in images]

    def private_samples(self, root: str | os.PathLike[str], category: str, split: str) -> list[Sample]:
        """The unlabelled images of ``test_private`` or ``test_private_mixed`` (label 0 stands for "unknown")."""
        if split not in PRIVATE_SPLITS:
            raise DataError(f"{split!r} is not a private test set of MVTec AD 2 — choose one of {', '.join(PRIVATE_SPLITS)}")
        folder = self._category_dir(root, category) / split
        images = list_images(folder)
        if not images:
            raise DataError(f"{folder}: no images — restore the folder from the archive")
        return [Sample(str(p), None, 0, "unknown", category) for p in images]

    def evaluation_protocol(self, root: str | os.PathLike[str], category: str) -> ThresholdedSegmentation:
        return ThresholdedSegmentation(tuple(self.validation_samples(root, category)))

    def _check_extra(self, cat_dir: Path) -> list[Problem]:
        problems: list[Problem] = []
        validation = cat_dir / VALIDATION_DIR
        for entry in list_dirs(validation):
            if entry.name != self.good_dir:
                problems.append(Problem(str(entry), "unexpected", f"unexpected entry in {VALIDATION_DIR}/",
                                        f"only {VALIDATION_DIR}/{self.good_dir} (defect-free images)"))
        images = self._images_in(validation / self.good_dir, problems)
        if not images:
            problems.append(Problem(str(validation / self.good_dir), "missing_file", "no validation images",
                                    "the defect-free images MVTec AD 2 chooses its segmentation threshold on"))
        for split in PRIVATE_SPLITS:  # unlabelled: images directly in the folder (anything else is reported)
            images += self._images_in(cat_dir / split, problems)
        for image in images:
            check_image(image, problems)
        return problems
