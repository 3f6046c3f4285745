"""Every trainable tensor starts from the distribution the official code gives it.

The expectation is the table of ``mrkd_core/model/init.py`` (and docs/fidelity.md),
written out here independently of the code under test: Kaiming-normal fan_out (ReLU
gain) for ``nn.Conv2d`` weights, BatchNorm weight 1 / bias 0, PyTorch's default
Kaiming-uniform (a=√5) for transposed convolutions and conv biases. Each tensor's
sample mean and standard deviation must agree with its scheme within sampling error,
and its shape (normal vs uniform) must show in the kurtosis; a parameter that no rule
covers fails the test, so a new layer cannot start from an undocumented scheme.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mrkd_core.config import BACKBONES, MRKDConfig
from mrkd_core.model import build_mrkd

Z = 6.0  # standard errors allowed: ~300 tensors per model must all pass by chance


def _receptive(w: torch.Tensor) -> int:
    return math.prod(w.shape[2:])


def _expected(module: nn.Module, name: str, p: torch.Tensor) -> tuple[str, float]:
    """(kind, std) of the documented scheme for parameter ``name`` of ``module``."""
    if isinstance(module, nn.BatchNorm2d):
        return ("const1" if name == "weight" else "const0"), 0.0
    if isinstance(module, nn.ConvTranspose2d) and name == "weight":
        # PyTorch's fan_in of a transposed conv weight (C_in, C_out, k, k) is C_out·k·k.
        bound = 1.0 / math.sqrt(p.shape[1] * _receptive(p))
        return "uniform", bound / math.sqrt(3.0)
    if isinstance(module, nn.Conv2d) and name == "weight":
        fan_out = p.shape[0] * _receptive(p)
        return "normal", math.sqrt(2.0 / fan_out)
    if isinstance(module, nn.Conv2d) and name == "bias":
        fan_in = module.weight.shape[1] * _receptive(module.weight)
        return "uniform", 1.0 / math.sqrt(fan_in) / math.sqrt(3.0)
    raise AssertionError(f"{type(module).__name__}.{name}: no documented initialisation")


def _check(label: str, kind: str, std: float, p: torch.Tensor) -> None:
    x = p.detach().double().flatten()
    n = x.numel()
    if kind == "const1":
        assert torch.all(x == 1), f"{label}: BatchNorm weight must start at 1"
        return
    if kind == "const0":
        assert torch.all(x == 0), f"{label}: BatchNorm bias must start at 0"
        return
    mean, sd = x.mean().item(), x.std().item()
    kurt = (((x - x.mean()) / x.std()) ** 4).mean().item()
    excess = 0.0 if kind == "normal" else -1.2  # population excess kurtosis
    # Standard error of the sample std: sqrt((κ - 1) / (4n)) relative, κ the kurtosis.
    se_sd = std * math.sqrt((excess + 3.0 - 1.0) / (4 * n))
    assert abs(mean) <= Z * std / math.sqrt(n), f"{label}: mean {mean:.3g}, expected 0 ± {std / math.sqrt(n):.2g}"
    assert abs(sd - std) <= Z * se_sd, f"{label}: std {sd:.5g}, expected {std:.5g} ({kind}) ± {se_sd:.2g}"
    if n >= 2000:  # the kurtosis tells a normal from a uniform draw with the same std
        assert abs(kurt - 3.0 - excess) < 0.6, f"{label}: kurtosis {kurt:.2f} is not that of a {kind} draw"
    if kind == "uniform":
        assert x.abs().max().item() <= std * math.sqrt(3.0) * (1 + 1e-6), f"{label}: outside the uniform bound"


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_trainable_tensor_starts_as_documented(backbone):
    torch.manual_seed(0)
    model = build_mrkd(MRKDConfig(backbone=backbone, teacher_weights="none"))
    parts = {"ocbe": model.ocbe, "student": model.student, "generation": model.generation}
    checked = 0
    for part, root in parts.items():
        for mod_name, module in root.named_modules():
            for name, p in module.named_parameters(recurse=False):
                kind, std = _expected(module, name, p)
                _check(f"{backbone} {part}.{mod_name}.{name}", kind, std, p)
                checked += 1
    assert checked == len(model.trainable_parameters())


def test_generation_modules_are_kaiming_fan_out():
    """The figure of the finding: WRN50's generation conv1 std is sqrt(2 / (C·9)), not 2.45× smaller."""
    torch.manual_seed(0)
    model = build_mrkd(MRKDConfig(backbone="wide_resnet50_2", teacher_weights="none"))
    for g, c in zip(model.generation, (256, 512, 1024)):
        for conv in (g.conv1, g.conv2):
            assert conv.weight.std().item() == pytest.approx(math.sqrt(2.0 / (c * 9)), rel=0.01)
