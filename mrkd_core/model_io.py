"""Saving and loading trained models as self-contained files.

A model file holds the config and the *whole* state dict, teacher included, so that an
inspection engineer can score images on a machine without ImageNet weights or a
network. It contains only tensors, strings and numbers: ``torch.load(weights_only=True)``
reads it, and nothing in it can execute code.
"""

from __future__ import annotations

import io
import logging

import torch

from mrkd_core.config import MRKDConfig
from mrkd_core.device import place_model
from mrkd_core.errors import MRKDError, StorageError, unpickle_error
from mrkd_core.model import MRKD, build_mrkd
from mrkd_core.revision import TRAINING_REVISION
from mrkd_core.storage import ArtifactStore, open_uri

log = logging.getLogger(__name__)

MODEL_FORMAT = "mrkd-model/1"


def model_bytes(model: MRKD, cfg: MRKDConfig, extra: dict | None = None) -> bytes:
    """The model file's bytes: format, training revision, config JSON, the whole state dict, ``extra``."""
    state = {
        "format": MODEL_FORMAT,
        "training_revision": TRAINING_REVISION,
        "config": cfg.to_json(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": dict(extra or {}),
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def save_model(model: MRKD, cfg: MRKDConfig, store: ArtifactStore, rel_path: str = "model.pt",
               extra: dict | None = None) -> str:
    """Write ``model.pt`` atomically into ``store``; returns its URI."""
    store.write_bytes(rel_path, model_bytes(model, cfg, extra))
    return store.uri(rel_path)


def load_model_bytes(data: bytes, source: str, device: str | torch.device = "cpu") -> tuple[MRKD, MRKDConfig]:
    """(model in eval mode on ``device``, its config) from a model file's bytes; ``MRKDError`` naming ``source``.

    State dicts in an earlier naming load too (``bottleneck.*`` → ``ocbe.*``, ``MRKD.load_state_dict``).
    """
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not our model file"
        raise MRKDError(f"{source}: not a readable MRKD model file ({unpickle_error(exc)})") from None
    if not isinstance(state, dict) or state.get("format") != MODEL_FORMAT:
        raise MRKDError(f"{source}: not an MRKD model file (expected format {MODEL_FORMAT}); "
                        "pass the model.pt written by `mrkd train`")
    cfg = MRKDConfig.from_json(state["config"], source=source)
    # The teacher's weights are inside the file: build it randomly initialised, then load.
    model = build_mrkd(cfg.replace(teacher_weights="none"))
    try:
        model.load_state_dict(state["state_dict"], strict=True)
    except RuntimeError as exc:
        raise MRKDError(f"{source}: weights do not match the {cfg.backbone} architecture ({exc})") from None
    place_model(model, cfg, torch.device(device)).eval()
    return model, cfg


def load_model(location: str | ArtifactStore, rel_path: str | None = None,
               device: str | torch.device = "cpu") -> tuple[MRKD, MRKDConfig]:
    """Load a model from a path/URI, or from ``rel_path`` inside a store."""
    if isinstance(location, ArtifactStore):
        rel = rel_path or "model.pt"
        source = location.uri(rel)
        data = location.read_bytes(rel)
    else:
        source = str(location)
        try:
            with open_uri(source, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            raise MRKDError(f"{source}: model file not found — pass the model.pt written by `mrkd train`") from None
        except Exception as exc:  # noqa: BLE001
            raise StorageError(f"{source}: cannot read model ({type(exc).__name__}: {exc})") from None
    return load_model_bytes(data, source, device)
