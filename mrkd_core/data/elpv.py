"""ELPV: electroluminescence images of solar cells, mono- and polycrystalline (image labels only).

Buerhop-Lutz et al., EU PVSEC 2018; Deitsch et al., Solar Energy 2019 and Machine Vision
and Applications 2021. 2,624 cells, 300×300 8-bit grey, each labelled by experts with a
defect probability of 0, ⅓, ⅔ or 1 and the module type (``mono`` or ``poly``). No pixel
masks. Licence: data CC-BY-NC-SA-4.0, code Apache-2.0. The data is never copied into
this repository: pip installs it on the user's machine, as the optional extra ``elpv``
(``pip install 'mrkd[elpv]'``, the PyPI package ``elpv-dataset==1.0.0.post1``). A copy
of the dataset's ``labels.csv`` and ``images/`` put into the dataset root is used instead
of the package (e.g. a clone of github.com/zae-bayern/elpv-dataset).

Layout (the package's ``elpv_dataset/data/``)::

    labels.csv               no header; whitespace-separated: path, probability, type
                             e.g. "images/cell0001.png  1.0  mono"
    images/cellNNNN.png

The dataset root (``mrkd train ROOT --dataset elpv``) is where our own files go: the
split of each category, ``mrkd_split_<category>.json``. It is created on first use.

One-class protocol (ours; no one-class protocol for ELPV is published): per category,
a seeded 80 % (⌊0.8 n⌋, seed 0) of the p = 0 cells train; the test set is the other p = 0
cells (normal, ``good``) and the p = 1 cells (anomalous, ``defective``). Cells with
p = ⅓ or ⅔ are left out; the dataset ``elpv_any_defect`` counts them as anomalous
(``defective_p33``, ``defective_p67``) with the same split. The split is written and
reused like MTD's (``mrkd_core.data.split``): the file wins over the seed.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from mrkd_core.data.base import (
    DatasetLayout,
    GroundTruth,
    Problem,
    Sample,
    file_index,
    is_hidden,
    is_image_file,
    name_key,
)
from mrkd_core.data.catalog import catalogued
from mrkd_core.data.io import file_sha256
from mrkd_core.data.split import (
    DEFAULT_SPLIT_SEED,
    TRAIN_FRACTION,
    HoldoutSplit,
    SplitFile,
    load_or_create_split,
    split_problems,
)
from mrkd_core.data.validate import check_image
from mrkd_core.errors import DataError

log = logging.getLogger(__name__)

ELPV_CATEGORIES: tuple[str, ...] = ("mono", "poly")
PACKAGE = "elpv_dataset"
PACKAGE_PIN = "elpv-dataset==1.0.0.post1"
EXTRA = "elpv"
LABELS = "labels.csv"
SPLIT_FORMAT = "mrkd-elpv-split/1"
SPLIT_RULE = ("mrkd one-class protocol: floor(80%) of the category's p=0 cells train (seeded permutation); "
              "test = the other p=0 cells (normal) and the p=1 cells (anomalous); p=1/3, 2/3 excluded "
              "(elpv_any_defect: anomalous)")
# Defect probability in thirds (0..3) → defect_type of a test sample.
DEFECT_TYPES: dict[int, str] = {0: "good", 1: "defective_p33", 2: "defective_p67", 3: "defective"}
UNCERTAIN_POLICIES: tuple[str, ...] = ("exclude", "anomalous")


@dataclass(frozen=True)
class Cell:
    """One line of ``labels.csv``: the image (as listed, relative to the data folder), its label."""

    name: str
    thirds: int  # the defect probability × 3: 0, 1, 2 or 3
    kind: str  # mono | poly


def missing_package_error(root: Path) -> DataError:
    """The one-line error when neither the ``elpv`` extra nor a copy of the data in ``root`` is there."""
    return DataError(
        f"ELPV is not installed: install the optional extra '{EXTRA}' (pip install 'mrkd[{EXTRA}]', i.e. "
        f"{PACKAGE_PIN}; data licence CC-BY-NC-SA-4.0), or put the dataset's {LABELS} and images/ into {root}"
    )


def data_dir(root: str | os.PathLike[str]) -> Path:
    """Where ``labels.csv`` and ``images/`` are: a copy in ``root``, else the installed package.

    The package is looked up at every call (not at import), so ``mrkd`` works without the
    extra for every other dataset, and the error names the extra when ELPV is asked for.
    """
    path = Path(root).expanduser()
    if (path / LABELS).is_file():
        return path
    try:
        package = importlib.import_module(PACKAGE)
    except ImportError:
        raise missing_package_error(path) from None
    data = Path(package.__file__).resolve().parent / "data"
    if not (data / LABELS).is_file():
        raise DataError(f"{data / LABELS}: not found in the installed {PACKAGE} package — reinstall it "
                        f"(pip install --force-reinstall '{PACKAGE_PIN}')")
    return data


def _parse_line(line: str) -> Cell:
    fields = line.split()
    if len(fields) != 3:
        raise ValueError(f"expected 3 whitespace-separated fields (path probability type), got {len(fields)}")
    name, prob, kind = fields
    if name.startswith(("/", "\\")) or ".." in Path(name).parts:
        raise ValueError(f"image path {name!r} must be relative to the data folder")
    try:
        p = float(prob)
    except ValueError:
        raise ValueError(f"defect probability {prob!r} is not a number") from None
    thirds = round(p * 3)
    if not (0 <= thirds <= 3 and abs(p * 3 - thirds) < 1e-6):
        raise ValueError(f"defect probability {prob} is not one of 0, 1/3, 2/3, 1")
    if kind not in ELPV_CATEGORIES:
        raise ValueError(f"module type {kind!r} is not one of {', '.join(ELPV_CATEGORIES)}")
    return Cell(name, thirds, kind)


@dataclass(frozen=True)
class LabelList:
    """``labels.csv`` read line by line: the valid cells, a Problem per invalid line, and every
    image name a line mentions (valid or not), so an image of a bad line is not also a stray."""

    cells: tuple[Cell, ...]
    problems: tuple[Problem, ...]
    mentioned: frozenset[str]


def parse_labels(path: Path) -> LabelList:
    """Every valid line of ``labels.csv``, and a Problem per invalid one (line number, reason)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        return LabelList((), (Problem(str(path), "unreadable", f"cannot read the label list ({exc})",
                                      f"the {LABELS} of {PACKAGE_PIN}"),), frozenset())
    cells: list[Cell] = []
    problems: list[Problem] = []
    mentioned: set[str] = set()
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        mentioned.add(line.split()[0])
        try:
            cell = _parse_line(line)
            if cell.name in seen:
                raise ValueError(f"image {cell.name} is listed twice")
        except ValueError as exc:
            problems.append(Problem(f"{path}:{number}", "unreadable", str(exc),
                                    "lines 'images/cellNNNN.png <0|0.333…|0.666…|1.0> <mono|poly>'"))
            continue
        seen.add(cell.name)
        cells.append(cell)
    if not cells and not problems:
        problems.append(Problem(str(path), "unreadable", "the label list is empty", f"the {LABELS} of {PACKAGE_PIN}"))
    return LabelList(tuple(cells), tuple(problems), frozenset(mentioned))


def read_labels(path: Path) -> list[Cell]:
    """``labels.csv`` as Cells; the first bad line is a DataError naming the file and line."""
    labels = parse_labels(path)
    if labels.problems:
        p = labels.problems[0]
        raise DataError(f"{p.path}: {p.message} — expected {p.expected}")
    return list(labels.cells)


def labels_sha256(path: Path) -> str:
    """sha256 hex of ``labels.csv`` (recorded in the split file: a changed label list is another split)."""
    return file_sha256(path)


class _Images:
    """Resolves listed names to files: exact, else with the extension in another case."""

    def __init__(self, data: Path):
        self.data = data
        self._index: dict[Path, dict[str, Path]] = {}

    def find(self, name: str) -> Path | None:
        listed = self.data / name
        folder = listed.parent
        if folder not in self._index:
            self._index[folder] = file_index(folder)
        return self._index[folder].get(name_key(listed.name))


@catalogued("elpv")
class ELPV(DatasetLayout):
    """ELPV cells of one module type per category, under the one-class protocol of the module docstring."""

    description = ("ELPV solar cells (pip install 'mrkd[elpv]'): categories mono, poly; image labels only; "
                   "p=1/3, 2/3 left out")
    root_is_workspace = True
    split_seed: ClassVar[int] = DEFAULT_SPLIT_SEED
    train_fraction: ClassVar[float] = TRAIN_FRACTION
    # What the p = 1/3 and 2/3 cells are: left out ("exclude") or anomalous test images.
    uncertain: ClassVar[str] = "exclude"

    # ------------------------------------------------------------------ data
    def _cells(self, root: Path) -> tuple[Path, list[Cell]]:
        data = data_dir(root)
        return data, read_labels(data / LABELS)

    def _check_category(self, root: Path, category: str) -> None:
        if category not in ELPV_CATEGORIES:
            raise DataError(f"{root}: {category!r} is not an ELPV category — choose one of {', '.join(ELPV_CATEGORIES)}")

    def categories(self, root: str | os.PathLike[str]) -> list[str]:
        _, cells = self._cells(Path(root).expanduser())
        present = {c.kind for c in cells}
        return [c for c in ELPV_CATEGORIES if c in present]

    def split_file(self, root: Path, data: Path, category: str) -> SplitFile:
        return SplitFile(root / f"mrkd_split_{category}.json", data, SPLIT_FORMAT, SPLIT_RULE,
                         (("category", category), ("labels_sha256", labels_sha256(data / LABELS))))

    def split(self, root: str | os.PathLike[str], category: str) -> HoldoutSplit:
        """The category's p = 0 cells divided into train and test (written to the root on first use)."""
        path = Path(root).expanduser()
        self._check_category(path, category)
        data, cells = self._cells(path)
        normal = [c.name for c in cells if c.kind == category and c.thirds == 0]
        if not normal:
            raise DataError(f"{data / LABELS}: no defect-free (p = 0) {category} cells — the one-class protocol "
                            "trains on them (see docs/datasets.md)")
        try:
            path.mkdir(parents=True, exist_ok=True)  # the root only holds our split files
        except OSError as exc:
            log.warning("%s: cannot create the dataset root (%s); the split is used unsaved", path, exc.strerror)
        return load_or_create_split(self.split_file(path, data, category), normal, self.split_seed,
                                    self.train_fraction, what=f"ELPV {category} split")

    def _sample(self, images: _Images, name: str, label: int, defect: str, category: str) -> Sample:
        found = images.find(name)
        # A missing file keeps its listed path: loading it raises the DataError that names it.
        return Sample(str(found or images.data / name), None, label, defect, category)

    def train_samples(self, root: str | os.PathLike[str], category: str) -> list[Sample]:
        split = self.split(root, category)
        images = _Images(data_dir(Path(root).expanduser()))
        return [self._sample(images, name, 0, DEFECT_TYPES[0], category) for name in split.train]

    def test_samples(self, root: str | os.PathLike[str], category: str) -> list[Sample]:
        """The held-out p = 0 cells (label 0), then the anomalous ones by rising probability."""
        if self.uncertain not in UNCERTAIN_POLICIES:
            raise DataError(f"ELPV uncertain={self.uncertain!r}: choose one of {', '.join(UNCERTAIN_POLICIES)}")
        split = self.split(root, category)
        data, cells = self._cells(Path(root).expanduser())
        images = _Images(data)
        anomalous = {3} if self.uncertain == "exclude" else {1, 2, 3}
        samples = [self._sample(images, name, 0, DEFECT_TYPES[0], category) for name in split.test_good]
        for thirds in sorted(anomalous):
            samples += [self._sample(images, c.name, 1, DEFECT_TYPES[thirds], category)
                        for c in cells if c.kind == category and c.thirds == thirds]
        return samples

    def ground_truth(self, root: str | os.PathLike[str], category: str) -> GroundTruth:
        return GroundTruth(False, "ELPV labels each cell with a defect probability; it has no pixel masks")

    # ------------------------------------------------------------------ validation
    def check(self, root: str | os.PathLike[str], categories: list[str] | None = None) -> list[Problem]:
        """labels.csv line by line, every listed image decoded, strays in images/, the stored splits.

        A missing package is not a problem of the folder: it raises the error naming the extra.
        """
        path = Path(root).expanduser()
        data = data_dir(path)
        labels = parse_labels(data / LABELS)
        cells, problems = labels.cells, list(labels.problems)
        wanted = list(categories) if categories else list(ELPV_CATEGORIES)
        for c in wanted:
            if c not in ELPV_CATEGORIES:
                problems.append(Problem(str(path / c), "missing_category", f"ELPV has no category {c!r}",
                                        f"one of {', '.join(ELPV_CATEGORIES)}"))
        images = _Images(data)
        listed = {found for found in map(images.find, labels.mentioned) if found is not None}
        for cell in cells:
            found = images.find(cell.name)
            if found is None:
                problems.append(Problem(str(data / cell.name), "missing_file", f"listed in {LABELS} but not found",
                                        f"the image, or a {LABELS} without it"))
            elif cell.kind in wanted:
                check_image(found, problems)
        for folder in sorted({(data / c.name).parent for c in cells}):
            for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
                if not is_hidden(entry) and entry not in listed and (entry.is_dir() or is_image_file(entry)):
                    problems.append(Problem(str(entry), "unexpected", f"not listed in {LABELS}",
                                            f"only the images {LABELS} lists in {folder}"))
        for c in wanted:
            if c in ELPV_CATEGORIES:
                normal = [cell.name for cell in cells if cell.kind == c and cell.thirds == 0]
                problems += split_problems(self.split_file(path, data, c), normal)
        return problems


@catalogued("elpv_any_defect")
class ELPVAnyDefect(ELPV):
    """ELPV with every cell of p > 0 anomalous: the p = 1/3 and 2/3 cells join the test set."""

    description = "ELPV solar cells, the uncertain cells (p=1/3, 2/3) counted as anomalous; same split as elpv"
    uncertain = "anomalous"
