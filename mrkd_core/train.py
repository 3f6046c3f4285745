"""One MRKD training run (Algorithm 1, training stage) from a frozen config.

The whole step fits on one screen (``_train_step``): synthesise (ILM, in DataLoader
workers), the teacher on x_a (f_T,n of the clean images comes from a per-run cache, or
one batched pass on [x_n; x_a]) (Eq. 1), bottleneck + student + FLM generation (Eq. 2-3),
the loss of Eq. 4, backward, Adam step.

Speed (measured in ``bench/bench_train.py``, figures in ``docs/performance.md``): the
frozen teacher's features of the clean images are computed once per run and reused
every epoch, so per step the teacher only sees x_a; NHWC where it is measured faster
(``mrkd_core.device.use_channels_last``); fused Adam; on CPU the heap keeps each step's
activations for the next (``mrkd_core.device.cpu_heap_reuse``); DataLoader workers live
for the whole run; the step never waits for the loss on the host; checkpoints are
written by a background thread (``CheckpointWriter``).

Reproducibility: every random draw is derived from ``(cfg.seed, epoch, index)``: the
shuffling order, the ILM patches of each image and the FLM masks of each step. A run
resumed from the checkpoint of epoch k therefore continues exactly as the
uninterrupted run would have (bit-for-bit on CPU), whatever the number of workers.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mrkd_core.config import MRKDConfig
from mrkd_core.data.base import Sample
from mrkd_core.data.fingerprint import fingerprint_samples
from mrkd_core.data.torch_datasets import TrainImages, normalize
from mrkd_core.device import autocast_context, cpu_heap_reuse, place_model, resolve_device
from mrkd_core.errors import DataError, StorageError, unpickle_error
from mrkd_core.lineage import TRAIN_FINGERPRINT, TRAINING_REVISION_KEY, Lineage
from mrkd_core.model import MRKD, build_mrkd, mrkd_loss
from mrkd_core.revision import TRAINING_REVISION, stored_revision
from mrkd_core.storage import ArtifactStore
from mrkd_core.synth import get_preset, ilm_pair

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "mrkd-checkpoint/1"
KEEP_CHECKPOINTS = 2  # the latest and one fallback in case the latest is corrupt
_CKPT_RE = re.compile(r"epoch-(\d{4,})\.pt$")


# --------------------------------------------------------------------------- data
class ILMTrainDataset(Dataset):
    """Pairs (normal image x_n, synthetic anomalous image x_a) for Eq. 1.

    ILM runs here, i.e. in DataLoader workers, so synthesis never stalls the model.
    With ``cfg.ilm`` off (the RD4AD baseline) x_a is x_n itself.

    ``with_normal = False`` (what ``train`` sets when the clean images' teacher features
    are cached) makes items ``(index, x_a)``: the index picks the cached rows, and the
    clean image, which would only be normalised, shipped from the worker and dropped, is
    not built. Without ILM x_a is then an empty tensor (nothing of the batch is needed).
    """

    with_normal: bool = True

    def __init__(self, samples: Sequence[Sample], cfg: MRKDConfig, category: str):
        if not samples:
            raise DataError(
                f"category '{category}' has no training images — add defect-free images to its train/good folder"
            )
        self.samples = list(samples)
        self.cfg = cfg
        self.preset = get_preset(category)
        self.epoch = 0
        # Decode and resize every image once, up front: a bad file fails here with its
        # name before any training time is spent, and 200 epochs do not decode each
        # PNG 200 times. Workers share the array copy-on-write.
        files = TrainImages(self.samples, cfg.image_size)
        with ThreadPoolExecutor(max_workers=4) as pool:
            self.images = list(pool.map(files.__getitem__, range(len(files))))

    def set_epoch(self, epoch: int) -> None:
        """The epoch used for plain integer indices (``EpochSampler`` passes it with each index)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, idx: int) -> np.ndarray:
        return self.images[idx]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``key`` = an index (epoch from ``set_epoch``) or an ``(epoch, index)`` pair.

        Returns ``(x_n, x_a)``, or ``(index, x_a)`` when ``with_normal`` is False.
        """
        epoch, idx = key if isinstance(key, tuple) else (self.epoch, key)
        cfg = self.cfg
        image = self._load(idx)
        if self.with_normal:
            first = normal = normalize(image, cfg.normalize_mean, cfg.normalize_std)
        else:
            first, normal = torch.tensor(idx, dtype=torch.int64), torch.empty(0)
        if not cfg.ilm:
            return first, normal
        rng = np.random.default_rng([cfg.seed, epoch, idx])
        source = None
        if cfg.ilm_source == "other" and len(self.samples) > 1:
            other = int(rng.integers(len(self.samples) - 1))
            source = self._load(other if other < idx else other + 1)
        synthetic, _ = ilm_pair(
            image, self.preset, rng, fraction=cfg.ilm_fraction, source=source, blend=cfg.ilm_blend
        )
        return first, normalize(synthetic, cfg.normalize_mean, cfg.normalize_std)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffling of one epoch, a pure function of (seed, epoch) so that resume is exact."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


class EpochSampler(torch.utils.data.Sampler):
    """Yields ``(epoch, index)`` in ``epoch_order``; ``set_epoch`` before iterating.

    The epoch travels with every index, so DataLoader workers can live for the whole
    run (``persistent_workers``) and still draw each image's ILM patches from
    ``(seed, epoch, index)``: re-forking workers every epoch would stall a GPU for the
    first batches of each epoch, which are most of an epoch on a small category.
    """

    def __init__(self, n: int, seed: int, epoch: int = 0):
        self.n, self.seed, self.epoch = n, seed, epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list[int]:
        return epoch_order(self.n, self.seed, self.epoch)

    def __iter__(self):
        return iter([(self.epoch, i) for i in self.order()])

    def __len__(self) -> int:
        return self.n


def make_loader(dataset: ILMTrainDataset, cfg: MRKDConfig, epoch: int = 0, pin_memory: bool = False) -> DataLoader:
    """One loader for the whole run; call ``loader.sampler.set_epoch(e)`` before each epoch."""
    workers = cfg.num_workers
    return DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        sampler=EpochSampler(len(dataset), cfg.seed, epoch),
        num_workers=workers,
        pin_memory=pin_memory,
        drop_last=False,  # the official code keeps the last partial batch
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None,
    )


# --------------------------------------------------------------------------- checkpoints
def _ckpt_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}.pt"


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
    name = _ckpt_name(int(state["epoch"]))
    store.write_bytes(name, data)
    store.write_json(name + ".sha256.json", {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})
    for old in _checkpoint_epochs(store)[KEEP_CHECKPOINTS:]:
        store.remove(_ckpt_name(old))
        store.remove(_ckpt_name(old) + ".sha256.json")
    return name


def save_checkpoint(store: ArtifactStore, model: MRKD, optimizer: torch.optim.Optimizer,
                    cfg: MRKDConfig, epoch: int, losses: list[float], train_fingerprint: str | None = None) -> str:
    """Write the state after ``epoch`` completed epochs now, in this thread (see also :class:`CheckpointWriter`)."""
    return write_checkpoint(store, checkpoint_state(model, optimizer, cfg, epoch, losses, train_fingerprint))


class CheckpointWriter:
    """Stores checkpoints from a background thread while training goes on.

    A WRN50 checkpoint (bottleneck, student and generation modules with Adam's two
    moments: 109 M parameters × 3) is 1.24 GB; serialising, hashing and storing it takes
    5-8 s on the 2-core VM of docs/performance.md, more to S3, while a GPU epoch of an
    MVTec AD category takes seconds: written in the training loop, it would idle the GPU
    most of the time. :meth:`save` copies the state to host memory (a fraction of a
    second) and returns; the thread does the rest. At most one write is in flight:
    ``save`` first waits for the previous one, so host memory holds at most one extra
    copy and no checkpoint is skipped. A failed write is raised by the next ``save`` or
    by :meth:`wait`. ``train_fingerprint`` is recorded in every checkpoint.
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


def _checkpoint_epochs(store: ArtifactStore) -> list[int]:
    """Epochs that have a checkpoint file, newest first."""
    epochs = []
    for rel in store.list(""):
        m = _CKPT_RE.search(rel)
        if m:
            epochs.append(int(m.group(1)))
    return sorted(epochs, reverse=True)


def load_latest_checkpoint(store: ArtifactStore, cfg: MRKDConfig, train_fingerprint: str | None = None,
                           on_other_data: str = "restart") -> dict | None:
    """The newest checkpoint whose sha256 matches its sidecar; corrupt ones are reported and skipped.

    A checkpoint of another config raises ``StorageError``. One written by another
    training revision can never be continued: every checkpoint of ``store`` is
    discarded and None returned, so training starts from scratch. One trained on other
    data (when ``train_fingerprint`` is given) is discarded the same way with
    ``on_other_data="restart"`` (the flows: the data changed, retrain), or refused with a
    ``StorageError`` naming the way out with ``"refuse"`` (``mrkd train``: the user may
    have pointed at the wrong folder, and the checkpoint is still good for its own data).
    """
    if on_other_data not in ("restart", "refuse"):
        raise ValueError(f"on_other_data must be 'restart' or 'refuse', not {on_other_data!r}")
    for epoch in _checkpoint_epochs(store):
        name = _ckpt_name(epoch)
        try:
            meta = store.read_json(name + ".sha256.json")
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
            log.warning("checkpoint %s cannot be loaded (%s); trying an older one", store.uri(name), unpickle_error(exc))
            continue
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            found = state.get("format") if isinstance(state, dict) else type(state).__name__
            log.warning("checkpoint %s has unknown format %r; ignoring it", store.uri(name), found)
            continue
        stored_cfg = MRKDConfig.from_json(state["config"], source=store.uri(name))
        if _resume_key(stored_cfg) != _resume_key(cfg):
            raise StorageError(
                f"checkpoint {store.uri(name)} belongs to config {stored_cfg.config_hash()}, not "
                f"{cfg.config_hash()}; train into another output folder or delete its checkpoints"
            )
        check = (TRAINING_REVISION_KEY, TRAIN_FINGERPRINT) if train_fingerprint else (TRAINING_REVISION_KEY,)
        stale = Lineage(cfg.config_hash(), train_fingerprint or "").stale_reason(state, check)
        if stale is not None and on_other_data == "refuse" and stored_revision(state) == TRAINING_REVISION:
            raise StorageError(f"checkpoint {store.uri(name)} was {stale}: it cannot be resumed — train from "
                               "scratch without resuming (mrkd train --no-resume; its checkpoints are replaced) "
                               "or into another output folder")
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


def discard_checkpoints(store: ArtifactStore) -> None:
    """Remove every ``epoch-NNNN.pt`` of ``store`` and its sidecar."""
    for epoch in _checkpoint_epochs(store):
        store.remove(_ckpt_name(epoch))
        store.remove(_ckpt_name(epoch) + ".sha256.json")


def _resume_key(cfg: MRKDConfig) -> dict:
    """What must match to continue a checkpoint: everything but the number of epochs,
    so that a finished run can be extended (2 epochs + 2 more == 4 epochs)."""
    key = cfg.hashed_dict()
    key.pop("epochs")
    return key


# --------------------------------------------------------------------------- training
@dataclass
class TrainResult:
    model: MRKD
    epoch_losses: list[float]
    train_seconds: float
    images_per_second: float
    device: str
    resumed_from_epoch: int = 0
    log: list[dict] = field(default_factory=list)
    train_fingerprint: str | None = None  # of the training data: given, or computed when checkpoints are kept


@dataclass(frozen=True)
class EpochProgress:
    """What ``train`` reports after each finished epoch (to ``on_epoch`` and the log).

    ``epoch`` is 1-based and counts finished epochs out of ``epochs`` (a resumed run
    starts past 0); ``loss`` is the epoch's mean loss of Eq. 4; ``seconds`` the epoch's
    wall time; ``eta_seconds`` the remaining epochs times this run's mean epoch time.
    """

    category: str
    epoch: int
    epochs: int
    loss: float
    seconds: float
    images_per_second: float
    elapsed_seconds: float
    eta_seconds: float

    @property
    def fraction(self) -> float:
        """Finished share of the training, in [0, 1]."""
        return self.epoch / self.epochs if self.epochs else 1.0


# --------------------------------------------------------------------------- speed
# Largest cache of clean-image teacher features; a deterministic function of the run
# (never of free memory), so an interrupted and an uninterrupted run decide alike.
TEACHER_CACHE_MAX_BYTES = {"cpu": 4 << 30, "cuda": 8 << 30}


def teacher_cache_limit(device: torch.device) -> int:
    """Bytes the clean-image feature cache may take on ``device`` (fixed per machine)."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
    else:
        try:
            total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return 0
    return min(TEACHER_CACHE_MAX_BYTES.get(device.type, 0), total // 4)


@torch.no_grad()
def teacher_feature_cache(model: MRKD, dataset: ILMTrainDataset, cfg: MRKDConfig, device: torch.device,
                          limit: int | None = None) -> list[torch.Tensor] | None:
    """f_T,n of every training image (dataset order), or None when it exceeds ``limit`` bytes.

    θ_T is frozen and the clean images never change, so the official code's second
    teacher pass per step recomputes the same features 200 times. Computed once, in a
    fixed order and batch size, so every run of a config gets the same bits.
    """
    limit = teacher_cache_limit(device) if limit is None else limit
    n, cache = len(dataset), None
    for start in range(0, n, cfg.batch_size):
        stop = min(n, start + cfg.batch_size)
        x = torch.stack([normalize(dataset.images[i], cfg.normalize_mean, cfg.normalize_std)
                         for i in range(start, stop)]).to(device)
        with autocast_context(device, cfg.precision):
            feats = model.teacher(model.prepare_input(x))
        if cache is None:
            per_image = sum(f[0].numel() * f.element_size() for f in feats)
            if per_image * n > limit:
                log.info("teacher feature cache would take %.2f GB (> %.2f GB): the teacher runs on x_n every step",
                         per_image * n / 1e9, limit / 1e9)
                return None
            cache = [torch.empty((n, *f.shape[1:]), dtype=f.dtype, device=device) for f in feats]
        for c, f in zip(cache, feats):
            c[start:stop] = f
    return cache


def _train_step(model: MRKD, optimizer: torch.optim.Optimizer, normal: torch.Tensor | None, synthetic: torch.Tensor,
                cfg: MRKDConfig, device: torch.device, flm_gen: torch.Generator | None,
                teacher_normal: list[torch.Tensor] | None = None) -> torch.Tensor:
    """One step of Algorithm 1 (lines 5-10); returns the loss of Eq. 4 (detached, on ``device``).

    ``teacher_normal``: this batch's rows of ``teacher_feature_cache`` (then ``normal``
    is not needed). The loss stays on the device so that a GPU never waits for the host.
    """
    with autocast_context(device, cfg.precision):
        f_teacher, f_restored = model.forward_train(normal, synthetic, generator=flm_gen,
                                                    teacher_normal=teacher_normal)
        loss = mrkd_loss(f_teacher, f_restored)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def build_optimizer(model: MRKD, cfg: MRKDConfig) -> torch.optim.Optimizer:
    # Sec. 4.1: Adam, lr 0.005, betas (0.5, 0.999) as in the official code. The fused
    # kernel does the same update in one pass over the ~109 M WRN50 parameters instead
    # of ~10 (0.15 s instead of ~1 s per step on 2 CPU cores); it rounds differently in
    # the last bit, so weights agree with the for-loop Adam to ~1e-7, not bit for bit.
    params = model.trainable_parameters()
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), fused=fused or None)


def _train_epoch(model: MRKD, optimizer: torch.optim.Optimizer, loader: DataLoader,
                 cache: list[torch.Tensor] | None, cfg: MRKDConfig, device: torch.device, epoch: int,
                 category: str) -> tuple[float, int]:
    """One epoch (0-based ``epoch``); returns the mean loss of Eq. 4 over its batches and the images seen."""
    model.train()
    flm_gen = torch.Generator(device=device).manual_seed(cfg.seed * 7919 + epoch) if cfg.flm else None
    loader.sampler.set_epoch(epoch)
    total = torch.zeros((), dtype=torch.float64, device=device)  # float64 like the Python sum: same bits
    batches = seen = 0
    for first, synthetic in loader:
        f_normal = None
        if cache is not None:  # the dataset sends indices, not clean images (with_normal=False)
            rows = first.to(device, non_blocking=True)
            f_normal = [c.index_select(0, rows) for c in cache]
            normal = None  # without ILM, synthetic is None too: forward_train uses the cache alone
        else:
            normal = first.to(device, non_blocking=True)
        synthetic = normal if not cfg.ilm else synthetic.to(device, non_blocking=True)
        total += _train_step(model, optimizer, normal, synthetic, cfg, device, flm_gen, teacher_normal=f_normal)
        batches += 1
        seen += len(first)
    mean_loss = total.item() / max(batches, 1)  # the epoch's only host-device sync
    if not math.isfinite(mean_loss):
        raise FloatingPointError(f"loss became {mean_loss} in epoch {epoch + 1} of {category}; lower lr or use fp32")
    return mean_loss, seen


def _close_loader(loader: DataLoader) -> None:
    """Stop persistent DataLoader workers now (a failed run may keep the loader alive in its traceback)."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    loader._iterator = None


def train(cfg: MRKDConfig, samples: Sequence[Sample], category: str,
          checkpoints: ArtifactStore | None = None, resume: bool = True,
          teacher_cache: bool | None = None,
          on_epoch: Callable[[EpochProgress], None] | None = None,
          train_fingerprint: str | None = None, on_other_data: str = "restart") -> TrainResult:
    """Train MRKD on the defect-free ``samples`` of one category.

    ``checkpoints``: a store (folder or s3 prefix) for ``epoch-NNNN.pt`` every
    ``cfg.checkpoint_every`` epochs; with ``resume`` the newest valid one is continued
    (``on_other_data``: see :func:`load_latest_checkpoint`); without, the store's
    checkpoints are replaced (kept, their higher epochs would shadow the new ones).
    ``teacher_cache``: reuse the clean images' teacher features (None: when they fit in
    ``teacher_cache_limit``; False: never; True: always).
    ``on_epoch``: called with an :class:`EpochProgress` after every epoch (the flows turn
    it into Prefect progress artifacts); it runs in the training loop, so keep it cheap.
    ``train_fingerprint``: the training data's fingerprint, recorded in checkpoints and
    compared on resume (a checkpoint of other data is not continued); None = computed
    from ``samples`` when ``checkpoints`` is given (names relative to the folder they share;
    the runner and ``mrkd train`` pass the one relative to the dataset root).
    """
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = place_model(build_mrkd(cfg), cfg, device)
    optimizer = build_optimizer(model, cfg)
    losses: list[float] = []
    start_epoch = 0
    # Decoded before any checkpoint is read or replaced: a bad image fails with its name
    # and leaves the stored checkpoints as they are.
    dataset = ILMTrainDataset(samples, cfg, category)
    if checkpoints is not None and train_fingerprint is None:
        train_fingerprint = fingerprint_samples(samples).digest
    if checkpoints is not None and not resume and _checkpoint_epochs(checkpoints):
        log.info("not resuming: the checkpoints in %s are replaced by this training", checkpoints.uri())
        discard_checkpoints(checkpoints)
    if checkpoints is not None and resume:
        state = load_latest_checkpoint(checkpoints, cfg, train_fingerprint, on_other_data)
        if state is not None:
            missing = model.load_state_dict(state["model"], strict=False)
            bad = [k for k in missing.missing_keys if not k.startswith("teacher.")]
            if bad or missing.unexpected_keys:
                raise StorageError(f"checkpoint in {checkpoints.uri()} does not match the model: {bad or missing.unexpected_keys}")
            optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["torch_rng"])
            start_epoch = int(state["epoch"])
            losses = list(state["losses"])
            log.info("resuming %s from epoch %d (%s)", category, start_epoch, checkpoints.uri())

    history: list[dict] = []
    n_images = 0
    t0 = time.perf_counter()
    with cpu_heap_reuse(device):  # CPU: step n+1 reuses the pages of step n
        cache = None
        if teacher_cache is not False and start_epoch < cfg.epochs:
            cache = teacher_feature_cache(model, dataset, cfg, device, limit=None if teacher_cache is None else 1 << 62)
        dataset.with_normal = cache is None  # set before the loader forks its workers
        loader = make_loader(dataset, cfg, start_epoch, pin_memory=device.type == "cuda")
        progress = _progress(cfg, category, start_epoch)
        writer = CheckpointWriter(checkpoints, train_fingerprint) if checkpoints is not None else None
        try:
            for epoch in range(start_epoch, cfg.epochs):
                t_epoch = time.perf_counter()
                mean_loss, seen = _train_epoch(model, optimizer, loader, cache, cfg, device, epoch, category)
                n_images += seen
                losses.append(mean_loss)
                seconds = time.perf_counter() - t_epoch
                rate = seen / seconds if seconds > 0 else float("nan")
                history.append({"epoch": epoch + 1, "loss": mean_loss, "seconds": seconds, "images_per_second": rate})
                elapsed = time.perf_counter() - t0
                done = epoch + 1 - start_epoch
                report = EpochProgress(category, epoch + 1, cfg.epochs, mean_loss, seconds, rate, elapsed,
                                       elapsed / done * (cfg.epochs - epoch - 1))
                log.info("%s epoch %d/%d loss %.5f %.1f img/s, ETA %s", category, report.epoch, report.epochs,
                         mean_loss, rate, _hms(report.eta_seconds))
                if on_epoch is not None:
                    on_epoch(report)
                progress.update(1)
                progress.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{rate:.1f}")
                if writer is not None and ((epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs):
                    writer.save(model, optimizer, cfg, epoch + 1, losses)
            if writer is not None:
                writer.wait()  # the last checkpoint is stored (or its error raised) before train returns
        finally:
            progress.close()
            _close_loader(loader)
            if writer is not None:
                writer.close()
            del cache  # freed before the heap is trimmed
    elapsed = time.perf_counter() - t0
    model.eval()
    return TrainResult(
        model=model,
        epoch_losses=losses,
        train_seconds=elapsed,
        images_per_second=n_images / elapsed if elapsed > 0 and n_images else float("nan"),
        device=str(device),
        resumed_from_epoch=start_epoch,
        log=history,
        train_fingerprint=train_fingerprint,
    )


def _hms(seconds: float) -> str:
    """'1:02:03' for an ETA in log lines."""
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _progress(cfg: MRKDConfig, category: str, start_epoch: int):
    from tqdm.auto import tqdm

    return tqdm(total=cfg.epochs, initial=start_epoch, desc=f"train {category}", unit="epoch",
                disable=not cfg.progress, leave=False)


def config_from_checkpoint(data: bytes) -> MRKDConfig:
    """The config stored in a checkpoint (used by tools that inspect checkpoints)."""
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    return MRKDConfig.from_dict(json.loads(state["config"]))


__all__ = [
    "CheckpointWriter", "EpochProgress", "EpochSampler", "ILMTrainDataset", "TrainResult", "build_optimizer", "checkpoint_state",
    "epoch_order", "load_latest_checkpoint", "make_loader", "save_checkpoint", "teacher_feature_cache", "train",
    "config_from_checkpoint", "discard_checkpoints", "write_checkpoint",
]
