"""The restoration loss of Eq. 4."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def mrkd_loss(f_teacher: list[Tensor], f_restored: list[Tensor]) -> Tensor:
    """Σ_l mean_batch (1 − cos(vec(f_T,n^l), vec(f_G^l))), per-sample flattening (Eq. 4).

    Computed in float32 even under bf16 autocast: the cosine of long vectors loses
    precision in bf16.
    """
    total = torch.zeros((), device=f_teacher[0].device, dtype=torch.float32)
    for t, s in zip(f_teacher, f_restored):
        cos = F.cosine_similarity(t.flatten(1).float(), s.flatten(1).float(), dim=1)
        total = total + (1.0 - cos).mean()
    return total
