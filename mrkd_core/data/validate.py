"""``mrkd data check``: every problem of a dataset folder, all at once.

Training stops at the first bad file (a DataError naming it). Before a long benchmark it
is cheaper to learn about *all* of them in one pass, so each dataset's ``check`` walks its
layout and collects ``Problem`` records instead of raising. Every image and mask is fully
decoded (a truncated PNG has a valid header), so a check of the full MVTec AD takes a
minute or two.

Before a training, the engine runs the part of these checks that headers answer on the
task's own images (:func:`require_trainable`: readable, not empty, within the bomb guard,
masks of their image's size, PNGs intact), so a mis-sized mask stops ``mrkd train`` and
the flows before the first epoch, not at the evaluation after it.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from mrkd_core.data.base import Problem, Sample, mask_files
from mrkd_core.data.catalog import get_dataset
from mrkd_core.data.io import header_size, open_image
from mrkd_core.errors import DataError
from mrkd_core.metrics import IMAGE_METRICS, METRIC_NAMES

log = logging.getLogger(__name__)

__all__ = ["Problem", "PROBLEM_KINDS", "check_dataset", "check_samples", "computed_metrics", "describe_dataset",
           "format_problems", "check_image", "check_mask", "require_trainable"]

# Stable codes of Problem.kind, with what each means.
PROBLEM_KINDS: dict[str, str] = {
    "missing_root": "the dataset folder does not exist",
    "missing_category": "a category folder of the dataset is absent",
    "empty_category": "a category folder without training and test images",
    "no_train_images": "a category without defect-free training images",
    "no_test_images": "a category without test images",
    "empty_file": "a zero-byte image or mask",
    "unreadable": "an image or mask that cannot be decoded",
    "missing_mask": "a defective test image without its ground-truth mask",
    "mask_size": "a mask whose size differs from its image",
    "unexpected": "a file or folder that does not belong to the layout",
    "split_mismatch": "a stored split (MTD, ELPV) lists a file that is not there",
    "missing_file": "a file the dataset's own lists name is not there (ELPV labels.csv, VisA split_csv/1cls.csv, "
                    "MVTec LOCO AD defects_config.json, MVTec AD 2 validation images)",
    "mask_value": "a mask whose values its dataset does not define (MVTec LOCO AD: one defect per PNG, a "
                  "pixel value of defects_config.json)",
}


def check_image(path: Path, problems: list[Problem], what: str = "image") -> tuple[int, int] | None:
    """Decode ``path``; on failure append a Problem and return None, else (width, height)."""
    try:
        size_bytes = path.stat().st_size
    except OSError:
        size_bytes = -1
    if size_bytes == 0:
        problems.append(Problem(str(path), "empty_file", f"{what} file is empty (0 bytes)",
                                f"a readable {what}; replace or remove the file"))
        return None
    try:
        with open_image(path) as img:
            return img.size
    except DataError as exc:
        # The DataError text starts with the path; keep only the reason.
        reason = str(exc).split(": ", 1)[-1].split(" — ")[0]
        problems.append(Problem(str(path), "unreadable", reason, f"a readable {what}; replace or remove the file"))
        return None


def check_mask(mask: Path, image: Path, image_size: tuple[int, int] | None, problems: list[Problem]) -> None:
    """Mask readable and, when the image was readable, of the image's size; a mask folder: each file of it."""
    files = mask_files(mask)
    if not files:
        problems.append(Problem(str(mask), "missing_mask", "mask folder holds no mask image",
                                f"one PNG per defect of {image} in {mask}"))
    for file in files:
        size = check_image(file, problems, what="mask")
        if size is not None and image_size is not None and size != image_size:
            problems.append(Problem(
                str(file), "mask_size",
                f"mask is {size[0]}×{size[1]} but its image {image} is {image_size[0]}×{image_size[1]}",
                f"a mask of {image_size[0]}×{image_size[1]} pixels, the size of its image",
            ))


def check_samples(samples: Iterable[Sample]) -> list[Problem]:
    """Every problem of these samples that their files' headers show, without decoding a pixel.

    The check the engine runs on a task's images before it trains (:func:`require_trainable`):
    each image and mask exists, is not empty, is an image within the decompression-bomb
    limit, and each mask has its image's size (:func:`mrkd_core.data.io.header_size`; a PNG
    is also checked chunk by chunk, so a truncated PNG is found). Sizes are what a header
    holds, so this takes milliseconds per image where ``mrkd data check`` decodes each one.
    """
    problems: list[Problem] = []
    sizes: dict[str, tuple[int, int] | None] = {}

    def size(path: str, what: str) -> tuple[int, int] | None:
        if path not in sizes:
            try:
                sizes[path] = header_size(path)
            except DataError as exc:
                reason = str(exc).split(": ", 1)[-1].split(" — ")[0]
                problems.append(Problem(path, "empty_file" if "0 bytes" in reason else "unreadable", reason,
                                        f"a readable {what}; replace or remove the file"))
                sizes[path] = None
        return sizes[path]

    for sample in samples:
        image = size(sample.path, "image")
        if sample.mask_path is None:
            continue
        files = mask_files(sample.mask_path)
        if not files:
            problems.append(Problem(sample.mask_path, "missing_mask", "mask folder holds no mask image",
                                    f"one PNG per defect of {sample.path} in {sample.mask_path}"))
        for file in files:
            mask = size(str(file), "mask")
            if mask is not None and image is not None and mask != image:
                problems.append(Problem(str(file), "mask_size",
                                        f"mask is {mask[0]}×{mask[1]} but its image {sample.path} is "
                                        f"{image[0]}×{image[1]}",
                                        f"a mask of {image[0]}×{image[1]} pixels, the size of its image"))
    return problems


def require_trainable(samples: Iterable[Sample], dataset: str, root: str, category: str) -> None:
    """:func:`check_samples`, as one ``DataError`` line naming the first problem's file and the fix.

    When there are several, the line counts them and gives the ``mrkd data check`` command
    that lists them all. Nothing is stored before or by it: the engine calls it before it
    takes the key's claim.
    """
    problems = check_samples(samples)
    if not problems:
        return
    more = (f" (and {len(problems) - 1} more problem(s): mrkd data check {root} --dataset {dataset} -c {category} "
            "lists them all)" if len(problems) > 1 else "")
    raise DataError(f"{problems[0]}{more}; nothing was trained")


def check_dataset(name: str, root: str | os.PathLike[str], categories: Sequence[str] | None = None) -> list[Problem]:
    """All problems of dataset ``name`` under ``root`` (empty list = good to train on).

    ``categories`` limits the check (and lists categories that must exist); None checks
    whatever the dataset's layout says should be there.
    """
    spec = get_dataset(name)
    path = Path(root).expanduser()
    if not path.is_dir() and not spec.root_is_workspace:
        return [Problem(str(path), "missing_root", "dataset folder not found",
                        "the folder that holds the category folders")]
    problems = spec.check(path, list(categories) if categories else None)
    log.info("checked %s dataset at %s: %d problem(s)", name, path, len(problems))
    return problems


def computed_metrics(name: str, root: str | os.PathLike[str], category: str) -> tuple[str, ...]:
    """The metrics ``mrkd evaluate`` computes for ``category`` (the ones it reports non-null).

    The paper's six with pixel masks, the image metrics without; plus the dataset's
    protocol metrics (MVTec AD 2, MVTec LOCO AD; ``mrkd_core.data.base.EvaluationProtocol``).
    """
    spec = get_dataset(name)
    if not spec.ground_truth(root, category).pixel_masks:
        return IMAGE_METRICS
    protocol = spec.evaluation_protocol(root, category)
    return (*METRIC_NAMES, *(protocol.metrics if protocol is not None else ()))


def describe_dataset(name: str, root: str | os.PathLike[str], categories: Sequence[str] | None = None,
                     recognised: str | None = None) -> list[str]:
    """What ``root`` holds, as ``mrkd data check`` prints it before the problems.

    A first line names the layout (and, with ``recognised``, the mark it was recognised by);
    then one line per category: pixel masks or image labels only, and the metrics
    evaluate computes there (:func:`computed_metrics`), with the dataset's protocol if it has
    one. So a folder without ``ground_truth/`` reads as what it is (an image-labelled
    dataset, evaluated with the image metrics) and not as a folder with every mask missing.
    """
    spec = get_dataset(name)
    path = Path(root).expanduser()
    try:
        available = spec.categories(path)
    except DataError:
        return []  # the problems say why (e.g. no such folder)
    cats = [c for c in categories if c in available] if categories else available
    how = f", recognised by {recognised}" if recognised else ""
    lines = [f"{path}: layout {name}{how}; {len(cats)} categor{'y' if len(cats) == 1 else 'ies'}"]
    for c in cats:
        try:
            metrics = ", ".join(computed_metrics(name, path, c))
            protocol = spec.evaluation_protocol(path, c) if spec.ground_truth(path, c).pixel_masks else None
        except DataError as exc:
            lines.append(f"  {c}: cannot say what evaluate computes: {exc}")
            continue
        lines.append(f"  {c}: {spec.ground_truth(path, c).describe()}; evaluate computes {metrics}")
        if protocol is not None:
            lines.append(f"    {protocol.describe()}")
    return lines


def format_problems(problems: Sequence[Problem]) -> str:
    """Human-readable report: one line per problem, then a count per kind."""
    if not problems:
        return "no problems found"
    lines = [f"{len(problems)} problem(s) found:"]
    lines += [f"  {p}" for p in problems]
    counts = Counter(p.kind for p in problems)
    lines.append("summary: " + ", ".join(f"{kind} ×{n}" for kind, n in sorted(counts.items())))
    return "\n".join(lines)
