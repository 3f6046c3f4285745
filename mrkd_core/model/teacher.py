"""The teacher T (Sec. 3.2): an ImageNet network truncated after its stride-16 stage, frozen.

Eq. 1 takes f_T^1..3 from the stages that end at strides 4, 8 and 16 (a ResNet's layer1-3;
the paper's Table 8 backbones). What comes after (ResNet layer4 and the classifier) is
never built. θ_T is frozen, and the teacher stays in eval mode even when the whole model
is put in training mode, so its BatchNorm keeps the ImageNet running statistics (a
batched pass then equals separate passes, see ``MRKD.forward_train``).

One class per architecture family, built from the backbone's catalog record
(``mrkd_core.backbones``): :class:`ResNetTeacher` (torchvision) here, the
EfficientNet-Lite teacher (timm) in ``mrkd_core.model.lite``. Weights are an explicit
choice (``mrkd_core.model.weights``): ``imagenet`` (checked file, downloaded once where
the backbone's weights are published), a path/URI to a state dict, or ``none`` (random
initialisation; recorded in every result, because it is not the paper's setting).
"""

from __future__ import annotations

import logging

import torchvision
from torch import Tensor, nn

from mrkd_core.backbones import Backbone, get_backbone
from mrkd_core.errors import WeightsError
from mrkd_core.model.teacher_base import Teacher
from mrkd_core.model.weights import imagenet_location, read_state_dict

__all__ = ["ResNetTeacher", "Teacher", "build_teacher", "load_teacher_weights"]

log = logging.getLogger(__name__)


def _out_channels(stage: nn.Sequential) -> int:
    """Channels a torchvision ResNet stage emits (its last BatchNorm's width)."""
    norms = [m for m in stage.modules() if isinstance(m, nn.BatchNorm2d)]
    return norms[-1].num_features


class ResNetTeacher(Teacher):
    """torchvision's ResNet stem and layer1..3: f_T^1..3 of Eq. 1 (the paper's teachers)."""

    unused_prefixes = ("layer4.", "fc.")  # of a full torchvision state dict
    weights_kind = "a torchvision ResNet state dict"

    def __init__(self, backbone: Backbone):
        super().__init__(backbone)
        full = torchvision.models.get_model(backbone.architecture, weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = full.conv1, full.bn1, full.relu, full.maxpool
        self.layer1, self.layer2, self.layer3 = full.layer1, full.layer2, full.layer3
        built = (_out_channels(self.layer1), _out_channels(self.layer2), _out_channels(self.layer3))
        if built != backbone.channels:
            raise ValueError(f"catalog record {backbone.name}: channels {backbone.channels}, torchvision builds {built}")
        self.freeze()

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        f1 = self.layer1(x)
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        return [f1, f2, f3]


def _teacher_class(backbone: Backbone) -> type[Teacher]:
    if backbone.family == "resnet":
        return ResNetTeacher
    if backbone.family == "efficientnet_lite":
        from mrkd_core.model.lite import EfficientNetLiteTeacher  # imports timm (1-2 s): only when asked for

        return EfficientNetLiteTeacher
    raise ValueError(f"catalog record {backbone.name}: unknown family {backbone.family!r}")


def load_teacher_weights(teacher: Teacher, weights: str, progress: bool = True) -> None:
    """Fill ``teacher`` from ``weights`` ('imagenet', 'none' or a path/URI).

    A full network's state dict is accepted (the parts the truncated teacher does not
    build are ignored, a DataParallel ``module.`` prefix is stripped); any other missing,
    extra or mis-shaped key is a ``WeightsError`` naming the first offenders.
    """
    name = teacher.backbone.name
    if weights == "none":
        # DEBUG: a stored model is built this way before its own weights are loaded (model_io).
        log.debug("teacher %s: random weights (teacher_weights=none)", name)
        return
    location = imagenet_location(teacher.backbone, progress) if weights == "imagenet" else weights
    state = teacher.adapt_state_dict(read_state_dict(location))
    kept = {k: v for k, v in state.items() if not k.startswith(teacher.unused_prefixes)}
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
        raise WeightsError(f"teacher weights {location} do not fit {name}: {'; '.join(parts)} — "
                           f"pass {teacher.weights_kind} of {name}")
    teacher.load_state_dict(kept, strict=True)
    log.info("teacher %s: loaded weights from %s", name, location)


def build_teacher(backbone: Backbone | str, weights: str = "imagenet", progress: bool = True) -> Teacher:
    """The frozen teacher of ``backbone`` (a catalog record or its name) with its weights loaded."""
    record = get_backbone(backbone) if isinstance(backbone, str) else backbone
    teacher = _teacher_class(record)(record)
    load_teacher_weights(teacher, weights, progress)
    return teacher

