"""Feature-level masking (Sec. 3.3, Eq. 2-3).

Each spatial position of each student feature map is zeroed with probability λ, one
mask over all channels (Eq. 2 indexes (h, w) only); a generation module G^l
(conv3x3 → ReLU → conv3x3, channels derived from the backbone) restores the features.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def flm_mask(shape: tuple[int, int, int, int], ratio: float, generator: torch.Generator | None,
             device: torch.device | str, dtype: torch.dtype = torch.float32) -> Tensor:
    """M^l of Eq. 2: B×1×H×W, 0 where R(h, w) < λ, 1 elsewhere."""
    b, _, h, w = shape
    r = torch.rand((b, 1, h, w), generator=generator, device=device)
    return (r >= ratio).to(dtype)


class Generation(nn.Module):
    """G^l of Eq. 3: W2(ReLU(W1(·))), same channels in and out."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.relu(self.conv1(x)))


class GenerationModules(nn.Module):
    """One generation module per scale; masks with ratio λ before restoring (Eq. 2-3)."""

    def __init__(self, channels: tuple[int, ...], ratio: float):
        super().__init__()
        self.blocks = nn.ModuleList(Generation(c) for c in channels)
        self.ratio = float(ratio)

    def forward(self, features: list[Tensor], generator: torch.Generator | None = None,
                mask: bool = True) -> list[Tensor]:
        out = []
        for f, g in zip(features, self.blocks):
            if mask and self.ratio > 0:
                f = f * flm_mask(tuple(f.shape), self.ratio, generator, f.device, f.dtype)
            out.append(g(f))
        return out
