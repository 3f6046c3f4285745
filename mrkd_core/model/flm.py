"""Feature-level masking, FLM (Sec. 3.3, Eq. 2-3).

Each spatial position (h, w) of a student feature map f_S^l is zeroed with
probability λ; Eq. 2 indexes positions only, so one mask covers every channel. A
generation module G^l (conv3x3 → ReLU → conv3x3, Eq. 3) then restores the features.
The official code hard-codes the generation channels to WideResNet50's 256/512/1024,
which is why its ResNet18 variant crashes; here they come from the backbone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mrkd_core.config import DEFAULT_FLM_RATIO, check_flm_ratio
from mrkd_core.model.init import init_like_rd4ad


def flm_mask(shape: tuple[int, ...] | torch.Size, ratio: float, generator: torch.Generator | None,
             device: torch.device | str, dtype: torch.dtype = torch.float32) -> Tensor:
    """M^l of Eq. 2 for a B×C×H×W feature map: a B×1×H×W tensor, 0 where R(h, w) < λ, 1 elsewhere.

    The channel dimension is 1 so that broadcasting masks all channels of a position
    together. ``generator`` makes the draw repeatable (the test-time masks of Sec. 3.4
    must not change between evaluations). The random numbers are drawn on the
    generator's own device (a CPU generator works for CUDA features and gives the same
    masks as on CPU); ``None`` uses the global RNG of ``device``.
    """
    check_flm_ratio(ratio)
    if len(shape) != 4:
        raise ValueError(f"flm_mask expects a B×C×H×W shape, got {tuple(shape)}")
    b, _, h, w = (int(s) for s in shape)
    draw_on = generator.device if generator is not None else torch.device(device)
    r = torch.rand((b, 1, h, w), generator=generator, device=draw_on)
    return (r >= ratio).to(device=device, dtype=dtype)


def flm_test_mask_seed(seed: int, scale: int, height: int, width: int) -> int:
    """The 63-bit generator seed of one test-time mask: a hash of (seed, scale, height, width).

    A hash rather than ``seed + scale``-style arithmetic so that neighbouring seeds,
    scales and sizes give unrelated streams.
    """
    key = f"mrkd-flm-test:{int(seed)}:{int(scale)}:{int(height)}:{int(width)}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & (2**63 - 1)


def flm_test_mask(seed: int, scale: int, height: int, width: int, ratio: float) -> Tensor:
    """M^l of Eq. 2 at test time (Sec. 3.4): a 1×1×H×W float32 CPU tensor, 0 where masked.

    A function of the model alone (``flm_test_seed``, the 1-based scale l and the feature
    map's height and width): every image of every batch, on every device and in every
    entry point, is masked the same way, so an image's anomaly map does not depend on the
    batch it is scored in, and an exported graph holds the masks as constants. Drawn
    with a CPU generator (the same numbers whatever device runs the model).
    """
    check_flm_ratio(ratio)
    g = torch.Generator(device="cpu").manual_seed(flm_test_mask_seed(seed, scale, height, width))
    r = torch.rand((1, 1, int(height), int(width)), generator=g)
    return (r >= ratio).float()


def flm_test_masks(seed: int, shapes: Sequence[Sequence[int]], ratio: float) -> list[Tensor]:
    """One ``flm_test_mask`` per scale for feature maps of the given shapes (…×H×W, scale 1 first)."""
    return [flm_test_mask(seed, level, s[-2], s[-1], ratio) for level, s in enumerate(shapes, start=1)]


class Generation(nn.Module):
    """G^l of Eq. 3: W_l2(ReLU(W_l1(·))), 3×3 convolutions with bias, channels in = out.

    Initialised like the rest of the official decoder (``init_like_rd4ad``): the official
    code builds these modules inside the decoder before its initialisation loop, so their
    weights are Kaiming-normal (fan_out, ReLU) and their biases PyTorch's default.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        init_like_rd4ad(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv2(self.relu(self.conv1(x)))


class GenerationModules(nn.ModuleList):
    """One generation module per scale (a ModuleList of 3); masks with ratio λ, then restores.

    ``forward(features, generator, mask)`` applies Eq. 2 then Eq. 3 to each scale:
    ``masks`` given (one per scale, broadcast over batch and channels: the test-time
    masks of ``flm_test_masks``) are used as they are; otherwise each image draws its own
    mask from ``generator`` (training). ``mask=False`` gives the mask-free restoration
    (inference without FLM).
    """

    def __init__(self, channels: tuple[int, ...], ratio: float = DEFAULT_FLM_RATIO):
        super().__init__(Generation(int(c)) for c in channels)
        check_flm_ratio(ratio)
        self.channels = tuple(int(c) for c in channels)
        self.ratio = float(ratio)

    def forward(self, features: list[Tensor], generator: torch.Generator | None = None,
                mask: bool = True, masks: Sequence[Tensor] | None = None) -> list[Tensor]:
        if len(features) != len(self):
            raise ValueError(f"expected {len(self)} feature maps (one per scale), got {len(features)}")
        if masks is not None and len(masks) != len(self):
            raise ValueError(f"expected {len(self)} masks (one per scale), got {len(masks)}")
        out = []
        for i, (f, g) in enumerate(zip(features, self)):
            if mask and self.ratio > 0:
                m = masks[i].to(device=f.device, dtype=f.dtype) if masks is not None else flm_mask(
                    f.shape, self.ratio, generator, f.device, f.dtype)
                f = f * m
            out.append(g(f))
        return out
