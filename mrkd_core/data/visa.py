"""VisA, the Visual Anomaly dataset (Zou et al., "SPot-the-Difference Self-Supervised Pre-training for
Anomaly Detection and Segmentation", ECCV 2022): 12 objects, 10,821 images.

Layout (``VisA_20220922.tar`` as published, read as it is; as anomalib's ``Visa`` datamodule
and the authors' ``prepare_data.py`` read it)::

    <root>/split_csv/1cls.csv                        the published 1-class split
    <root>/<object>/Data/Images/Normal/<id>.JPG
    <root>/<object>/Data/Images/Anomaly/<id>.JPG
    <root>/<object>/Data/Masks/Anomaly/<id>.png      instance-labelled: 0 background, 1..k defects
    <root>/<object>/image_anno.csv
    <root>/LICENSE-DATASET

``split_csv/1cls.csv`` (header ``object,split,label,image,mask``; ``label`` normal|anomaly;
paths relative to the root) is the protocol: every image it lists as ``train`` trains (all
normal), every ``test`` image tests. A mask's non-zero pixels are the defect, whatever
instance they belong to (the authors' preparation binarises them the same way). Nothing is
copied or rewritten: no ``visa_pytorch/`` folder as anomalib makes.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from mrkd_core.data.base import (
    DatasetLayout,
    GroundTruth,
    Problem,
    Sample,
    find_images,
    is_hidden,
    list_dirs,
    require_root,
)
from mrkd_core.data.catalog import catalogued
from mrkd_core.data.download import DownloadableMixin, DownloadInfo
from mrkd_core.data.validate import check_image, check_mask
from mrkd_core.errors import DataError

log = logging.getLogger(__name__)

VISA_CATEGORIES: tuple[str, ...] = (
    "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
    "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
)
SPLIT_CSV = "split_csv/1cls.csv"
CSV_HEADER = ("object", "split", "label", "image", "mask")
# Entries at the root that belong to the distribution (the other split files, the licence).
_ROOT_EXTRAS = ("split_csv", "LICENSE-DATASET")

VISA_DOWNLOAD = DownloadInfo(
    dataset="visa",
    filename="VisA_20220922.tar",
    # The authors' S3 bucket (github.com/amazon-science/spot-diff), and the sha256 anomalib lists for it.
    urls=("https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar",),
    sha256="2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362",
    env_var="MRKD_VISA_URL",
)


@dataclass(frozen=True)
class SplitRow:
    """One line of ``1cls.csv`` (paths relative to the root, as listed)."""

    line: int
    category: str
    split: str  # train | test
    anomalous: bool
    image: str
    mask: str


def read_split(root: Path) -> list[SplitRow]:
    """Every row of ``split_csv/1cls.csv``; a malformed file is one DataError naming the file and line."""
    path = root / SPLIT_CSV
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            lines = list(csv.reader(fh))
    except FileNotFoundError:
        raise DataError(f"{path}: not found — VisA's published 1-class split; use the root of VisA_20220922.tar "
                        "(it holds split_csv/ and the object folders)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read it ({exc}) — restore it from the archive") from None
    if not lines or tuple(c.strip() for c in lines[0]) != CSV_HEADER:
        raise DataError(f"{path}: the first line must be {','.join(CSV_HEADER)} — restore it from the archive")
    rows = []
    for n, fields in enumerate(lines[1:], start=2):
        if not fields:
            continue
        values = [f.strip() for f in fields]
        ok = len(values) == 5 and values[1] in ("train", "test") and values[2] in ("normal", "anomaly")
        anomalous = ok and values[2] == "anomaly"
        bad_path = any(v.startswith(("/", "\\")) or ".." in Path(v).parts for v in values[3:5] if ok)
        if not ok or bad_path or (anomalous and not values[4]) or (anomalous and values[1] == "train"):
            raise DataError(f"{path}:{n}: {','.join(fields)!r} is not a split row — expected object, train|test, "
                            "normal|anomaly, the image path and (anomalies) the mask path, relative to the root")
        rows.append(SplitRow(n, values[0], values[1], anomalous, values[3], values[4]))
    return rows


@catalogued("visa")
class VisA(DownloadableMixin, DatasetLayout):
    """The 12 objects of VisA under the published 1-class split (``split_csv/1cls.csv``)."""

    description = "VisA: 12 objects, the published 1-class split, instance-labelled masks"
    download_info = VISA_DOWNLOAD

    def looks_like_root(self, path: Path) -> bool:
        return (path / SPLIT_CSV).is_file()

    def categories(self, root: str | os.PathLike[str]) -> list[str]:
        path = require_root(root)
        return [c for c in VISA_CATEGORIES if (path / c).is_dir()]

    def ground_truth(self, root: str | os.PathLike[str], category: str) -> GroundTruth:
        return GroundTruth(True, "Data/Masks/Anomaly/<id>.png, instance-labelled: any non-zero value is a defect")

    def _rows(self, root: str | os.PathLike[str], category: str, split: str) -> tuple[Path, list[SplitRow]]:
        path = require_root(root)
        if category not in VISA_CATEGORIES:
            raise DataError(f"{path}: {category!r} is not a VisA object — choose one of {', '.join(VISA_CATEGORIES)}")
        rows = [r for r in read_split(path) if r.category == category and r.split == split]
        if not rows:
            raise DataError(f"{path / SPLIT_CSV}: no {split} rows for {category!r} — a complete VisA copy lists "
                            "every object")
        return path, rows

    def train_samples(self, root: str | os.PathLike[str], category: str) -> list[Sample]:
        path, rows = self._rows(root, category, "train")
        return [Sample(str(path / r.image), None, 0, "good", category) for r in sorted(rows, key=lambda r: r.image)]

    def test_samples(self, root: str | os.PathLike[str], category: str) -> list[Sample]:
        path, rows = self._rows(root, category, "test")
        rows = sorted(rows, key=lambda r: (r.anomalous, r.image))  # defect-free first, as every loader here
        return [Sample(str(path / r.image), str(path / r.mask) if r.anomalous else None, int(r.anomalous),
                       "anomaly" if r.anomalous else "good", category) for r in rows]

    # ------------------------------------------------------------------ validation
    def check(self, root: str | os.PathLike[str], categories: list[str] | None = None) -> list[Problem]:
        path = Path(root)
        problems: list[Problem] = []
        try:
            rows = read_split(path)
        except DataError as exc:
            where, _, why = str(exc).partition(": ")
            return [Problem(where, "missing_file" if "not found" in why else "unreadable", why.split(" — ")[0],
                            f"VisA's {SPLIT_CSV} (the published 1-class split)")]
        cats = list(categories) if categories else list(VISA_CATEGORIES)
        for c in cats:
            if c not in VISA_CATEGORIES or not (path / c).is_dir():
                problems.append(Problem(str(path / c), "missing_category", "VisA object folder missing",
                                        f"{path / c}/Data/Images (an incomplete download or extraction?)"))
        for entry in sorted(path.iterdir()):
            if is_hidden(entry) or entry.name in VISA_CATEGORIES or entry.name in _ROOT_EXTRAS:
                continue
            if entry.is_dir() or entry.suffix.lower() not in (".txt", ".md", ".pdf"):
                problems.append(Problem(str(entry), "unexpected", "not part of VisA",
                                        "only the 12 object folders, split_csv/ and LICENSE-DATASET"))
        for c in cats:
            if (path / c).is_dir():
                problems += self._check_category(path, c, [r for r in rows if r.category == c])
        return problems

    def _check_category(self, root: Path, category: str, rows: list[SplitRow]) -> list[Problem]:
        problems: list[Problem] = []
        listed: set[Path] = set()
        for r in rows:
            image = root / r.image
            listed.update([image, root / r.mask] if r.anomalous else [image])
            if not image.is_file():
                problems.append(Problem(str(image), "missing_file", f"{SPLIT_CSV}:{r.line} lists it, it is not there",
                                        "the image, as the archive holds it"))
                continue
            size = check_image(image, problems)
            if r.anomalous:
                mask = root / r.mask
                if not mask.is_file():
                    problems.append(Problem(str(mask), "missing_mask", f"{SPLIT_CSV}:{r.line} lists it, it is not there",
                                            f"the mask of {image}"))
                else:
                    check_mask(mask, image, size, problems)
        data = root / category / "Data"
        for folder in (data / "Images", data / "Masks"):
            for file in find_images(folder):
                if file not in listed:
                    problems.append(Problem(str(file), "unexpected", f"not listed in {SPLIT_CSV}",
                                            "only the images and masks of the published split"))
        if not any(r.split == "train" for r in rows):
            problems.append(Problem(str(root / category), "no_train_images", f"no train rows in {SPLIT_CSV}",
                                    "the object's training images in the split"))
        if not any(r.split == "test" for r in rows):
            problems.append(Problem(str(root / category), "no_test_images", f"no test rows in {SPLIT_CSV}",
                                    "the object's test images in the split"))
        for entry in list_dirs(root / category):
            if entry.name != "Data":
                problems.append(Problem(str(entry), "unexpected", "unexpected folder in a VisA object",
                                        "Data/Images, Data/Masks and image_anno.csv"))
        return problems
