"""Anomaly map (Eq. 5) and image score (Eq. 6): pure functions on feature lists.

Conventions of every published number (the official code's): per-scale 1 − cosine
over channels, bilinear upsampling with ``align_corners=True``, sum over the fused
scales, then a Gaussian blur with σ = 4 equal to
``scipy.ndimage.gaussian_filter(mode='reflect', truncate=4.0)``, computed here in
torch on the maps' device, batched. Everything returned is float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter's default: the kernel reaches 4σ


def _size(out_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(out_size, int):
        return (out_size, out_size)
    h, w = out_size
    return (int(h), int(w))


def per_scale_maps(f_t: Sequence[Tensor], f_s: Sequence[Tensor], out_size: int | Sequence[int]) -> Tensor:
    """B×L×H×W maps Φ(1 − cos(f_T^l(h,w), f_G^l(h,w))) of Eq. 5, before fusion and blur.

    Kept per scale so that Table 7's scale subsets re-score a trained model without a
    new forward pass.
    """
    if len(f_t) != len(f_s) or not f_t:
        raise ValueError(f"need the same number of teacher and restored scales, got {len(f_t)} and {len(f_s)}")
    size = _size(out_size)
    maps = []
    for t, s in zip(f_t, f_s):
        if t.shape != s.shape:
            raise ValueError(f"teacher {tuple(t.shape)} and restored {tuple(s.shape)} features differ in shape")
        m = 1.0 - F.cosine_similarity(t.float(), s.float(), dim=1)  # B×h×w
        maps.append(F.interpolate(m.unsqueeze(1), size=size, mode="bilinear", align_corners=True))
    return torch.cat(maps, dim=1)


def _gaussian_kernel(sigma: float, device: torch.device) -> Tensor:
    """scipy's 1-D Gaussian weights: radius int(4σ + 0.5), normalised to sum 1."""
    radius = int(TRUNCATE * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)  # float64 on CPU: not every device has it
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).to(device=device, dtype=torch.float32)


def _reflect_index(n: int, radius: int, device: torch.device) -> Tensor:
    """Source indices of scipy's 'reflect' padding (d c b a | a b c d | d c b a), any radius.

    scipy's 'reflect' repeats the edge sample (half-sample symmetric); torch's
    ``F.pad(mode='reflect')`` does not (that is scipy's 'mirror') and cannot pad by
    more than the size, so the padding is an index gather with period 2n.
    """
    i = torch.arange(-radius, n + radius, device=device)
    j = torch.remainder(i, 2 * n)
    return torch.where(j >= n, 2 * n - 1 - j, j)


def gaussian_blur(maps: Tensor, sigma: float | tuple[float, float]) -> Tensor:
    """Separable Gaussian blur of B×H×W maps, equal to scipy's ``gaussian_filter`` per map.

    ``sigma``: one σ for both axes, or (σ_y, σ_x) (a tiled map: ``mrkd_core.tiling``); an
    axis with σ ≤ 0 is left unblurred, so ``sigma <= 0`` returns the maps unchanged (as float32).
    """
    if maps.dim() != 3:
        raise ValueError(f"expected B×H×W maps, got shape {tuple(maps.shape)}")
    x = maps.float()
    sigma_y, sigma_x = sigma if isinstance(sigma, (tuple, list)) else (sigma, sigma)
    _, h, w = x.shape
    x = x.unsqueeze(1)
    if sigma_y > 0:
        k = _gaussian_kernel(float(sigma_y), x.device)
        r = (k.numel() - 1) // 2
        x = x.index_select(2, _reflect_index(h, r, x.device))
        x = F.conv2d(x, k.view(1, 1, -1, 1))
    if sigma_x > 0:
        k = _gaussian_kernel(float(sigma_x), x.device)
        r = (k.numel() - 1) // 2
        x = x.index_select(3, _reflect_index(w, r, x.device))
        x = F.conv2d(x, k.view(1, 1, 1, -1))
    return x.squeeze(1)


def fuse_maps(per_scale: Tensor, scales: Sequence[int] = (1, 2, 3), sigma: float | tuple[float, float] = 4.0) -> Tensor:
    """S_AL of Eq. 5 from per-scale maps: the sum of the chosen scales (1-based, Table 7), blurred
    (``sigma`` as in :func:`gaussian_blur`)."""
    if per_scale.dim() != 4:
        raise ValueError(f"expected B×L×H×W per-scale maps, got shape {tuple(per_scale.shape)}")
    n = per_scale.shape[1]
    if not scales or any(not 1 <= int(s) <= n for s in scales) or len(set(scales)) != len(scales):
        raise ValueError(f"scales {tuple(scales)} must be distinct values in 1..{n}")
    idx = torch.tensor([int(s) - 1 for s in scales], device=per_scale.device)
    return gaussian_blur(per_scale.float().index_select(1, idx).sum(dim=1), sigma)


def anomaly_map(f_t: Sequence[Tensor], f_s: Sequence[Tensor], out_size: int | Sequence[int],
                scales: Sequence[int] = (1, 2, 3), sigma: float = 4.0) -> Tensor:
    """S_AL (Eq. 5): B×H×W float32 on the features' device."""
    return fuse_maps(per_scale_maps(f_t, f_s, out_size), scales, sigma)


def image_score(amap: Tensor) -> Tensor:
    """S_AD (Eq. 6): the maximum of each B×H×W map, a float32 tensor of B scores."""
    return amap.float().flatten(1).amax(dim=1)
