"""MVTec AD (Bergmann et al., CVPR 2019) and the shared loader for every MVTec-style layout.

Layout::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/good/*.png
    <root>/<category>/test/<defect>/<id>.png
    <root>/<category>/ground_truth/<defect>/<id>_mask.png

``MVTecLayout`` is parametrised by the name of the defect-free folder and the mask naming
rule, so BTAD (``ok``/``ko``, same-stem masks) and user folders reuse it unchanged.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import ClassVar

from mrkd_core.data.base import (
    COMPLETION_MARKER,
    IMAGE_EXTENSIONS,
    SPLIT_FILE,
    DatasetLayout,
    GroundTruth,
    Problem,
    Sample,
    file_index,
    is_hidden,
    is_image_file,
    list_dirs,
    list_images,
    name_key,
    require_root,
)
from mrkd_core.data.catalog import catalogued
from mrkd_core.data.download import DownloadableMixin, DownloadInfo
from mrkd_core.data.validate import check_image, check_mask
from mrkd_core.errors import DataError

log = logging.getLogger(__name__)

MVTEC_CATEGORIES: tuple[str, ...] = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)
MVTEC_TEXTURES: tuple[str, ...] = ("carpet", "grid", "leather", "tile", "wood")
MVTEC_OBJECTS: tuple[str, ...] = tuple(c for c in MVTEC_CATEGORIES if c not in MVTEC_TEXTURES)
# Stored as 1-channel PNGs; load_image turns them into 3 equal channels.
MVTEC_GRAYSCALE: tuple[str, ...] = ("grid", "screw", "zipper")

MVTEC_DOWNLOAD = DownloadInfo(
    dataset="mvtec",
    filename="mvtec_anomaly_detection.tar.xz",
    # Last known public URL (MVTec's own mydrive share). It has moved before: override it
    # with MRKD_MVTEC_URL or --url; the sha256 below is what makes any mirror safe.
    url="https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/"
        "420938113-1629952094/mvtec_anomaly_detection.tar.xz",
    sha256="cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
    env_var="MRKD_MVTEC_URL",
)

# Files at a dataset root that belong to the distribution or to us, never reported.
_ROOT_DOC_SUFFIXES = (".txt", ".md", ".pdf")
_OWN_FILES = (COMPLETION_MARKER, SPLIT_FILE)


class MVTecLayout(DatasetLayout):
    """Any dataset in MVTec AD layout; subclasses set the folder names and mask rule."""

    good_dir: ClassVar[str] = "good"
    # None: categories are discovered (every sub-folder that contains train/).
    known_categories: ClassVar[tuple[str, ...] | None] = None
    # Mask file names tried in order, relative to ground_truth/<defect>/.
    mask_names: ClassVar[tuple[str, ...]] = ("{stem}_mask.png",)
    # True: a category without ground_truth/ is image-labelled (a user's folder with only
    # test/good and test/<defect>), evaluated with the image metrics. False (MVTec AD,
    # BTAD): every defective image needs its mask, a missing ground_truth/ is a broken copy.
    masks_optional: ClassVar[bool] = False

    # ------------------------------------------------------------------ discovery
    def categories(self, root: str | os.PathLike[str]) -> list[str]:
        path = require_root(root)
        if self.known_categories is None:
            return [d.name for d in list_dirs(path) if (d / "train").is_dir()]
        return [c for c in self.known_categories if (path / c).is_dir()]

    def looks_like_root(self, path: Path) -> bool:
        """True when ``path`` holds at least one category (used to find the root in an archive)."""
        names = self.known_categories or tuple(d.name for d in list_dirs(path))
        return any((path / c / "train").is_dir() for c in names)

    def _category_dir(self, root: str | os.PathLike[str], category: str) -> Path:
        path = require_root(root)
        if self.known_categories is not None and category not in self.known_categories:
            raise DataError(
                f"{path}: {category!r} is not a {self.name} category — choose one of {', '.join(self.known_categories)}"
            )
        cat_dir = path / category
        if not cat_dir.is_dir():
            available = ", ".join(self.categories(path)) or "none"
            raise DataError(
                f"{cat_dir}: category folder not found — expected {cat_dir}/train/{self.good_dir}; available: {available}"
            )
        return cat_dir

    def has_masks(self, cat_dir: Path) -> bool:
        """Are the defective test images of this category labelled with pixel masks?"""
        return not self.masks_optional or (cat_dir / "ground_truth").is_dir()

    def ground_truth(self, root: str | os.PathLike[str], category: str) -> GroundTruth:
        if self.has_masks(Path(root) / category):
            return GroundTruth(True, f"ground_truth/<defect>/{self.mask_names[0].format(stem='<id>')}")
        return GroundTruth(False, "no ground_truth/ folder")

    def mask_candidates(self, cat_dir: Path, defect: str, image: Path) -> list[Path]:
        return [cat_dir / "ground_truth" / defect / name.format(stem=image.stem) for name in self.mask_names]

    def find_mask(self, cat_dir: Path, defect: str, image: Path,
                  index: dict[str, Path] | None = None) -> Path | None:
        """The mask file of ``image`` as it is on disk; extensions match in any case (``.PNG``).

        ``index``: ``file_index`` of ``ground_truth/<defect>``, to list the folder once per
        defect rather than once per image.
        """
        if index is None:
            index = file_index(cat_dir / "ground_truth" / defect)
        for name in self.mask_names:
            found = index.get(name_key(name.format(stem=image.stem)))
            if found is not None:
                return found
        return None

    # ------------------------------------------------------------------ splits
    def train_samples(self, root: str | os.PathLike[str], category: str) -> list[Sample]:
        cat_dir = self._category_dir(root, category)
        train_dir = cat_dir / "train" / self.good_dir
        if not train_dir.is_dir():
            raise DataError(
                f"{train_dir}: training folder not found — put the defect-free training images of '{category}' there"
            )
        images = list_images(train_dir)
        if not images:
            raise DataError(
                f"{train_dir}: no training images ({'/'.join(IMAGE_EXTENSIONS)}) — add defect-free images of '{category}'"
            )
        return [Sample(str(p), None, 0, self.good_dir, category) for p in images]

    def _test_dirs(self, cat_dir: Path) -> list[Path]:
        """test/ sub-folders, the defect-free one first (then defects alphabetically)."""
        dirs = list_dirs(cat_dir / "test")
        return sorted(dirs, key=lambda d: (d.name != self.good_dir, d.name))

    def test_samples(self, root: str | os.PathLike[str], category: str) -> list[Sample]:
        cat_dir = self._category_dir(root, category)
        test_dir = cat_dir / "test"
        if not test_dir.is_dir():
            raise DataError(f"{test_dir}: test folder not found — expected test/{self.good_dir} and test/<defect> folders")
        samples: list[Sample] = []
        masks = self.has_masks(cat_dir)
        for sub in self._test_dirs(cat_dir):
            defect = sub.name
            index = file_index(cat_dir / "ground_truth" / defect)
            for image in list_images(sub):
                if defect == self.good_dir or not masks:
                    samples.append(Sample(str(image), None, int(defect != self.good_dir), defect, category))
                    continue
                mask = self.find_mask(cat_dir, defect, image, index)
                if mask is None:
                    expected = self.mask_candidates(cat_dir, defect, image)[0]
                    raise DataError(
                        f"{image}: ground-truth mask missing — expected {expected}; add it or move the image "
                        "out of test/ (run `mrkd data check` to list every problem)"
                    )
                samples.append(Sample(str(image), str(mask), 1, defect, category))
        if not samples:
            raise DataError(f"{test_dir}: no test images — add images to test/{self.good_dir} and test/<defect>")
        return samples

    # ------------------------------------------------------------------ validation
    def check(self, root: str | os.PathLike[str], categories: list[str] | None = None) -> list[Problem]:
        path = Path(root)
        problems: list[Problem] = []
        if categories is None:
            cats = self.categories(path)
            if self.known_categories is not None:
                for c in self.known_categories:
                    if c not in cats:
                        problems.append(Problem(str(path / c), "missing_category", f"{self.name} category folder missing",
                                                f"{path / c}/train/{self.good_dir} (an incomplete download or extraction?)"))
            elif not cats:
                problems.append(Problem(str(path), "missing_category", "no category folder found",
                                        f"<category>/train/{self.good_dir} folders under {path}"))
        else:
            cats = []
            for c in categories:
                if (path / c).is_dir():
                    cats.append(c)
                else:
                    problems.append(Problem(str(path / c), "missing_category", "category folder not found",
                                            f"{path / c}/train/{self.good_dir}"))
        problems += self._check_root_entries(path)
        for c in cats:
            problems += self._check_category(path / c)
        return problems

    def _check_root_entries(self, path: Path) -> list[Problem]:
        problems = []
        for entry in sorted(path.iterdir()):
            if is_hidden(entry):
                continue
            if entry.is_dir():
                if self.known_categories is not None and entry.name not in self.known_categories:
                    problems.append(Problem(str(entry), "unexpected", f"folder is not a {self.name} category",
                                            f"only the categories {', '.join(self.known_categories)}"))
                elif self.known_categories is None and not (entry / "train").is_dir():
                    problems.append(Problem(str(entry), "unexpected", "folder has no train/ inside, so it is not a category",
                                            f"category folders with train/{self.good_dir}, test/, ground_truth/"))
            elif entry.name not in _OWN_FILES and entry.suffix.lower() not in _ROOT_DOC_SUFFIXES:
                problems.append(Problem(str(entry), "unexpected", "unexpected file at the dataset root",
                                        "only category folders (and documentation files)"))
        return problems

    def _check_category(self, cat_dir: Path) -> list[Problem]:
        problems: list[Problem] = []
        for entry in sorted(cat_dir.iterdir()):
            if not is_hidden(entry) and entry.name not in ("train", "test", "ground_truth"):
                problems.append(Problem(str(entry), "unexpected", "unexpected entry in a category folder",
                                        "only train/, test/ and ground_truth/"))
        train_dir = cat_dir / "train"
        if train_dir.is_dir():
            for entry in sorted(train_dir.iterdir()):
                if not is_hidden(entry) and entry.name != self.good_dir:
                    problems.append(Problem(str(entry), "unexpected", "unexpected entry in train/",
                                            f"only train/{self.good_dir} (training images are defect-free)"))
        n_train = 0
        for image in self._images_in(train_dir / self.good_dir, problems):
            n_train += 1
            check_image(image, problems)

        n_test = 0
        used_masks: set[Path] = set()
        test_dirs = self._test_dirs(cat_dir)
        if (cat_dir / "test").is_dir():
            for entry in sorted((cat_dir / "test").iterdir()):
                if entry.is_file() and not is_hidden(entry):
                    problems.append(Problem(str(entry), "unexpected", "file directly in test/",
                                            f"images inside test/{self.good_dir} or test/<defect>"))
        masks = self.has_masks(cat_dir)
        for sub in test_dirs:
            defect = sub.name
            index = file_index(cat_dir / "ground_truth" / defect)
            for image in self._images_in(sub, problems):
                n_test += 1
                size = check_image(image, problems)
                if defect == self.good_dir or not masks:
                    continue
                mask = self.find_mask(cat_dir, defect, image, index)
                if mask is None:
                    expected = self.mask_candidates(cat_dir, defect, image)[0]
                    problems.append(Problem(str(image), "missing_mask", "defective test image has no ground-truth mask",
                                            str(expected)))
                    continue
                used_masks.add(mask)
                check_mask(mask, image, size, problems)
        problems += self._check_ground_truth(cat_dir, {d.name for d in test_dirs}, used_masks)

        if n_train == 0 and n_test == 0:
            problems.append(Problem(str(cat_dir), "empty_category", "category has no images at all",
                                    f"defect-free images in train/{self.good_dir} and images in test/"))
        elif n_train == 0:
            problems.append(Problem(str(train_dir / self.good_dir), "no_train_images", "category has no training images",
                                    f"defect-free images in {train_dir / self.good_dir}"))
        elif n_test == 0:
            problems.append(Problem(str(cat_dir / "test"), "no_test_images", "category has no test images",
                                    f"images in test/{self.good_dir} and test/<defect>"))
        return problems

    def _images_in(self, folder: Path, problems: list[Problem]) -> list[Path]:
        """Images of ``folder``; anything else in it is reported as unexpected."""
        if not folder.is_dir():
            return []
        images = []
        for entry in sorted(folder.iterdir()):
            if is_hidden(entry):
                continue
            if entry.is_file() and is_image_file(entry):
                images.append(entry)
            else:
                problems.append(Problem(str(entry), "unexpected", "not an image file",
                                        f"only images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}"))
        return images

    def _check_ground_truth(self, cat_dir: Path, test_defects: set[str], used: set[Path]) -> list[Problem]:
        problems: list[Problem] = []
        gt = cat_dir / "ground_truth"
        if not gt.is_dir():
            return problems
        for entry in sorted(gt.iterdir()):
            if is_hidden(entry):
                continue
            if not entry.is_dir():
                problems.append(Problem(str(entry), "unexpected", "file directly in ground_truth/",
                                        "masks inside ground_truth/<defect>/"))
            elif entry.name == self.good_dir or entry.name not in test_defects:
                problems.append(Problem(str(entry), "unexpected", "ground-truth folder without a matching test/ defect folder",
                                        f"ground_truth/<defect> only for the defect folders in {cat_dir / 'test'}"))
            else:
                for mask in sorted(entry.iterdir()):
                    if not is_hidden(mask) and mask not in used:
                        problems.append(Problem(str(mask), "unexpected", "mask without a test image",
                                                f"a test image test/{entry.name}/<id> for every mask"))
        return problems


@catalogued("mvtec")
class MVTecAD(DownloadableMixin, MVTecLayout):
    """The 15 categories of MVTec AD, as distributed in ``mvtec_anomaly_detection.tar.xz``."""

    description = "MVTec AD: 15 industrial categories (5 textures, 10 objects)"
    known_categories = MVTEC_CATEGORIES
    download_info = MVTEC_DOWNLOAD
