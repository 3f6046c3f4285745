"""The MRKD network: teacher T, OCBE bottleneck B, student S and generation modules G.

No training loop here (see ``mrkd_core/train.py``); this module only wires Eq. 1-3:
f_T,n = T(x_n), f_B = B(T(x_a)), f_S = S(f_B), f_G = G(f_S ⊙ M).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mrkd_core.backbones import get_backbone
from mrkd_core.config import MRKDConfig
from mrkd_core.errors import ConfigError
from mrkd_core.model.flm import GenerationModules, flm_test_masks
from mrkd_core.model.ocbe import OCBE
from mrkd_core.model.student import Student
from mrkd_core.model.teacher import Teacher, build_teacher

# State-dict prefixes of models and checkpoints written before a rename (old → new).
# Loading maps them, so files written by earlier versions stay loadable.
LEGACY_PREFIXES = {"bottleneck.": "ocbe."}  # OCBE was called Bottleneck (attribute .bottleneck)


def _upgrade_legacy_keys(module: nn.Module, state_dict: dict, prefix: str, *_args) -> None:
    """``load_state_dict`` pre-hook: rename the keys of ``LEGACY_PREFIXES`` in place."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix):]
        for old, new in LEGACY_PREFIXES.items():
            if rest.startswith(old) and prefix + new + rest[len(old):] not in state_dict:
                state_dict[prefix + new + rest[len(old):]] = state_dict.pop(key)
                break


class MRKD(nn.Module):
    """T, B (``ocbe``), S and G (``generation`` is None when FLM is off, Table 5).

    ``flm_test_seed`` fixes the test-time masks (``flm_test_masks``: one mask per scale,
    a function of the seed, the scale and the feature map's size), so that an image's
    anomaly map is the same alone, in any batch, on any device and in an exported graph
    (the official code draws them at random per call: its scores vary by ~0.4% between
    runs and with the batch an image is scored in). ``channels_last``
    records the memory layout ``mrkd_core.device.place_model`` chose; it is not a
    constructor argument because only placing the model decides it.

    ``load_state_dict`` accepts state dicts in the naming of earlier versions
    (``bottleneck.*`` for ``ocbe.*``, see ``LEGACY_PREFIXES``).
    """

    def __init__(self, teacher: Teacher, ocbe: OCBE, student: Student,
                 generation: GenerationModules | None, *, flm_test_seed: int = 0):
        super().__init__()
        if tuple(student.channels) != tuple(teacher.channels):
            raise ConfigError(f"student channels {student.channels} do not match the teacher's "
                              f"{teacher.channels}: build both from the same backbone")
        self.teacher = teacher
        self.ocbe = ocbe
        self.student = student
        self.generation = generation
        self.flm_test_seed = int(flm_test_seed)
        self.channels_last = False
        self.register_load_state_dict_pre_hook(_upgrade_legacy_keys)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """θ_B, θ_S, θ_G of Algorithm 1 (θ_T stays frozen)."""
        params = [*self.ocbe.parameters(), *self.student.parameters()]
        if self.generation is not None:
            params += list(self.generation.parameters())
        return params

    def prepare_input(self, x: Tensor) -> Tensor:
        """An image batch in the memory layout of the model (``place_model`` chose it); checks its rank."""
        if x.dim() != 4:
            raise ValueError(f"expected an image batch B×3×H×W, got shape {tuple(x.shape)}")
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @torch.no_grad()
    def teacher_features(self, x: Tensor) -> list[Tensor]:
        """f_T^1..3 = T(x) of Eq. 1 for a normalised image batch (no gradient: θ_T is frozen)."""
        return self.teacher(self.prepare_input(x))

    @torch.no_grad()
    def teacher_pair(self, x_normal: Tensor, x_synth: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """(f_T,n, f_T,a): the teacher on x_n and x_a in one batched pass over [x_n; x_a].

        The teacher is frozen and stays in eval mode, so the batched pass equals two
        separate passes (the official code runs two) and launches half the kernels.
        """
        x_normal, x_synth = self.prepare_input(x_normal), self.prepare_input(x_synth)
        if x_synth.shape[1:] != x_normal.shape[1:]:
            raise ValueError(f"normal {tuple(x_normal.shape)} and synthetic {tuple(x_synth.shape)} "
                             "batches must have the same image shape")
        n = x_normal.shape[0]
        both = self.teacher(torch.cat([x_normal, x_synth]))
        return [f[:n] for f in both], [f[n:] for f in both]

    def restore(self, f_teacher: list[Tensor], generator: torch.Generator | None = None,
                mask: bool = True, masks: list[Tensor] | None = None) -> list[Tensor]:
        """f_G^l = G(S(B(f_T)) ⊙ M^l) (Eq. 1-3); without FLM the student output S(B(f_T)) itself.

        ``mask=False`` restores without masking; ``masks`` (one per scale, broadcast over
        the batch: the test-time masks) masks every image alike; else ``generator`` draws
        a mask per image (training; None: the global RNG of the features' device).
        """
        f_s = self.student(self.ocbe(f_teacher))
        if self.generation is None:
            return f_s
        return self.generation(f_s, generator=generator, mask=mask, masks=masks)

    def test_masks(self, shapes: list[torch.Size] | list[tuple[int, ...]]) -> list[Tensor]:
        """The test-time FLM masks (1×1×H×W per scale, CPU) for features of these shapes
        (the student's outputs have the teacher's shapes)."""
        ratio = self.generation.ratio if self.generation is not None else 0.0
        return flm_test_masks(self.flm_test_seed, shapes, ratio)

    def forward_train(self, x_normal: Tensor, x_synth: Tensor,
                      generator: torch.Generator | None = None) -> tuple[list[Tensor], list[Tensor]]:
        """(f_T,n^l, f_G^l) for the loss of Eq. 4 from a clean and a synthetic batch.

        The teacher runs once on [x_n; x_a] (``teacher_pair``); ``generator`` draws the FLM
        masks. The training loop itself takes f_T,n from its feature source (a per-run
        cache or this teacher pass, ``mrkd_core.train``) and calls ``restore``.
        """
        f_normal, f_synth = self.teacher_pair(x_normal, x_synth)
        return f_normal, self.restore(f_synth, generator, mask=True)

    def forward_test(self, x: Tensor, flm: bool = True,
                     masks: list[Tensor] | None = None) -> tuple[list[Tensor], list[Tensor]]:
        """(f_T^l, f_G^l) of a test batch for Eq. 5-6.

        ``flm=True`` masks the student features as Sec. 3.4 prescribes, every image with
        the same fixed masks: ``masks`` when given (one per scale, broadcastable to
        B×1×H×W; an exported graph passes them as constants), else
        ``test_masks`` of the teacher features' shapes. ``flm=False`` restores without masking.
        """
        x = self.prepare_input(x)
        with torch.no_grad():
            f_t = self.teacher(x)
        mask = flm and self.generation is not None and self.generation.ratio > 0
        if mask and masks is None:
            masks = self.test_masks([f.shape for f in f_t])
        return f_t, self.restore(f_t, None, mask=mask, masks=masks if mask else None)

    def forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        return self.forward_test(x)


def build_mrkd(cfg: MRKDConfig) -> MRKD:
    """The network of ``cfg`` on the CPU in NCHW (``mrkd_core.device.place_model`` moves it and picks the layout).

    Every part is built from the backbone's catalog record (``mrkd_core.backbones``), in
    the order that fixes which random numbers each draws: teacher, generation, OCBE, student.
    """
    backbone = get_backbone(cfg.backbone)
    teacher = build_teacher(backbone, cfg.teacher_weights, progress=cfg.progress)
    generation = GenerationModules(backbone.channels, cfg.flm_ratio) if cfg.flm else None
    return MRKD(teacher, OCBE(backbone), Student(backbone), generation, flm_test_seed=cfg.flm_test_seed)
