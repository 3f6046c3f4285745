"""Training checkpoints: what one holds, how it is written, found, verified and resumed.

A checkpoint ``epoch-NNNN.pt`` holds the state after NNNN completed epochs (trainable
weights, Adam's state, the torch RNG, the epoch losses, the config, the training
revision and the training data's fingerprint), written with a ``.sha256.json`` sidecar after it. Resume takes the newest
checkpoint whose bytes match their sidecar and falls back to an older one when the
newest is corrupt; the two newest are kept (``KEEP_CHECKPOINTS``). A checkpoint of
another config (``resume_key``) is refused; one written by another training revision
(``mrkd_core.revision``) is discarded, and training starts over; one trained on other
data (``mrkd_core.lineage``) is discarded the same way: the images changed, so a new model
is trained on them (its result goes to a run directory of its own; the model of the old
images stays where it is). Whether checkpoints are continued at all is the task's
:class:`CheckpointMode`, decided once per task by the engine's caller.

Where checkpoints live is the caller's choice (a store or sub-store); the engine puts
them under ``checkpoints/<dataset>/<category>/<config_hash>/`` (docs/storage.md).
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from enum import Enum

import torch

from mrkd_core.config import MRKDConfig
from mrkd_core.errors import StorageError, unpickle_error
from mrkd_core.lineage import TRAIN_FINGERPRINT, TRAINING_REVISION_KEY, Lineage
from mrkd_core.model import MRKD
from mrkd_core.revision import TRAINING_REVISION
from mrkd_core.storage import ArtifactStore

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "mrkd-checkpoint/1"


class CheckpointMode(Enum):
    """What a training does with the checkpoints it finds: decided once per task (``engine.train_evaluate``).

    ``RESUME`` (``mrkd train``, the flows): continue the key's shared checkpoints when they
    were trained on this data by this training revision; otherwise discard them and train
    from scratch (the data changed: a new model of the new images). ``REPLACE`` (``mrkd
    train --no-resume``): train from scratch into the key's shared checkpoints, replacing
    them. ``FORCED_RUN`` (a forced flow run): train from scratch into a folder of the run's
    own, resumed if the task is retried and removed once its run directory is complete.
    The last two ignore complete results of other runs (:attr:`forced`).
    """

    RESUME = "resume"
    REPLACE = "replace"
    FORCED_RUN = "forced-run"

    @property
    def forced(self) -> bool:
        """Train again even when another run holds a complete result of the key."""
        return self in (CheckpointMode.REPLACE, CheckpointMode.FORCED_RUN)

    @property
    def resumes(self) -> bool:
        """Whether checkpoints already in the folder are continued (else replaced)."""
        return self is not CheckpointMode.REPLACE


KEEP_CHECKPOINTS = 2  # the latest and one fallback in case the latest is corrupt
_CKPT_RE = re.compile(r"epoch-(\d{4,})\.pt$")


def checkpoint_name(epoch: int) -> str:
    """``epoch-NNNN.pt``: the checkpoint after ``epoch`` completed epochs."""
    return f"epoch-{epoch:04d}.pt"


def _sidecar(name: str) -> str:
    return name + ".sha256.json"


def checkpoint_state(model: MRKD, optimizer: torch.optim.Optimizer, cfg: MRKDConfig, epoch: int,
                     losses: list[float], train_fingerprint: str | None = None) -> dict:
    """What the checkpoint after ``epoch`` completed epochs holds, as host-memory copies taken now.

    Copies, not references: the next optimizer step updates the parameters and Adam's
    moments in place while :class:`CheckpointWriter` may still be serialising this state.
    The frozen teacher is left out (it is rebuilt from its weights). ``train_fingerprint``
    (the training data's, :mod:`mrkd_core.data.fingerprint`) keys resume with the config
    and the training revision.
    """
    return {
        "format": CHECKPOINT_FORMAT,
        "training_revision": TRAINING_REVISION,
        TRAIN_FINGERPRINT: train_fingerprint,
        "config": cfg.to_json(),
        "epoch": epoch,
        "losses": list(losses),
        "model": {k: _host_copy(v) for k, v in model.state_dict().items() if not k.startswith("teacher.")},
        "optimizer": _host_copy(optimizer.state_dict()),
        "torch_rng": torch.get_rng_state(),
    }


def _host_copy(obj):
    """``obj`` with every tensor copied to CPU memory (a new tensor even when it is on the CPU)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _host_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_host_copy(v) for v in obj)
    return obj


def write_checkpoint(store: ArtifactStore, state: dict) -> str:
    """Serialise ``state`` (from :func:`checkpoint_state`), store it, then its sha256 sidecar, then prune.

    The sidecar is written after the checkpoint, so a crash in between leaves a
    checkpoint without a sidecar, which resume treats as unverified and skips.
    """
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    name = checkpoint_name(int(state["epoch"]))
    store.write_bytes(name, data)
    store.write_json(_sidecar(name), {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})
    for old in checkpoint_epochs(store)[KEEP_CHECKPOINTS:]:
        _remove(store, old)
    return name


def save_checkpoint(store: ArtifactStore, model: MRKD, optimizer: torch.optim.Optimizer,
                    cfg: MRKDConfig, epoch: int, losses: list[float], train_fingerprint: str | None = None) -> str:
    """Write the state after ``epoch`` completed epochs now, in this thread (see also :class:`CheckpointWriter`)."""
    return write_checkpoint(store, checkpoint_state(model, optimizer, cfg, epoch, losses, train_fingerprint))


class CheckpointWriter:
    """Stores checkpoints from a background thread while training goes on.

    A WRN50 checkpoint (OCBE, student and generation modules with Adam's two moments:
    109 M parameters × 3) is 1.24 GB; serialising, hashing and storing it takes 5-8 s on
    the 2-core VM of docs/performance.md, more to S3, while a GPU epoch of an MVTec AD
    category takes seconds: written in the training loop, it would idle the GPU most of
    the time. :meth:`save` copies the state to host memory (a fraction of a second) and
    returns; the thread does the rest. At most one write is in flight: ``save`` first
    waits for the previous one, so host memory holds at most one extra copy and no
    checkpoint is skipped. A failed write is raised by the next ``save`` or by :meth:`wait`.
    ``train_fingerprint`` is recorded in every checkpoint.
    """

    def __init__(self, store: ArtifactStore, train_fingerprint: str | None = None):
        self.store = store
        self.train_fingerprint = train_fingerprint
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mrkd-checkpoint")
        self._pending = None

    def save(self, model: MRKD, optimizer: torch.optim.Optimizer, cfg: MRKDConfig, epoch: int,
             losses: list[float]) -> None:
        self.wait()
        state = checkpoint_state(model, optimizer, cfg, epoch, losses, self.train_fingerprint)
        self._pending = self._pool.submit(write_checkpoint, self.store, state)

    def wait(self) -> None:
        """Block until the write in flight (if any) is stored; re-raise its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Finish the write in flight and stop the thread; an error is logged, not raised.

        For ``finally`` blocks: an exception already on its way out must not be replaced
        by a storage error, and the finished checkpoint still helps the retry resume.
        """
        try:
            self.wait()
        except Exception as exc:  # noqa: BLE001 - reported, the original exception (if any) wins
            log.error("checkpoint write to %s failed: %s", self.store.uri(), exc)
        finally:
            self._pool.shutdown(wait=True)


def checkpoint_epochs(store: ArtifactStore) -> list[int]:
    """Epochs that have a checkpoint file in ``store``, newest first."""
    epochs = []
    for rel in store.list(""):
        m = _CKPT_RE.search(rel)
        if m:
            epochs.append(int(m.group(1)))
    return sorted(epochs, reverse=True)


def resume_key(cfg: MRKDConfig) -> dict:
    """What must match to continue a checkpoint: everything but the number of epochs,
    so that a finished run can be extended (2 epochs + 2 more == 4 epochs)."""
    key = cfg.hashed_dict()
    key.pop("epochs")
    return key


def load_latest_checkpoint(store: ArtifactStore, cfg: MRKDConfig,
                           train_fingerprint: str | None = None) -> dict | None:
    """The newest checkpoint whose sha256 matches its sidecar; corrupt ones are reported and skipped.

    Raises ``StorageError`` when the newest readable checkpoint belongs to another config;
    returns None when there is no usable checkpoint. One written by another training
    revision can never be continued: every checkpoint of ``store`` is discarded and None
    returned, so training starts from scratch. One trained on other data (when
    ``train_fingerprint`` is given) is discarded the same way.
    """
    for epoch in checkpoint_epochs(store):
        name = checkpoint_name(epoch)
        try:
            meta = store.read_json(_sidecar(name))
            data = store.read_bytes(name)
        except (FileNotFoundError, StorageError) as exc:
            log.warning("checkpoint %s unusable (%s); trying an older one", store.uri(name), exc)
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest != meta.get("sha256"):
            log.warning(
                "checkpoint %s is corrupt or truncated (sha256 %s…, expected %s…); falling back to an older one",
                store.uri(name), digest[:12], str(meta.get("sha256"))[:12],
            )
            continue
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - refused (objects other than tensors) or unreadable
            log.warning("checkpoint %s cannot be loaded (%s); trying an older one", store.uri(name),
                        unpickle_error(exc))
            continue
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            log.warning("checkpoint %s has unknown format %r; ignoring it", store.uri(name), found)
            continue
        stored_cfg = MRKDConfig.from_json(state["config"], source=store.uri(name))
        if resume_key(stored_cfg) != resume_key(cfg):
            raise StorageError(
                f"checkpoint {store.uri(name)} belongs to config {stored_cfg.config_hash()}, not "
                f"{cfg.config_hash()}; train into another output folder or delete its checkpoints"
            )
        check = (TRAINING_REVISION_KEY, TRAIN_FINGERPRINT) if train_fingerprint else (TRAINING_REVISION_KEY,)
        stale = Lineage(cfg.config_hash(), train_fingerprint or "").stale_reason(state, check)
        if stale is not None:
            # The same config trains differently now (mrkd_core.revision), or the data
            # changed: continuing this state would mix two trainings. It can never be
            # resumed, so it goes, and the run starts from scratch (pruning would
            # otherwise keep its higher epochs).
            log.warning("checkpoint %s was %s: it cannot be resumed; training starts from scratch and replaces it",
                        store.uri(name), stale)
            discard_checkpoints(store)
            return None
        if int(state["epoch"]) > cfg.epochs:
            log.warning("checkpoint %s is past epoch %d; ignoring it", store.uri(name), cfg.epochs)
            continue
        return state
    return None


def resume_training(store: ArtifactStore, cfg: MRKDConfig, model: MRKD, optimizer: torch.optim.Optimizer,
                    train_fingerprint: str | None = None) -> tuple[int, list[float]]:
    """Load the newest usable checkpoint of ``store`` into ``model``, ``optimizer`` and torch's RNG.

    Returns ``(completed epochs, their losses)``; ``(0, [])`` when there is none.
    ``train_fingerprint`` as in :func:`load_latest_checkpoint`.
    State dicts in an earlier naming load too (``MRKD.load_state_dict``). Raises
    ``StorageError`` when the checkpoint's weights do not fit the model.
    """
    state = load_latest_checkpoint(store, cfg, train_fingerprint)
    if state is None:
        return 0, []
    loaded = model.load_state_dict(state["model"], strict=False)
    bad = [k for k in loaded.missing_keys if not k.startswith("teacher.")]
    if bad or loaded.unexpected_keys:
        raise StorageError(f"checkpoint in {store.uri()} does not match the model: {bad or loaded.unexpected_keys}")
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["epoch"]), list(state["losses"])


def _remove(store: ArtifactStore, epoch: int) -> None:
    store.remove(checkpoint_name(epoch))
    store.remove(_sidecar(checkpoint_name(epoch)))


def discard_checkpoints(store: ArtifactStore) -> None:
    """Remove every ``epoch-NNNN.pt`` of ``store`` and its sidecar."""
    for epoch in checkpoint_epochs(store):
        _remove(store, epoch)
