"""``mrkd data check``: every problem of a dataset folder, all at once.

Training stops at the first bad file (a DataError naming it). Before a long benchmark it
is cheaper to learn about *all* of them in one pass, so each dataset's ``check`` walks its
layout and collects ``Problem`` records instead of raising. Every image and mask is fully
decoded (a truncated PNG has a valid header), so a check of the full MVTec AD takes a
minute or two.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from mrkd_core.data.base import Problem
from mrkd_core.data.catalog import get_dataset
from mrkd_core.data.io import open_image
from mrkd_core.errors import DataError

log = logging.getLogger(__name__)

__all__ = ["Problem", "PROBLEM_KINDS", "check_dataset", "describe_dataset", "format_problems", "check_image",
           "check_mask"]

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
    "missing_file": "a file the dataset's own label list (ELPV labels.csv) names is not there",
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
    """Mask readable and, when the image was readable, of the image's size."""
    size = check_image(mask, problems, what="mask")
    if size is not None and image_size is not None and size != image_size:
        problems.append(Problem(
            str(mask), "mask_size",
            f"mask is {size[0]}×{size[1]} but its image {image} is {image_size[0]}×{image_size[1]}",
            f"a mask of {image_size[0]}×{image_size[1]} pixels, the size of its image",
        ))


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


def describe_dataset(name: str, root: str | os.PathLike[str], categories: Sequence[str] | None = None) -> list[str]:
    """What kind of dataset ``root`` holds, one line per category: pixel masks or image labels only.

    ``mrkd data check`` prints these before the problems, so a folder without
    ``ground_truth/`` reads as what it is (an image-labelled dataset, evaluated with the
    image metrics) and not as a folder with every mask missing.
    """
    spec = get_dataset(name)
    path = Path(root).expanduser()
    try:
        available = spec.categories(path)
    except DataError:
        return []  # the problems say why (e.g. no such folder)
    cats = [c for c in categories if c in available] if categories else available
    lines = [f"{path}: {name} dataset, {len(cats)} categor{'y' if len(cats) == 1 else 'ies'}"]
    lines += [f"  {c}: {spec.ground_truth(path, c).describe()}" for c in cats]
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
