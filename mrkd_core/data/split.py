"""Persisted train/test splits of datasets that ship none (MTD, ELPV).

A seeded permutation of the sorted defect-free file names puts ⌊fraction · n⌋ of them in
training and the rest in the test set. The split is written next to the data on first use
(a JSON file, atomically) and, from then on, the file wins: every later call, by any
process sharing the folder, reuses it, and a different seed is logged, not applied, so
every run of a benchmark sees the same split. Delete the file to draw a new one. If the
folder is read-only, the split is used unsaved (it is a pure function of names and seed).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mrkd_core.data.base import Problem
from mrkd_core.errors import DataError

log = logging.getLogger(__name__)

TRAIN_FRACTION = 0.8
DEFAULT_SPLIT_SEED = 0


@dataclass(frozen=True)
class HoldoutSplit:
    """Which defect-free images train and which test (names relative to the data, '/'-separated)."""

    seed: int
    train_fraction: float
    train: tuple[str, ...]
    test_good: tuple[str, ...]


@dataclass(frozen=True)
class SplitFile:
    """Where a dataset keeps its split and how the file is labelled.

    ``path``: the JSON file; ``data``: the folder the names are relative to (for messages);
    ``format``: the ``format`` field checked on reading; ``rule``: the protocol in words,
    written into the file for whoever opens it; ``extra``: more fields to record.
    """

    path: Path
    data: Path
    format: str
    rule: str
    extra: tuple[tuple[str, Any], ...] = ()


def draw_split(names: Sequence[str], seed: int, train_fraction: float = TRAIN_FRACTION) -> HoldoutSplit:
    """Seeded division of ``names`` into ⌊fraction · n⌋ training and the rest test (pure function)."""
    ordered = sorted(names)
    n_train = int(len(ordered) * train_fraction)
    order = np.random.default_rng(seed).permutation(len(ordered))
    train = sorted(ordered[i] for i in order[:n_train])
    test = sorted(ordered[i] for i in order[n_train:])
    return HoldoutSplit(seed, train_fraction, tuple(train), tuple(test))


def read_split(where: SplitFile) -> HoldoutSplit:
    """The split stored at ``where.path``; an unreadable or foreign file is a DataError."""
    try:
        data = json.loads(where.path.read_text())
        if data.get("format") != where.format:
            raise ValueError(f"format {data.get('format')!r}, expected {where.format!r}")
        return HoldoutSplit(int(data["seed"]), float(data["train_fraction"]),
                            tuple(str(x) for x in data["train"]), tuple(str(x) for x in data["test_good"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{where.path}: unreadable split file ({exc}) — delete it to draw the split again") from None


def write_split(where: SplitFile, split: HoldoutSplit) -> None:
    """Write ``split`` as the JSON file ``where`` names (format, rule, seed, fraction, time, the train and test names)."""
    record = {
        "format": where.format,
        "rule": where.rule,
        "seed": split.seed,
        "train_fraction": split.train_fraction,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **dict(where.extra),
        "train": list(split.train),
        "test_good": list(split.test_good),
    }
    tmp = where.path.with_name(f".{where.path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, where.path)  # parallel workers write identical content; the last rename wins


def load_or_create_split(where: SplitFile, names: Sequence[str], seed: int = DEFAULT_SPLIT_SEED,
                         train_fraction: float = TRAIN_FRACTION, what: str = "split") -> HoldoutSplit:
    """The stored split, or one drawn from ``names`` (the defect-free images) and written.

    A stored split wins over ``seed`` (logged when they differ). Listed names that are no
    longer among ``names`` are a DataError; names added since are left out (logged).
    ``names`` empty and no stored split: the caller says why (it is checked before).
    """
    if where.path.is_file():
        split = read_split(where)
        if split.seed != seed or split.train_fraction != train_fraction:
            log.warning("%s: using the stored split (seed %d, fraction %.2f), not seed %d / fraction %.2f — "
                        "delete the file to draw a new split", where.path, split.seed, split.train_fraction,
                        seed, train_fraction)
        available = set(names)
        missing = [p for p in (*split.train, *split.test_good) if p not in available]
        if missing:
            raise DataError(
                f"{where.data / missing[0]}: listed in {where.path} but not found ({len(missing)} file(s) missing) — "
                "restore the files, or delete the split file to draw a new split"
            )
        extra = available - set(split.train) - set(split.test_good)
        if extra:
            log.warning("%s: %d defect-free image(s) are not in the stored split and are ignored (e.g. %s)",
                        where.path, len(extra), sorted(extra)[0])
        return split
    split = draw_split(names, seed, train_fraction)
    try:
        write_split(where, split)
        log.info("%s: wrote the %s (%d train / %d test defect-free, seed %d)",
                 where.path, what, len(split.train), len(split.test_good), seed)
    except OSError as exc:
        # Read-only data: the split is a pure function of names and seed, so it is still reproducible.
        log.warning("%s: cannot write the %s (%s); using it unsaved", where.path, what, exc.strerror)
    return split


def split_problems(where: SplitFile, names: Sequence[str]) -> list[Problem]:
    """``split_mismatch`` problems of a stored split (none when there is no file yet)."""
    if not where.path.is_file():
        return []
    try:
        split = read_split(where)
    except DataError as exc:
        return [Problem(str(where.path), "split_mismatch", str(exc).split(": ", 1)[-1].split(" — ")[0],
                        "a split file written by mrkd, or none (it is drawn again)")]
    available = set(names)
    return [Problem(str(where.data / rel), "split_mismatch", f"listed in {where.path.name} but not found",
                    f"the file, or delete {where.path} to draw a new split")
            for rel in (*split.train, *split.test_good) if rel not in available]
