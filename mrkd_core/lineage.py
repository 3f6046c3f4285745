"""What a stored state was computed from, and whether it may stand for today's inputs.

Every cached or resumable state is keyed by everything it was computed from:

* the **config** (``MRKDConfig.config_hash()``, in the store path and ``config.json``),
* the **training data** (``train_fingerprint``: :mod:`mrkd_core.data.fingerprint` of the
  category's training split),
* the **training revision** (:data:`mrkd_core.revision.TRAINING_REVISION`: the code that
  turned config and data into weights),
* and, for evaluation results (metrics, scores, maps, the calibration), the **test
  data** (``test_fingerprint``) and the **evaluation revision**
  (:data:`mrkd_core.revision.EVALUATION_REVISION`: the code that turned weights into
  maps and scores, e.g. the test-time FLM masks).

:class:`Lineage` carries these values. Checkpoints, model files (``extra``), run
manifests and metrics rows record them (:meth:`Lineage.record`); before a stored state
is reused — a checkpoint resumed, a complete result skipped — :meth:`Lineage.stale_reason`
says why it cannot be (or None). A state that recorded no fingerprint (written before
fingerprints existed) is never taken for today's data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mrkd_core.revision import TRAINING_REVISION, stored_revision

# The names under which the values are recorded (manifests, checkpoints, model extras, metrics columns).
TRAIN_FINGERPRINT = "train_fingerprint"
TEST_FINGERPRINT = "test_fingerprint"
TRAINING_REVISION_KEY = "training_revision"
EVALUATION_REVISION_KEY = "evaluation_revision"


def short(digest: str | None) -> str:
    """The first 12 hex digits of a fingerprint, for log lines ('none' when unrecorded)."""
    return digest[:12] if digest else "none"


@dataclass(frozen=True)
class Lineage:
    """The inputs of one training (+ evaluation) of a key.

    ``test_fingerprint`` is None for states that involve no evaluation (checkpoints,
    ``mrkd train --no-evaluate``'s results). ``train_fingerprint`` is None only where a
    record of an existing model is made and the model recorded none (``mrkd evaluate`` of
    a model written before fingerprints). ``evaluation_revision`` is the code that scored
    (and calibrated) a stored result (``layout.task_inputs``: this code's
    ``EVALUATION_REVISION``); None, like the test fingerprint, for checkpoints: weights do
    not depend on it.
    """

    config_hash: str
    train_fingerprint: str | None
    test_fingerprint: str | None = None
    training_revision: int = TRAINING_REVISION
    evaluation_revision: int | None = None

    def record(self) -> dict[str, Any]:
        """The values to store with a state (JSON-safe; the test fingerprint and the
        evaluation revision only when known)."""
        out: dict[str, Any] = {"config_hash": self.config_hash, TRAIN_FINGERPRINT: self.train_fingerprint,
                               TRAINING_REVISION_KEY: self.training_revision}
        if self.test_fingerprint is not None:
            out[TEST_FINGERPRINT] = self.test_fingerprint
        if self.evaluation_revision is not None:
            out[EVALUATION_REVISION_KEY] = self.evaluation_revision
        return out

    def stale_reason(self, stored: Mapping[str, Any], check: Sequence[str] = (TRAINING_REVISION_KEY,
                     TRAIN_FINGERPRINT, TEST_FINGERPRINT, EVALUATION_REVISION_KEY)) -> str | None:
        """Why a state that recorded ``stored`` cannot stand for these inputs; None when it can.

        ``check`` names what to compare: a checkpoint has no test data, so its caller
        leaves ``test_fingerprint`` out; the test fingerprint and the evaluation revision
        are compared only when this lineage names them. The config is checked by the
        callers (hash collisions, the resume key that ignores ``epochs``). A result of
        another evaluation revision is stale even when its weights are not: the rerun
        resumes from the key's last checkpoint and only evaluates (and calibrates) again.
        """
        if TRAINING_REVISION_KEY in check and stored_revision(dict(stored)) != self.training_revision:
            return (f"trained by training revision {stored_revision(dict(stored))}, "
                    f"this code is revision {self.training_revision}")
        if TRAIN_FINGERPRINT in check and stored.get(TRAIN_FINGERPRINT) is None:
            return "trained on unrecorded data (no training-data fingerprint: written before fingerprints)"
        if TRAIN_FINGERPRINT in check and stored.get(TRAIN_FINGERPRINT) != self.train_fingerprint:
            return (f"trained on other data (training-data fingerprint {short(stored.get(TRAIN_FINGERPRINT))}, "
                    f"now {short(self.train_fingerprint)})")
        if (TEST_FINGERPRINT in check and self.test_fingerprint is not None
                and stored.get(TEST_FINGERPRINT) != self.test_fingerprint):
            return (f"evaluated on other test data (test-data fingerprint {short(stored.get(TEST_FINGERPRINT))}, "
                    f"now {short(self.test_fingerprint)})")
        evaluated_by = stored_revision(dict(stored), EVALUATION_REVISION_KEY)  # 1 when unrecorded
        if (EVALUATION_REVISION_KEY in check and self.evaluation_revision is not None
                and evaluated_by != self.evaluation_revision):
            return f"evaluated by evaluation revision {evaluated_by}, this code is revision {self.evaluation_revision}"
        return None


__all__ = ["EVALUATION_REVISION_KEY", "Lineage", "TEST_FINGERPRINT", "TRAIN_FINGERPRINT", "TRAINING_REVISION_KEY",
           "short"]
