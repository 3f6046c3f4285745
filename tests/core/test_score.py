"""Anomaly map (Eq. 5) and image score (Eq. 6) against hand and scipy computations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from mrkd_core.score import anomaly_map, fuse_maps, gaussian_blur, image_score, per_scale_maps


@pytest.mark.parametrize("shape", [(64, 64), (9, 13), (256, 256)])
def test_gaussian_equals_scipy(shape):
    m = torch.rand(3, *shape, generator=torch.Generator().manual_seed(1))
    ref = np.stack([gaussian_filter(x.double().numpy(), sigma=4) for x in m])
    np.testing.assert_allclose(gaussian_blur(m, 4.0).numpy(), ref, atol=1e-6)
    assert torch.equal(gaussian_blur(m, 0.0), m)


def test_per_scale_maps_are_one_minus_cosine():
    t = [torch.randn(2, 8, s, s) for s in (8, 4, 2)]
    s = [torch.randn(2, 8, k, k) for k in (8, 4, 2)]
    psm = per_scale_maps(t, s, 16)
    assert psm.shape == (2, 3, 16, 16)
    # corners of align_corners=True upsampling equal the source corners
    cos = F.cosine_similarity(t[2], s[2], dim=1)
    torch.testing.assert_close(psm[:, 2, 0, 0], 1 - cos[:, 0, 0])
    torch.testing.assert_close(psm[:, 2, -1, -1], 1 - cos[:, -1, -1])
    same = per_scale_maps(t, t, 16)
    assert same.abs().max() < 1e-5


def test_fusion_selects_scales_and_score_is_max():
    psm = torch.zeros(1, 3, 8, 8)
    psm[0, 0, 1, 1] = 1.0
    psm[0, 1, 2, 2] = 2.0
    psm[0, 2, 3, 3] = 4.0
    assert fuse_maps(psm, (1,), 0).max() == 1.0
    assert fuse_maps(psm, (2, 3), 0).sum() == 6.0
    assert fuse_maps(psm, (1, 2, 3), 0).sum() == 7.0
    amap = torch.rand(4, 16, 16)
    assert torch.equal(image_score(amap), amap.flatten(1).max(dim=1).values)


def test_anomaly_map_composes():
    t = [torch.randn(1, 4, k, k) for k in (8, 4, 2)]
    s = [torch.randn(1, 4, k, k) for k in (8, 4, 2)]
    a = anomaly_map(t, s, 32, scales=(2, 3), sigma=4.0)
    b = fuse_maps(per_scale_maps(t, s, 32), (2, 3), 4.0)
    assert a.shape == (1, 32, 32) and a.dtype == torch.float32
    torch.testing.assert_close(a, b)
