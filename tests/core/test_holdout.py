"""Holding out a seeded fraction of train/good for calibration (``validation_fraction``)."""

from __future__ import annotations

import pytest

from mrkd_core.data.base import Sample
from mrkd_core.data.selection import holdout_split
from mrkd_core.errors import ConfigError


def _samples(n: int) -> list[Sample]:
    return [Sample(f"/d/train/good/{i:03d}.png", None, 0, "good", "c") for i in range(n)]


def test_zero_fraction_is_the_paper_training_set_in_its_order():
    s = list(reversed(_samples(5)))
    assert holdout_split(s, 0.0, 111) == (s, [])


def test_split_is_seeded_disjoint_order_independent_and_complete():
    s = _samples(40)
    train, held = holdout_split(s, 0.2, 111)
    assert len(held) == 8 and len(train) == 32
    assert {x.path for x in train} | {x.path for x in held} == {x.path for x in s}
    assert not {x.path for x in train} & {x.path for x in held}
    assert holdout_split(list(reversed(s)), 0.2, 111)[1] == list(reversed(held))  # same images, any order
    assert holdout_split(s, 0.2, 112)[1] != held
    assert train == [x for x in s if x not in held]  # training keeps the order given


def test_at_least_one_held_out_and_at_least_one_left():
    assert len(holdout_split(_samples(3), 0.01, 0)[1]) == 1
    with pytest.raises(ConfigError, match="validation_fraction"):
        holdout_split(_samples(1), 0.5, 0)
