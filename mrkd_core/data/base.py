"""What every dataset hands to training and evaluation: ``Sample`` records and the ``DatasetLayout`` API.

A dataset is a *layout on disk*; the rest of the code never looks at folders. Loaders
return plain, picklable records (paths, label, defect type) so that Ray/Prefect tasks and
DataLoader workers can pass them around cheaply and open the files themselves.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from mrkd_core.errors import DataError

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

# Extensions accepted as images (compared in lower case). MVTec AD ships PNG, BTAD BMP/PNG,
# MTD JPEG; TIFF is common for users' own data.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# Files we write next to the data ourselves; validation never reports them.
COMPLETION_MARKER = ".mrkd_complete.json"
SPLIT_FILE = "mrkd_split.json"


@dataclass(frozen=True)
class Sample:
    """One image of a split.

    ``mask_path`` is None for defect-free images: their ground truth is an all-zero mask
    (MVTec AD ships no masks for ``good``). It is a file, or a folder of masks whose union is
    the ground truth (MVTec LOCO AD: one PNG per defect, :func:`mask_files`). ``label`` is 1
    for anomalous images, 0 otherwise.
    """

    path: str
    mask_path: str | None
    label: int
    defect_type: str
    category: str

    def __post_init__(self) -> None:
        if self.label not in (0, 1):
            raise ValueError(f"Sample label must be 0 or 1, got {self.label!r} for {self.path}")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset folder, as reported by ``mrkd data check``.

    ``kind`` is a stable code (see ``validate.PROBLEM_KINDS``) so that tools and tests can
    filter; ``message`` says what is wrong and ``expected`` what should be there instead.
    """

    path: str
    kind: str
    message: str
    expected: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message} — expected {self.expected}"


@dataclass(frozen=True)
class GroundTruth:
    """What a category's defective test images are labelled with (``mrkd data check`` says it).

    ``pixel_masks`` False is an image-labelled dataset (ELPV, or a folder without
    ``ground_truth/``): a normal case, evaluated with the image metrics only; the pixel
    metrics are reported as absent. ``detail`` says where the labels come from.
    """

    pixel_masks: bool
    detail: str

    def describe(self) -> str:
        if self.pixel_masks:
            return f"pixel masks ({self.detail})"
        return (f"image labels only ({self.detail}): pixel AU-ROC, AU-PRO, AU-PRO per image and F1-max (pixel) "
                "are reported as absent")


#: Scores extra images with the model under evaluation: samples → (N, S, S) float32 maps (the
#: configuration's fused anomaly maps, Eq. 5, at the evaluated size).
ScoreMaps = Callable[[Sequence[Sample]], "np.ndarray"]


class EvaluationProtocol(ABC):
    """What a benchmark measures beyond the paper's metrics, from the test split's anomaly maps.

    MVTec AD, BTAD, MTD and the user's folders are scored with the paper's metrics
    (``mrkd_core.metrics.compute_all``). The newer benchmarks prescribe more: MVTec AD 2 a
    segmentation F1 at a threshold chosen on its defect-free validation set and AU-PRO up to
    FPR 0.05; MVTec LOCO AD its metrics per anomaly type with sPRO. Such a dataset returns its
    protocol from ``DatasetLayout.evaluation_protocol``; ``mrkd_core.evaluate.evaluate(...,
    protocol=...)`` calls :meth:`compute`, and the values land in the metrics table's
    ``PROTOCOL_METRICS`` columns (null for every other dataset). A protocol lives beside its
    dataset's loader (it is dataset knowledge: where the validation images are, what
    ``defects_config.json`` says); the maths are the pure functions of ``mrkd_core.metrics``.

    ``metrics``: the names it fills (a subset of ``mrkd_core.metrics.PROTOCOL_METRICS``).
    """

    metrics: ClassVar[tuple[str, ...]] = ()

    def inputs(self) -> list[Sample]:
        """Images besides the test split that the metrics depend on (fingerprinted with the test split)."""
        return []

    @abstractmethod
    def describe(self) -> str:
        """One line for ``mrkd data check``: what is computed and from what."""

    @abstractmethod
    def compute(self, maps: np.ndarray, masks: np.ndarray, scores: np.ndarray, samples: Sequence[Sample],
                score_maps: ScoreMaps) -> dict[str, float]:
        """``{name: value}`` for every name of ``metrics`` (NaN where undefined).

        ``maps`` (N, S, S) float32 and ``masks`` (N, S, S) uint8 (the union ground truth) of the
        test split ``samples`` in order, ``scores`` (N,) their image scores (Eq. 6);
        ``score_maps`` scores :meth:`inputs` with the model under evaluation.
        """


def evaluation_inputs(samples: Sequence[Sample], protocol: EvaluationProtocol | None) -> list[Sample]:
    """The test split plus what its protocol also reads: what a test fingerprint must cover."""
    return [*samples, *(protocol.inputs() if protocol is not None else [])]


def is_image_file(path: Path) -> bool:
    """An image by its extension (case-insensitive, ``IMAGE_EXTENSIONS``), not a dot-file."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def is_hidden(path: Path) -> bool:
    """Dot-files (.DS_Store, our markers) are never data and never reported."""
    return path.name.startswith(".")


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (the order of the official code)."""
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise DataError(f"{folder}: cannot list folder ({exc.strerror}) — check its permissions") from None
    return [p for p in entries if p.is_file() and is_image_file(p)]


def find_images(folder: Path) -> list[Path]:
    """Image files anywhere below ``folder``, sorted by path; dot-files and dot-folders skipped.

    What ``mrkd predict`` and a calibration folder read: the loaders' rule
    (:func:`is_image_file`, :func:`is_hidden`) applied recursively, so that e.g. macOS's
    ``._001.png`` companions or ``.ipynb_checkpoints/`` are never taken for images.
    """
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and is_image_file(p) and not any(part.startswith(".") for part in
                                                                  p.relative_to(folder).parts))


def mask_files(mask_path: str | os.PathLike[str]) -> list[Path]:
    """The files of one ground truth: the mask itself, or the images of a mask folder, sorted by name.

    A folder is MVTec LOCO AD's rule (``ground_truth/<type>/<id>/000.png, 001.png, ...``, one
    PNG per defect): the image's mask is their union. Dot-files are skipped; an empty folder
    gives [] (``load_mask`` and ``mrkd data check`` say so).
    """
    path = Path(mask_path)
    if path.is_dir():
        return list_images(path)
    return [path]


def name_key(name: str) -> str:
    """A file name with its extension in lower case: how every loader matches names.

    ``001.BMP`` and ``001.bmp`` are one image, and ``001_mask.PNG`` is the mask rule's
    ``001_mask.png``, on every filesystem (image discovery already ignores the case of
    extensions; a name match that did not would call the same file both missing and orphan).
    Stems stay case-sensitive, as the files are on Linux.
    """
    stem, dot, ext = name.rpartition(".")
    return f"{stem}.{ext.lower()}" if dot and stem else name


def file_index(folder: Path) -> dict[str, Path]:
    """Files directly in ``folder`` keyed by :func:`name_key` (empty if the folder is absent).

    Built once per folder so that matching N images to their masks lists it once. Two
    files whose names differ only in the case of the extension: the one spelt like the
    key (lower-case extension) wins, and validation reports the other as a file that
    belongs to nothing.
    """
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    index: dict[str, Path] = {}
    for p in entries:
        if p.is_file() and not is_hidden(p):
            key = name_key(p.name)
            if key == p.name or key not in index:
                index[key] = p
    return index


def list_dirs(folder: Path) -> list[Path]:
    """Sub-folders of ``folder`` (hidden ones skipped), sorted by name."""
    try:
        return sorted((p for p in folder.iterdir() if p.is_dir() and not is_hidden(p)), key=lambda p: p.name)
    except FileNotFoundError:
        return []


def require_root(root: str | os.PathLike[str]) -> Path:
    """The dataset root as a Path; a missing root is a DataError naming it (not an empty list)."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"{path}: dataset folder not found — pass the folder that holds the category folders")
    return path


class DatasetLayout(ABC):
    """A dataset layout: how to find categories and build the train/test splits.

    Instances are stateless (everything derives from ``root``) so one catalogued instance
    serves every caller. Datasets with a public archive also have
    ``download(root, url=None, progress=True)`` (see ``download.DownloadableMixin``);
    ``folder`` has none, so ``hasattr(spec, "download")`` tells them apart.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # True when ``root`` is only where the dataset writes its own files (its split): the
    # images live elsewhere (an installed package), and the folder is created on first use.
    root_is_workspace: ClassVar[bool] = False

    @abstractmethod
    def categories(self, root: str | os.PathLike[str]) -> list[str]:
        """Categories present under ``root``, in the dataset's canonical order."""

    @abstractmethod
    def train_samples(self, root: str | os.PathLike[str], category: str) -> list[Sample]:
        """Defect-free training images of ``category`` (label 0, no masks)."""

    @abstractmethod
    def test_samples(self, root: str | os.PathLike[str], category: str) -> list[Sample]:
        """Test images of ``category``: defect-free first, then each defect type."""

    def validation_samples(self, root: str | os.PathLike[str], category: str) -> list[Sample]:
        """A published defect-free validation split of ``category`` (MVTec AD 2's ``validation/good``):
        images the model never trains on, where the benchmark chooses thresholds. Empty for the
        datasets that publish none (then ``validation_fraction`` holds train/good images out)."""
        return []

    @abstractmethod
    def check(self, root: str | os.PathLike[str], categories: list[str] | None = None) -> list[Problem]:
        """Every problem of the folder at once (used by ``validate.check_dataset``)."""

    def ground_truth(self, root: str | os.PathLike[str], category: str) -> GroundTruth:
        """Pixel masks or image labels only, for ``category`` (datasets with masks keep this)."""
        return GroundTruth(True, "a mask for every defective test image")

    def evaluation_protocol(self, root: str | os.PathLike[str], category: str) -> EvaluationProtocol | None:
        """The benchmark's own metrics for ``category`` (MVTec AD 2, MVTec LOCO AD), None for the paper's only.

        See :class:`EvaluationProtocol`. Raises ``DataError`` when the protocol's own
        files (LOCO's ``defects_config.json``, AD 2's validation images) are missing or bad.
        """
        return None

    def __repr__(self) -> str:
        return f"<dataset {self.name!r}>"
