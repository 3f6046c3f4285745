"""Anomaly map (Eq. 5) and image score (Eq. 6) against hand and scipy computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from mrkd_core.score import anomaly_map, fuse_maps, gaussian_blur, image_score, per_scale_maps

torch.set_num_threads(2)


def _bilinear_align_corners(m: np.ndarray, out: int) -> np.ndarray:
    """Hand-written bilinear upsampling of an h×w map with align_corners=True semantics."""
    h, w = m.shape

    def axis(n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.arange(out) * ((n_in - 1) / (out - 1)) if n_in > 1 else np.zeros(out)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    y0, y1, wy = axis(h)
    x0, x1, wx = axis(w)
    top = m[y0][:, x0] * (1 - wx) + m[y0][:, x1] * wx
    bottom = m[y1][:, x0] * (1 - wx) + m[y1][:, x1] * wx
    return top * (1 - wy)[:, None] + bottom * wy[:, None]


def _one_minus_cos(t: np.ndarray, s: np.ndarray) -> np.ndarray:
    """1 − cosine over channels of C×h×w arrays, position by position."""
    dot = (t * s).sum(0)
    return 1 - dot / (np.linalg.norm(t, axis=0) * np.linalg.norm(s, axis=0))


@pytest.mark.parametrize("shape,sigma", [((64, 64), 4.0), ((9, 13), 4.0), ((256, 256), 4.0),
                                         ((20, 7), 1.5), ((33, 40), 0.7)])
def test_gaussian_equals_scipy_reflect_truncate_4(shape, sigma):
    # (9, 13) and (20, 7) are smaller than the kernel radius (16 at σ=4): reflection wraps repeatedly
    m = torch.rand(3, *shape, generator=torch.Generator().manual_seed(1))
    ref = np.stack([gaussian_filter(x, sigma=sigma, mode="reflect", truncate=4.0)
                    for x in m.double().numpy()])
    out = gaussian_blur(m, sigma)
    assert out.dtype == torch.float32 and out.shape == m.shape
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-6)


def test_sigma_zero_skips_smoothing():
    m = torch.rand(2, 8, 8, dtype=torch.float64)
    out = gaussian_blur(m, 0.0)
    assert out.dtype == torch.float32
    assert torch.equal(out, m.float())
    psm = torch.rand(2, 3, 8, 8)
    assert torch.equal(fuse_maps(psm, (1, 2, 3), 0.0), psm.sum(1))


def test_per_scale_maps_equal_hand_computation():
    gen = torch.Generator().manual_seed(0)
    sizes = (8, 4, 2)
    t = [torch.randn(2, 8, k, k, generator=gen) for k in sizes]
    s = [torch.randn(2, 8, k, k, generator=gen) for k in sizes]
    psm = per_scale_maps(t, s, 16)
    assert psm.shape == (2, 3, 16, 16) and psm.dtype == torch.float32
    for b in range(2):
        for l in range(3):
            ref = _bilinear_align_corners(_one_minus_cos(t[l][b].double().numpy(), s[l][b].double().numpy()), 16)
            np.testing.assert_allclose(psm[b, l].numpy(), ref, atol=1e-5)
    assert per_scale_maps(t, t, 16).abs().max() < 1e-5  # identical features: no anomaly
    assert torch.allclose(per_scale_maps(t, [-x for x in t], 16), torch.full_like(psm, 2.0))  # opposite: 2


def test_fusion_selects_scales_and_score_is_max():
    psm = torch.zeros(1, 3, 8, 8)
    psm[0, 0, 1, 1] = 1.0
    psm[0, 1, 2, 2] = 2.0
    psm[0, 2, 3, 3] = 4.0
    assert fuse_maps(psm, (1,), 0).max() == 1.0
    assert fuse_maps(psm, (3,), 0).max() == 4.0
    assert fuse_maps(psm, (2, 3), 0).sum() == 6.0
    assert fuse_maps(psm, (1, 2, 3), 0).sum() == 7.0
    assert fuse_maps(psm, (3, 1), 0)[0, 1, 1] == 1.0 and fuse_maps(psm, (3, 1), 0)[0, 2, 2] == 0.0
    for bad in [(), (0,), (4,), (1, 1)]:
        with pytest.raises(ValueError, match="scales"):
            fuse_maps(psm, bad, 0)
    amap = torch.rand(4, 16, 16)
    scores = image_score(amap)
    assert scores.shape == (4,) and scores.dtype == torch.float32
    assert torch.equal(scores, amap.flatten(1).max(dim=1).values)
    amap[2, 5, 7] = 10.0
    assert image_score(amap)[2] == 10.0


def test_anomaly_map_composes_and_matches_scipy():
    gen = torch.Generator().manual_seed(2)
    t = [torch.randn(1, 4, k, k, generator=gen) for k in (8, 4, 2)]
    s = [torch.randn(1, 4, k, k, generator=gen) for k in (8, 4, 2)]
    a = anomaly_map(t, s, 32, scales=(2, 3), sigma=4.0)
    assert a.shape == (1, 32, 32) and a.dtype == torch.float32
    psm = per_scale_maps(t, s, 32)
    torch.testing.assert_close(a, fuse_maps(psm, (2, 3), 4.0))
    ref = gaussian_filter(psm[0, 1:].sum(0).double().numpy(), sigma=4.0, mode="reflect", truncate=4.0)
    np.testing.assert_allclose(a[0].numpy(), ref, atol=1e-6)
    # bf16 features (autocast) still give float32 maps
    a16 = anomaly_map([x.bfloat16() for x in t], [x.bfloat16() for x in s], 32)
    assert a16.dtype == torch.float32
