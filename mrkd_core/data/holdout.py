"""Holding out defect-free training images for calibration (``validation_fraction``).

An inspection engineer usually has no defect images yet; a false-alarm-rate threshold
then needs defect-free images the model did not train on. ``holdout_split`` takes a
seeded fraction of train/good away from training. It is a pure function of the sample
paths, the fraction and the seed, so ``train`` and a later ``mrkd calibrate`` agree on
which images were held out without storing anything else.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mrkd_core.data.base import Sample
from mrkd_core.errors import ConfigError

# Mixed into the seed so that the split does not reuse the stream of another draw of the run.
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
