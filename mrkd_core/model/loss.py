"""The restoration loss of Eq. 4."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def mrkd_loss(f_t: Sequence[Tensor], f_s: Sequence[Tensor]) -> Tensor:
    """L = Σ_l mean_batch (1 − cos(vec(f_T,n^l), vec(f_G^l))) (Eq. 4).

    ``vec`` flattens each sample's whole C×H×W map, so one cosine per sample and scale
    (not per position, unlike the anomaly map of Eq. 5); the batch mean follows the
    official code. Accumulated in float32 even under bf16 autocast: the cosine of
    vectors with millions of entries loses too much precision in bf16.
    """
    if len(f_t) != len(f_s) or not f_t:
        raise ValueError(f"need the same number of teacher and restored scales, got {len(f_t)} and {len(f_s)}")
    total = torch.zeros((), device=f_t[0].device, dtype=torch.float32)
    for t, s in zip(f_t, f_s):
        if t.shape != s.shape:
            raise ValueError(f"teacher {tuple(t.shape)} and restored {tuple(s.shape)} features differ in shape")
        cos = F.cosine_similarity(t.flatten(1).float(), s.flatten(1).float(), dim=1)
        total = total + (1.0 - cos).mean()
    return total
