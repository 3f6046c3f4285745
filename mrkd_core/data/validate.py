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
from mrkd_core.tiling import Tiling

log = logging.getLogger(__name__)

__all__ = ["Problem", "PROBLEM_KINDS", "check_dataset", "check_samples", "computed_metrics", "describe_dataset",
           "format_problems", "check_image", "check_mask", "frame_sizes", "require_trainable", "resolution_note"]

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


# What `mrkd data check` says a defect of this many pixels becomes at the network's input.
DEFECT_PX = 10
# Images whose sides shrink by more than this factor when resized whole get the warning.
SHRINK_WARNING = 2.0


def frame_sizes(samples: Sequence[Sample]) -> Counter:
    """(width, height) → count over ``samples``, from the file headers (:func:`header_size`: nothing
    decoded, EXIF orientation applied; unreadable files are left to the problems)."""
    sizes: Counter = Counter()
    for sample in samples:
        try:
            sizes[header_size(sample.path)] += 1
        except DataError:
            continue
    return sizes


def resolution_note(width: int, height: int, image_size: int, tiling: Tiling | None,
                    defect_px: int = DEFECT_PX) -> str | None:
    """What the network sees of a width × height image, or None when that needs no saying.

    Without tiling: a warning when the image shrinks by more than ``SHRINK_WARNING`` per side,
    with what a defect of ``defect_px`` pixels becomes and two ``--tile-size`` values: tiles of
    ``image_size`` (one frame pixel per network pixel) and of twice that (a quarter of the tiles,
    the defect half its size). With tiling: the tiles per
    frame and the defect's size in network pixels.
    """
    if tiling is not None:
        g = tiling.grid(height, width)
        return (f"{tiling.describe(height, width)}: a defect {defect_px} px across is "
                f"{defect_px * image_size / g.tile_w:.1f} px to the network; an epoch trains on {len(g)}× the "
                "images")
    if max(width, height) <= SHRINK_WARNING * image_size:
        return None
    native, halved = (Tiling(size, size, image_size, 0.0) for size in (image_size, 2 * image_size))
    return (f"warning: images of {width}×{height} px are resized whole to {image_size}×{image_size}: a defect "
            f"{defect_px} px across becomes {defect_px * image_size / width:.1f}×{defect_px * image_size / height:.1f}"
            f" px and may vanish — inspect in tiles: --tile-size {image_size} keeps every pixel "
            f"({len(native.grid(height, width))} tiles per image), --tile-size {2 * image_size} halves them "
            f"({len(halved.grid(height, width))} tiles per image, the defect {defect_px / 2:.1f} px; docs/tiling.md)")


def describe_dataset(name: str, root: str | os.PathLike[str], categories: Sequence[str] | None = None,
                     recognised: str | None = None, image_size: int = 256,
                     tiling: Tiling | None = None) -> list[str]:
    """What ``root`` holds, as ``mrkd data check`` prints it before the problems.

    A first line names the layout (and, with ``recognised``, the mark it was recognised by);
    then one line per category: pixel masks or image labels only, and the metrics
    evaluate computes there (:func:`computed_metrics`), with the dataset's protocol if it has
    one. So a folder without ``ground_truth/`` reads as what it is (an image-labelled
    dataset, evaluated with the image metrics) and not as a folder with every mask missing.
    Then what the network sees of the training images at ``image_size`` with ``tiling``
    (:func:`resolution_note`: a warning when resizing them whole would shrink small defects away).
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
        lines += _resolution_lines(spec, path, c, image_size, tiling)
    return lines


def _resolution_lines(spec, root: Path, category: str, image_size: int, tiling: Tiling | None) -> list[str]:
    """The :func:`resolution_note` of the category's most common training image size (and how many differ)."""
    try:
        sizes = frame_sizes(spec.train_samples(root, category))
    except DataError:
        return []  # the problems say why
    if not sizes:
        return []
    (width, height), n = sizes.most_common(1)[0]
    note = resolution_note(width, height, image_size, tiling)
    if note is None:
        return []
    others = sum(sizes.values()) - n
    return [f"    {note}" + (f" ({others} training image(s) of other sizes)" if others else "")]


def format_problems(problems: Sequence[Problem]) -> str:
    """Human-readable report: one line per problem, then a count per kind."""
    if not problems:
        return "no problems found"
    lines = [f"{len(problems)} problem(s) found:"]
    lines += [f"  {p}" for p in problems]
    counts = Counter(p.kind for p in problems)
    lines.append("summary: " + ", ".join(f"{kind} ×{n}" for kind, n in sorted(counts.items())))
    return "\n".join(lines)
