"""The MRKD network: teacher T, bottleneck B, student S and generation modules G.

No training loop here (see ``mrkd_core/train.py``); this module only wires Eq. 1-3.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from mrkd_core.config import MRKDConfig
from mrkd_core.model.bottleneck import Bottleneck
from mrkd_core.model.flm import GenerationModules
from mrkd_core.model.student import Student
from mrkd_core.model.teacher import Teacher, build_teacher


class MRKD(nn.Module):
    def __init__(self, teacher: Teacher, bottleneck: Bottleneck, student: Student,
                 generation: GenerationModules | None):
        super().__init__()
        self.teacher = teacher
        self.bottleneck = bottleneck
        self.student = student
        self.generation = generation  # None: FLM off (Table 5)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """θ_S, θ_B, θ_G of Algorithm 1 (θ_T stays frozen)."""
        yield from self.bottleneck.parameters()
        yield from self.student.parameters()
        if self.generation is not None:
            yield from self.generation.parameters()

    def _restore(self, f_input: list[Tensor], generator: torch.Generator | None, mask: bool) -> list[Tensor]:
        f_s = self.student(self.bottleneck(f_input))
        if self.generation is None:
            return f_s
        return self.generation(f_s, generator=generator, mask=mask)

    def forward_train(self, x_normal: Tensor, x_synth: Tensor,
                      generator: torch.Generator | None = None) -> tuple[list[Tensor], list[Tensor]]:
        """(f_T,n^l, f_G^l) for Eq. 4.

        The teacher runs once on [x_n; x_a]: it is in eval mode, so the batched pass
        equals two separate passes (tested) at a fraction of the launch overhead.
        When ILM is off the caller passes the same tensor twice and the teacher runs once.
        """
        with torch.no_grad():
            if x_synth is x_normal:
                f_normal = self.teacher(x_normal)
                f_synth = f_normal
            else:
                n = x_normal.shape[0]
                both = self.teacher(torch.cat([x_normal, x_synth]))
                f_normal = [f[:n] for f in both]
                f_synth = [f[n:] for f in both]
        return f_normal, self._restore(f_synth, generator, mask=True)

    def forward_test(self, x: Tensor, generator: torch.Generator | None = None,
                     flm: bool = True) -> tuple[list[Tensor], list[Tensor]]:
        """(f_T^l, f_G^l) of a test batch; ``flm`` masks features as Sec. 3.4 prescribes."""
        with torch.no_grad():
            f_t = self.teacher(x)
        return f_t, self._restore(f_t, generator, mask=flm)

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        return self.forward_test(x)


def build_mrkd(cfg: MRKDConfig) -> MRKD:
    teacher = build_teacher(cfg.backbone, cfg.teacher_weights)
    generation = GenerationModules(teacher.channels, cfg.flm_ratio) if cfg.flm else None
    return MRKD(teacher, Bottleneck(cfg.backbone), Student(cfg.backbone), generation)
