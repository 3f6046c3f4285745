"""Lineage: what a stored state records, and why one cannot stand for today's inputs."""

from __future__ import annotations

from mrkd_core.lineage import TEST_FINGERPRINT, TRAIN_FINGERPRINT, TRAINING_REVISION_KEY, Lineage
from mrkd_core.revision import TRAINING_REVISION

TODAY = Lineage("0123456789abcdef", "a" * 64, "b" * 64)


def test_record_holds_every_input():
    assert TODAY.record() == {"config_hash": "0123456789abcdef", TRAIN_FINGERPRINT: "a" * 64,
                              TEST_FINGERPRINT: "b" * 64, TRAINING_REVISION_KEY: TRAINING_REVISION}
    assert TEST_FINGERPRINT not in Lineage("h", "a" * 64).record()  # a checkpoint has no test data


def test_the_same_inputs_are_reusable_and_each_difference_is_named():
    assert TODAY.stale_reason(TODAY.record()) is None
    cases = {
        TRAINING_REVISION_KEY: (1, "training revision 1"),
        TRAIN_FINGERPRINT: ("c" * 64, "trained on other data (training-data fingerprint cccccccccccc, now aaaaaaaaaaaa)"),
        TEST_FINGERPRINT: ("d" * 64, "evaluated on other test data"),
    }
    for key, (value, reason) in cases.items():
        assert reason in TODAY.stale_reason({**TODAY.record(), key: value})
    unrecorded = {TRAINING_REVISION_KEY: TRAINING_REVISION}  # a manifest written before fingerprints
    assert "unrecorded data" in TODAY.stale_reason(unrecorded)
    assert "training revision 1" in TODAY.stale_reason({})  # nothing recorded: revision 1


def test_check_limits_what_is_compared():
    other_test = {**TODAY.record(), TEST_FINGERPRINT: "d" * 64}
    assert TODAY.stale_reason(other_test, check=(TRAINING_REVISION_KEY, TRAIN_FINGERPRINT)) is None
    assert Lineage("h", "a" * 64).stale_reason(other_test) is None  # no test data to compare with
