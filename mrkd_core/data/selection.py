"""Which samples of a split a task uses: seeded subsamples and the calibration hold-out.

Both are pure functions of the sample records (paths, labels, defect types) and a few
numbers, so that every process that asks (training, calibration, ``mrkd evaluate``) gets
the same answer without storing anything; ``layout.task_samples`` applies them in one place.

**Subsamples** (the config's ``train_subsample`` and ``test_subsample``). For a run that must
fit a time budget (``make demo`` on ELPV's 470-736 training cells), a spec declares
``subsample: {train: N, test: M}`` on a dataset (``mrkd_core.specs``) or a user passes
``--train-subsample N --test-subsample M``. A subsample is other data, so the counts are
config fields and part of the config hash (docs/datasets.md, "Subsampling"). The choice
is independent of the config's ``seed`` (which varies the training, not the data): a
permutation seeded by ``SUBSAMPLE_SEED`` and, for test images, by the group, of which the
first N are kept, in the split's order. Subsets are nested: the 100 images of
``train_subsample: 100`` are among the 200 of ``train_subsample: 200``. Test images are
chosen per group (label and defect type), in proportion to the group's size (largest
remainders), with at least one image of every group when N allows, so a subsample still
tests every kind of defect and both classes.

**The hold-out** (``validation_fraction``). An inspection engineer usually has no defect
images yet; a false-alarm-rate threshold then needs defect-free images the model did not
train on. ``holdout_split`` takes a seeded fraction of train/good away from training.
"""


from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence

import numpy as np

from mrkd_core.data.base import Sample
from mrkd_core.errors import ConfigError

log = logging.getLogger(__name__)

SUBSAMPLE_SEED = 0


def _first(n_items: int, k: int, key: str) -> list[int]:
    """The first ``k`` of a seeded permutation of ``range(n_items)``, ascending."""
    rng = np.random.default_rng([SUBSAMPLE_SEED, zlib.crc32(key.encode())])
    return sorted(rng.permutation(n_items)[:k].tolist())


def subsample_train(samples: Sequence[Sample], n: int) -> list[Sample]:
    """At most ``n`` of the training ``samples`` (0 or ≥ their number: all), in their order."""
    if n <= 0 or n >= len(samples):
        return list(samples)
    return [samples[i] for i in _first(len(samples), n, "train")]


def _quotas(sizes: Sequence[int], n: int) -> list[int]:
    """Per group: at least one (when n ≥ the number of groups), the rest in proportion, largest remainders."""
    k = len(sizes)
    base = [1 if n >= k else 0 for _ in sizes]
    rest = n - sum(base)
    room = [s - b for s, b in zip(sizes, base)]
    total = sum(room)
    exact = [rest * r / total if total else 0.0 for r in room]
    quota = [b + int(e) for b, e in zip(base, exact)]
    left = n - sum(quota)
    for i in sorted(range(k), key=lambda i: (-(exact[i] - int(exact[i])), i)):
        if left <= 0:
            break
        if quota[i] < sizes[i]:
            quota[i] += 1
            left -= 1
    return quota


def subsample_test(samples: Sequence[Sample], n: int) -> list[Sample]:
    """At most ``n`` test ``samples`` (0 or ≥ their number: all), stratified by (label, defect type), in their order."""
    if n <= 0 or n >= len(samples):
        return list(samples)
    groups: dict[tuple[int, str], list[int]] = {}
    for i, s in enumerate(samples):
        groups.setdefault((s.label, s.defect_type), []).append(i)
    names = list(groups)
    quota = _quotas([len(groups[g]) for g in names], n)
    keep: list[int] = []
    for g, k in zip(names, quota):
        members = groups[g]
        keep += [members[j] for j in _first(len(members), k, f"test/{g[0]}/{g[1]}")]
    if len(names) > n:
        log.warning("test_subsample=%d is below the number of defect types (%d): some are not tested", n, len(names))
    return [samples[i] for i in sorted(keep)]


_STREAM = 0x4D524B44  # "MRKD"


def holdout_split(samples: Sequence[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(training samples, held-out samples), each in the order given.

    ``round(fraction × n)`` images are held out (at least one when ``fraction > 0``), chosen
    by a permutation of the path-sorted samples seeded with ``seed`` (so the choice does
    not depend on the order given); ``fraction = 0`` returns every sample for training, in
    the order given (the paper's setting). A split that would leave no training image is
    a ``ConfigError`` naming ``validation_fraction``.
    """
    if fraction <= 0:
        return list(samples), []
    n = len(samples)
    k = max(1, int(round(fraction * n)))
    if k >= n:
        raise ConfigError(f"config field 'validation_fraction': {fraction} of {n} training images leaves none "
                          "to train on; lower it or add images to train/good")
    paths = sorted(s.path for s in samples)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, _STREAM])
    held = {paths[i] for i in rng.permutation(n)[:k].tolist()}
    return [s for s in samples if s.path not in held], [s for s in samples if s.path in held]
