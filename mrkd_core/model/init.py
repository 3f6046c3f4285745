"""How OCBE, the student and the FLM generation modules start: the official code's initialisation.

RD4AD's bottleneck (``BN_layer``) and decoder (``de_resnet``) end their constructors with
one loop over their modules, and MRKD's official code builds its generation modules
inside the decoder before that loop, so all three get the same scheme:

================================  =============================================  ======================
tensor                            distribution                                   std
================================  =============================================  ======================
``nn.Conv2d`` weight              Kaiming normal, mode ``fan_out``, ReLU gain    sqrt(2 / (C_out·k·k))
``nn.BatchNorm2d`` weight / bias  constant 1 / 0                                 0
``nn.ConvTranspose2d`` weight     PyTorch's default (Kaiming uniform, a=√5)      1 / sqrt(3·C_out·k·k)
``nn.Conv2d`` bias (generation)   PyTorch's default, U(±1/sqrt(C_in·k·k))        1 / sqrt(3·C_in·k·k)
================================  =============================================  ======================

Transposed convolutions are not ``nn.Conv2d`` instances, so the loop skips them and
they keep PyTorch's default; the loop touches weights only, so conv biases keep theirs
(only the generation convolutions have biases). No ``zero_init_residual``. BatchNorm
keeps PyTorch's momentum 0.1 and eps 1e-5, as in the official code. The table is held
by ``tests/core/test_init.py`` and docs/fidelity.md.
"""

from __future__ import annotations

from torch import nn


def init_like_rd4ad(module: nn.Module) -> None:
    """Apply the official initialisation loop to every submodule of ``module`` (in place).

    Kaiming-normal (fan_out, ReLU) for every ``nn.Conv2d`` weight, BatchNorm/GroupNorm
    weight 1 and bias 0; everything else keeps PyTorch's default (see the module table).
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
