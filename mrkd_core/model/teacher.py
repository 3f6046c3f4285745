"""The teacher T (Sec. 3.2): an ImageNet ResNet truncated after layer3, frozen.

Weights are an explicit choice, never fetched behind the caller's back:
``imagenet`` reads torchvision's file from the local torch cache only, a path/URI
reads a state dict, ``none`` keeps the random initialisation (recorded in every
result, because it is not the paper's setting).
"""

from __future__ import annotations

import logging
import os

import torch
import torchvision
from torch import Tensor, nn

from mrkd_core.errors import WeightsError
from mrkd_core.model.specs import backbone_spec

log = logging.getLogger(__name__)

_KEPT = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.")


class Teacher(nn.Module):
    """Frozen feature extractor returning [layer1, layer2, layer3] (f_T^1..3 of Eq. 1)."""

    def __init__(self, backbone: str):
        super().__init__()
        spec = backbone_spec(backbone)
        full = torchvision.models.get_model(backbone, weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = full.conv1, full.bn1, full.relu, full.maxpool
        self.layer1, self.layer2, self.layer3 = full.layer1, full.layer2, full.layer3
        self.channels = spec.channels
        self.backbone = backbone
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "Teacher":
        # Always eval: BatchNorm must keep ImageNet running statistics (Sec. 3.2, θ_T frozen).
        return super().train(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return [f1, f2, f3]


def imagenet_weights_path(backbone: str) -> str:
    """Where torchvision would cache the ImageNet weights the official code uses (V1)."""
    weights = torchvision.models.get_model_weights(backbone).IMAGENET1K_V1
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))


def _read_state_dict(location: str) -> dict[str, Tensor]:
    from mrkd_core.storage import open_uri

    try:
        with open_uri(location, "rb") as fh:
            state = torch.load(fh, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"teacher weights {location}: file not found — pass an existing path/URI, "
                           "'imagenet' or 'none'") from None
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle is a bad weights file
        raise WeightsError(f"teacher weights {location}: cannot load ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"teacher weights {location}: not a state dict")
    return state


def load_teacher_weights(teacher: Teacher, weights: str) -> None:
    """Fill ``teacher`` from ``weights`` ('imagenet', 'none' or a path/URI)."""
    if weights == "none":
        log.info("teacher %s keeps random weights (teacher_weights=none): not the paper's setting", teacher.backbone)
        return
    if weights == "imagenet":
        path = imagenet_weights_path(teacher.backbone)
        if not os.path.isfile(path):
            raise WeightsError(
                f"ImageNet weights for {teacher.backbone} are not in the local torch cache ({path}); "
                f"copy {os.path.basename(path)} there (or set TORCH_HOME), or pass --teacher-weights PATH|URI"
            )
        location = path
    else:
        location = weights
    state = _read_state_dict(location)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    kept = {k: v for k, v in state.items() if k.startswith(_KEPT)}
    try:
        result = teacher.load_state_dict(kept, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise WeightsError(f"teacher weights {location} do not fit {teacher.backbone}: "
                           f"{str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else exc}") from None
    if result.missing_keys:
        raise WeightsError(
            f"teacher weights {location} do not fit {teacher.backbone}: missing {result.missing_keys[:3]}… "
            f"({len(result.missing_keys)} keys) — is it a {teacher.backbone} state dict?"
        )


def build_teacher(backbone: str, weights: str = "imagenet") -> Teacher:
    teacher = Teacher(backbone)
    load_teacher_weights(teacher, weights)
    return teacher
