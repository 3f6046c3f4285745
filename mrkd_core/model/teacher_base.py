"""The frozen teacher's contract, shared by every architecture family (``model/teacher.py``, ``model/lite.py``)."""

from __future__ import annotations

from torch import Tensor, nn

from mrkd_core.backbones import Backbone


class Teacher(nn.Module):
    """A frozen feature extractor returning [f_T^1, f_T^2, f_T^3] (strides 4, 8, 16) of Eq. 1.

    Subclasses build the layers of one architecture family and say which keys of a full
    network's state dict they do not use (``unused_prefixes``) and how a published file's
    key names map to theirs (``adapt_state_dict``).
    """

    unused_prefixes: tuple[str, ...] = ()
    weights_kind = "a state dict of the same architecture"

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.backbone = backbone
        self.channels: tuple[int, int, int] = backbone.channels

    def freeze(self) -> None:
        """θ_T is frozen (Sec. 3.2): no gradients, eval mode for good."""
        for p in self.parameters():
            p.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> "Teacher":
        # Always eval: θ_T is frozen (Sec. 3.2), BatchNorm included.
        return super().train(False)

    def adapt_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """A state dict in this module's key names (published files may name keys otherwise)."""
        return state
