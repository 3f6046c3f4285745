"""Lineage: what a stored state records, and why one cannot stand for today's inputs."""

from __future__ import annotations

from mrkd_core.lineage import (
    EVALUATION_REVISION_KEY,
    TEST_FINGERPRINT,
    TRAIN_FINGERPRINT,
    TRAINING_REVISION_KEY,
    Lineage,
)
from mrkd_core.revision import EVALUATION_REVISION, TRAINING_REVISION

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


def test_a_result_scored_by_another_evaluation_revision_is_stale():
    """The skip rule's lineage names the evaluation revision; checkpoints' lineages do not."""
    result = Lineage("h", "a" * 64, "b" * 64, evaluation_revision=EVALUATION_REVISION)
    assert result.record()[EVALUATION_REVISION_KEY] == EVALUATION_REVISION
    assert result.stale_reason(result.record()) is None
    older = {k: v for k, v in result.record().items() if k != EVALUATION_REVISION_KEY}  # before revision 2
    assert result.stale_reason(older) == f"evaluated by evaluation revision 1, this code is revision {EVALUATION_REVISION}"
    assert EVALUATION_REVISION_KEY not in TODAY.record() and TODAY.stale_reason(older) is None
    # the training inputs are named first: a retrain re-evaluates anyway
    assert "training revision 1" in result.stale_reason({TRAIN_FINGERPRINT: "a" * 64})
