"""The teacher T (Sec. 3.2): an ImageNet ResNet truncated after layer3, frozen.

Eq. 1 takes f_T^1..3 from the first three residual stages; layer4 and the classifier
are never built. θ_T is frozen, and the teacher stays in eval mode even when the
whole model is put in training mode, so its BatchNorm keeps the ImageNet running
statistics (a batched pass then equals separate passes, see ``MRKD.forward_train``).

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

from mrkd_core.errors import WeightsError, unpickle_error
from mrkd_core.model.specs import backbone_spec

log = logging.getLogger(__name__)

# Keys of a full torchvision state dict that the truncated teacher does not use.
_IGNORED_PREFIXES = ("layer4.", "fc.")


def _out_channels(stage: nn.Sequential) -> int:
    """Channels a torchvision ResNet stage emits (its last BatchNorm's width)."""
    norms = [m for m in stage.modules() if isinstance(m, nn.BatchNorm2d)]
    return norms[-1].num_features


class Teacher(nn.Module):
    """Frozen feature extractor returning [layer1, layer2, layer3] (f_T^1..3 of Eq. 1)."""

    def __init__(self, backbone: str):
        super().__init__()
        backbone_spec(backbone)  # ConfigError naming the field for an unknown backbone
        full = torchvision.models.get_model(backbone, weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = full.conv1, full.bn1, full.relu, full.maxpool
        self.layer1, self.layer2, self.layer3 = full.layer1, full.layer2, full.layer3
        self.backbone = backbone
        self.channels: tuple[int, int, int] = (
            _out_channels(self.layer1), _out_channels(self.layer2), _out_channels(self.layer3)
        )
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "Teacher":
        # Always eval: θ_T is frozen (Sec. 3.2), BatchNorm included.
        return super().train(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return [f1, f2, f3]


def imagenet_weights_path(backbone: str) -> str:
    """Where torchvision caches the ImageNet weights the official code uses (IMAGENET1K_V1).

    Same rule as ``torch.hub.load_state_dict_from_url``: ``$TORCH_HOME/hub/checkpoints/``
    plus the file name of the weights' URL (e.g. ``wide_resnet50_2-95faca4d.pth``).
    """
    backbone_spec(backbone)
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
    except Exception as exc:  # noqa: BLE001 - any failure to read/unpickle is a bad weights file
        raise WeightsError(f"teacher weights {location}: cannot load ({unpickle_error(exc)})") from None
    # Training checkpoints often wrap the weights one level down.
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"teacher weights {location}: not a state dict of tensors "
                           f"(got {type(state).__name__}); save one with torch.save(model.state_dict(), path)")
    return state


def load_teacher_weights(teacher: Teacher, weights: str) -> None:
    """Fill ``teacher`` from ``weights`` ('imagenet', 'none' or a path/URI).

    A full torchvision state dict is accepted (layer4/fc are ignored, a DataParallel
    ``module.`` prefix is stripped); any other missing, extra or mis-shaped key is a
    ``WeightsError`` naming the first offenders.
    """
    if weights == "none":
        log.info("teacher %s keeps random weights (teacher_weights=none): not the paper's setting", teacher.backbone)
        return
    if weights == "imagenet":
        location = imagenet_weights_path(teacher.backbone)
        if not os.path.isfile(location):
            raise WeightsError(
                f"ImageNet weights for {teacher.backbone} are not in the local torch cache: copy "
                f"{os.path.basename(location)} to {location} (or set TORCH_HOME), or pass "
                "teacher_weights=PATH|URI to a state dict"
            )
    else:
        location = weights
    state = _read_state_dict(location)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    kept = {k: v for k, v in state.items() if not k.startswith(_IGNORED_PREFIXES)}
    own = teacher.state_dict()
    missing = [k for k in own if k not in kept]
    extra = [k for k in kept if k not in own]
    shapes = [f"{k} {tuple(kept[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in kept and kept[k].shape != v.shape]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if extra:
            parts.append(f"{len(extra)} unexpected (e.g. {', '.join(extra[:3])})")
        if shapes:
            parts.append(f"{len(shapes)} of wrong shape (e.g. {'; '.join(shapes[:2])})")
        raise WeightsError(
            f"teacher weights {location} do not fit {teacher.backbone}: {'; '.join(parts)} — "
            f"pass a torchvision {teacher.backbone} state dict"
        )
    teacher.load_state_dict(kept, strict=True)
    log.info("teacher %s: loaded weights from %s", teacher.backbone, location)


def build_teacher(backbone: str, weights: str = "imagenet") -> Teacher:
    """The frozen teacher with its weights loaded (see ``load_teacher_weights``)."""
    teacher = Teacher(backbone)
    load_teacher_weights(teacher, weights)
    return teacher
