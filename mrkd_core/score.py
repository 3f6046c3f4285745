"""Anomaly map (Eq. 5) and image score (Eq. 6): pure functions on feature lists.

Conventions of every published number: per-scale 1 − cosine over channels, bilinear
upsampling with ``align_corners=True``, sum over the fused scales, then a Gaussian
blur with σ = 4 equal to ``scipy.ndimage.gaussian_filter(mode='reflect', truncate=4)``
(done here in torch, on the maps' device, batched).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def per_scale_maps(f_t: Sequence[Tensor], f_s: Sequence[Tensor], out_size: int) -> Tensor:
    """B×L×H×W maps 1 − cos(f_T^l(h,w), f_G^l(h,w)) upsampled to ``out_size`` (Φ of Eq. 5), unblurred."""
    maps = []
    for t, s in zip(f_t, f_s):
        m = 1.0 - F.cosine_similarity(t.float(), s.float(), dim=1)  # B×h×w
        maps.append(F.interpolate(m.unsqueeze(1), size=(out_size, out_size), mode="bilinear", align_corners=True))
    return torch.cat(maps, dim=1)


def _gaussian_kernel(sigma: float, device: torch.device) -> Tensor:
    radius = int(4.0 * sigma + 0.5)  # scipy's truncate=4.0
    x = torch.arange(-radius, radius + 1, device=device, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).float()


def _reflect_index(n: int, radius: int, device: torch.device) -> Tensor:
    """Indices of scipy's 'reflect' padding (d c b a | a b c d | d c b a), any radius."""
    i = torch.arange(-radius, n + radius, device=device)
    period = 2 * n
    j = torch.remainder(i, period)
    return torch.where(j >= n, period - 1 - j, j)


def gaussian_blur(maps: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of B×H×W maps, equal to scipy's gaussian_filter per map."""
    if sigma <= 0:
        return maps
    k = _gaussian_kernel(sigma, maps.device)
    r = (k.numel() - 1) // 2
    b, h, w = maps.shape
    x = maps.float().unsqueeze(1)
    x = x.index_select(2, _reflect_index(h, r, maps.device))
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    x = x.index_select(3, _reflect_index(w, r, maps.device))
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return x.squeeze(1)


def fuse_maps(per_scale: Tensor, scales: Sequence[int] = (1, 2, 3), sigma: float = 4.0) -> Tensor:
    """S_AL of Eq. 5 from per-scale maps: sum of the chosen scales (1-based, Table 7), blurred."""
    idx = [s - 1 for s in scales]
    return gaussian_blur(per_scale[:, idx].sum(dim=1), sigma)


def anomaly_map(f_t: Sequence[Tensor], f_s: Sequence[Tensor], out_size: int,
                scales: Sequence[int] = (1, 2, 3), sigma: float = 4.0) -> Tensor:
    """S_AL (Eq. 5): B×H×W float32."""
    return fuse_maps(per_scale_maps(f_t, f_s, out_size), scales, sigma)


def image_score(amap: Tensor) -> Tensor:
    """S_AD (Eq. 6): the maximum of each map, B."""
    return amap.flatten(1).amax(dim=1)
