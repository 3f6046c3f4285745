"""What a benchmark measures beyond the standard metrics: a dataset's evaluation protocol.

MVTec AD, BTAD, MTD and the user's folders are scored with the paper's metrics
(``mrkd_core.metrics.compute_all``). The newer benchmarks prescribe more: MVTec AD 2 a
segmentation F1 at a threshold chosen on its defect-free validation set and AU-PRO up to
FPR 0.05; MVTec LOCO AD its metrics per anomaly type with sPRO. A dataset that has such a
protocol returns it from ``DatasetLayout.evaluation_protocol(root, category)``; evaluation
(``mrkd_core.evaluate.evaluate(..., protocol=...)``) calls :meth:`EvaluationProtocol.compute`
with the test split's maps, and the values land in the metrics table's ``PROTOCOL_METRICS``
columns (null for every other dataset). The protocol lives beside its dataset's loader,
because it is dataset knowledge (where the validation images are, what ``defects_config.json``
says); the maths are the pure functions of :mod:`mrkd_core.metrics`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import numpy as np

from mrkd_core.data.base import Sample

#: Scores extra images with the model under evaluation: samples → (N, S, S) float32 maps (the
#: configuration's fused anomaly maps, Eq. 5, at the evaluated size).
ScoreMaps = Callable[[Sequence[Sample]], np.ndarray]


class EvaluationProtocol(ABC):
    """A dataset's own metrics, computed from the test split's anomaly maps.

    ``metrics``: the names it fills (a subset of ``mrkd_core.metrics.PROTOCOL_METRICS``).
    """

    metrics: tuple[str, ...] = ()

    def inputs(self) -> list[Sample]:
        """Images besides the test split that the metrics depend on (fingerprinted with the test split)."""
        return []

    @abstractmethod
    def describe(self) -> str:
        """One line for ``mrkd data check``: what is computed and from what."""

    @abstractmethod
    def compute(self, maps: np.ndarray, masks: np.ndarray, scores: np.ndarray, samples: Sequence[Sample],
                score_maps: ScoreMaps) -> dict[str, float]:
        """``{name: value}`` for every name of ``metrics`` (NaN where undefined).

        ``maps`` (N, S, S) float32 and ``masks`` (N, S, S) uint8 (the union ground truth) of the
        test split ``samples`` in order, ``scores`` (N,) their image scores (Eq. 6);
        ``score_maps`` scores :meth:`inputs` with the model under evaluation.
        """


def evaluation_inputs(samples: Sequence[Sample], protocol: EvaluationProtocol | None) -> list[Sample]:
    """The test split plus what its protocol also reads: what a test fingerprint must cover."""
    return [*samples, *(protocol.inputs() if protocol is not None else [])]
