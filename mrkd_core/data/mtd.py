"""Magnetic Tile Defects (Huang et al., 2018), one category called ``mtd``.

Layout (the GitHub repository abin24/Magnetic-tile-defect-datasets.)::

    <root>/MT_{Blowhole,Break,Crack,Fray,Free,Uneven}/Imgs/<name>.jpg   grey, variable size
    <root>/MT_*/Imgs/<name>.png                                         mask, same stem and size

MTD has no train/test split. The paper follows DifferNet: 80 % of the defect-free
(MT_Free) images train, the remaining 20 % plus every defective image test. DifferNet's
list is not distributed, so we draw the 80 % with a seeded permutation and write it to
``<root>/mrkd_split.json``. Once written, the file wins: every later call, on any machine
sharing the folder, reuses it (a different seed argument is logged, not applied), so that
all runs of a benchmark see the same split. Delete the file to draw a new one.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import ClassVar

from mrkd_core.data.base import (
    SPLIT_FILE,
    DatasetLayout,
    Problem,
    Sample,
    file_index,
    is_hidden,
    list_dirs,
    name_key,
    require_root,
)
from mrkd_core.data.catalog import catalogued
from mrkd_core.data.download import DownloadableMixin, DownloadInfo
from mrkd_core.data.split import DEFAULT_SPLIT_SEED, TRAIN_FRACTION, HoldoutSplit, SplitFile, draw_split, split_problems
from mrkd_core.data.split import load_or_create_split as _load_split
from mrkd_core.data.validate import check_image, check_mask
from mrkd_core.errors import DataError

log = logging.getLogger(__name__)

__all__ = ["MTD", "MTDSplit", "MTD_CATEGORY", "MTD_CLASSES", "draw_split", "load_or_create_split"]

MTD_CATEGORY = "mtd"
MTD_FREE = "MT_Free"
# Folder → defect_type ("good" for defect-free, like MVTec AD, so reports group alike).
MTD_CLASSES: dict[str, str] = {
    MTD_FREE: "good",
    "MT_Blowhole": "blowhole",
    "MT_Break": "break",
    "MT_Crack": "crack",
    "MT_Fray": "fray",
    "MT_Uneven": "uneven",
}
# DifferNet: 761 of the 952 defect-free images (floor of TRAIN_FRACTION = 80 %), seed 0.
SPLIT_FORMAT = "mrkd-mtd-split/1"
_IMAGE_EXT = ".jpg"
_MASK_EXT = ".png"

MTD_DOWNLOAD = DownloadInfo(
    dataset="mtd",
    filename="Magnetic-tile-defect-datasets.-master.zip",
    # GitHub's archive of the default branch; GitHub may re-create it (different bytes, same
    # files), so no stable sha256 exists: the observed one goes into the completion marker.
    url="https://github.com/abin24/Magnetic-tile-defect-datasets./archive/refs/heads/master.zip",
    sha256=None,
    env_var="MRKD_MTD_URL",
)


# The persisted train/test division of MT_Free (kept under its old name for callers).
MTDSplit = HoldoutSplit


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == _IMAGE_EXT
                   and not is_hidden(p)), key=lambda p: p.name)


def _mask_of(image: Path, index: dict[str, Path]) -> Path | None:
    """The same-stem .png mask of ``image`` as it is on disk (extension in any case)."""
    return index.get(name_key(image.stem + _MASK_EXT))


def _free_images(root: Path) -> list[str]:
    return [f"{MTD_FREE}/Imgs/{p.name}" for p in _images(root / MTD_FREE / "Imgs")]


def _split_file(root: Path) -> SplitFile:
    return SplitFile(root / SPLIT_FILE, root, SPLIT_FORMAT,
                     "DifferNet/MRKD: floor(80%) of MT_Free train (seeded permutation); "
                     "the rest of MT_Free and every defective image test")


def load_or_create_split(root: str | os.PathLike[str], seed: int = DEFAULT_SPLIT_SEED,
                         train_fraction: float = TRAIN_FRACTION) -> MTDSplit:
    """The split stored in ``<root>/mrkd_split.json``, drawn and written on first use.

    A stored split wins over ``seed`` (logged when they differ). Listed files that no longer
    exist are a DataError; defect-free images added since are left out (logged).
    """
    path = require_root(root)
    free = _free_images(path)
    if not free and not (path / SPLIT_FILE).is_file():
        raise DataError(f"{path / MTD_FREE / 'Imgs'}: no defect-free .jpg images — expected the MTD layout "
                        "MT_Free/Imgs/*.jpg (see docs/datasets.md)")
    return _load_split(_split_file(path), free, seed, train_fraction, what="MTD split")


@catalogued("mtd")
class MTD(DownloadableMixin, DatasetLayout):
    """Magnetic tiles; one category ``mtd``; split as DifferNet (see module docstring)."""

    description = "Magnetic Tile Defects: one category, 5 defect types, DifferNet's 80/20 split"
    download_info = MTD_DOWNLOAD
    split_seed: ClassVar[int] = DEFAULT_SPLIT_SEED

    def looks_like_root(self, path: Path) -> bool:
        return (path / MTD_FREE / "Imgs").is_dir()

    def categories(self, root: str | os.PathLike[str]) -> list[str]:
        return [MTD_CATEGORY] if self.looks_like_root(require_root(root)) else []

    def _root(self, root: str | os.PathLike[str], category: str) -> Path:
        path = require_root(root)
        if category != MTD_CATEGORY:
            raise DataError(f"{path}: MTD has one category, {MTD_CATEGORY!r}, not {category!r}")
        if not self.looks_like_root(path):
            raise DataError(f"{path / MTD_FREE / 'Imgs'}: not found — expected the MTD layout "
                            "MT_<class>/Imgs/*.jpg (see docs/datasets.md)")
        return path

    def split(self, root: str | os.PathLike[str]) -> MTDSplit:
        return load_or_create_split(root, self.split_seed)

    def train_samples(self, root: str | os.PathLike[str], category: str = MTD_CATEGORY) -> list[Sample]:
        path = self._root(root, category)
        split = self.split(path)
        return [Sample(str(path / rel), None, 0, "good", MTD_CATEGORY) for rel in split.train]

    def test_samples(self, root: str | os.PathLike[str], category: str = MTD_CATEGORY) -> list[Sample]:
        path = self._root(root, category)
        split = self.split(path)
        samples = [Sample(str(path / rel), None, 0, "good", MTD_CATEGORY) for rel in split.test_good]
        for folder, defect in MTD_CLASSES.items():
            if folder == MTD_FREE:
                continue
            index = file_index(path / folder / "Imgs")
            for image in _images(path / folder / "Imgs"):
                mask = _mask_of(image, index)
                if mask is None:
                    raise DataError(f"{image}: ground-truth mask missing — expected {image.with_suffix(_MASK_EXT)}; "
                                    "add it or remove the image")
                samples.append(Sample(str(image), str(mask), 1, defect, MTD_CATEGORY))
        return samples

    # ------------------------------------------------------------------ validation
    def check(self, root: str | os.PathLike[str], categories: list[str] | None = None) -> list[Problem]:
        path = Path(root)
        problems: list[Problem] = []
        for c in categories or []:
            if c != MTD_CATEGORY:
                problems.append(Problem(str(path / c), "missing_category", f"MTD has no category {c!r}",
                                        f"the single category {MTD_CATEGORY!r}"))
        for entry in sorted(path.iterdir()):
            if entry.is_dir() and not is_hidden(entry) and entry.name not in MTD_CLASSES:
                problems.append(Problem(str(entry), "unexpected", "folder is not an MTD class",
                                        f"only {', '.join(MTD_CLASSES)}"))
        n_free = 0
        for folder, defect in MTD_CLASSES.items():
            class_dir = path / folder
            if not class_dir.is_dir():
                problems.append(Problem(str(class_dir), "missing_category", "MTD class folder missing",
                                        f"{class_dir}/Imgs with .jpg images and .png masks"))
                continue
            for entry in list_dirs(class_dir) + [p for p in class_dir.iterdir() if p.is_file() and not is_hidden(p)]:
                if entry.name != "Imgs":
                    problems.append(Problem(str(entry), "unexpected", "unexpected entry in an MTD class folder",
                                            "only Imgs/"))
            n = self._check_imgs(class_dir / "Imgs", defect != "good", problems)
            if defect == "good":
                n_free = n
        if (path / MTD_FREE).is_dir() and n_free == 0:
            problems.append(Problem(str(path / MTD_FREE / "Imgs"), "no_train_images", "no defect-free images",
                                    "MT_Free/Imgs/*.jpg (80 % of them are the training set)"))
        problems += self._check_split(path)
        return problems

    def _check_imgs(self, imgs: Path, defective: bool, problems: list[Problem]) -> int:
        if not imgs.is_dir():
            return 0
        images = {p.stem: p for p in _images(imgs)}
        for entry in sorted(imgs.iterdir()):
            if is_hidden(entry):
                continue
            suffix = entry.suffix.lower()
            if entry.is_file() and suffix == _MASK_EXT and entry.stem in images:
                continue
            if entry.is_file() and suffix == _IMAGE_EXT:
                continue
            what = "mask without a .jpg image" if suffix == _MASK_EXT else "not an MTD image or mask"
            problems.append(Problem(str(entry), "unexpected", what, f"<name>.jpg images with same-stem .png masks in {imgs}"))
        index = file_index(imgs)
        for image in images.values():
            size = check_image(image, problems)
            mask = _mask_of(image, index)
            if mask is None:
                if defective:
                    problems.append(Problem(str(image), "missing_mask", "defective image has no ground-truth mask",
                                            str(image.with_suffix(_MASK_EXT))))
                continue
            check_mask(mask, image, size, problems)
        return len(images)

    def _check_split(self, path: Path) -> list[Problem]:
        return split_problems(_split_file(path), _free_images(path))
