"""One MRKD training run (Algorithm 1, training stage) from a frozen config: the loop.

The step (``train_step``) reads like Algorithm 1, lines 5-10: the batch arrives with ILM
already applied (x_a, in DataLoader workers, ``mrkd_core.data.torch_datasets``); the run's
teacher-feature source gives f_T,n and f_T,a (Eq. 1); OCBE + student + FLM generation
restore f_G from f_T,a (Eq. 1-3); the loss of Eq. 4; backward; Adam step. Checkpoints
(state, writer, resume) are ``mrkd_core.checkpoint``.

Where f_T,n comes from is decided once per run (``choose_teacher_features``): θ_T is
frozen and the clean images never change, so their teacher features are computed once
and read by index every step (``CachedTeacherFeatures``) when they fit in memory;
otherwise the teacher runs on [x_n; x_a] every step (``TeacherPass``), as the official
code does (there in two passes). Both give the same bits.

Speed (measured in ``bench/bench_train.py``, figures in ``docs/performance.md``): the
teacher-feature cache; NHWC where it is measured faster (``mrkd_core.device.
use_channels_last``); fused Adam; on CPU the heap keeps each step's activations for the
next (``mrkd_core.device.cpu_heap_reuse``); DataLoader workers live for the whole run;
the step never waits for the loss on the host; checkpoints are written by a background
thread (``mrkd_core.checkpoint.CheckpointWriter``).

Reproducibility: every random draw is derived from ``(cfg.seed, epoch, index)``: the
shuffling order, the ILM patches of each image and the FLM masks of each step. A run
resumed from the checkpoint of epoch k therefore continues exactly as the
uninterrupted run would have (bit-for-bit on CPU), whatever the number of workers.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from mrkd_core.checkpoint import (
    CheckpointMode,
    CheckpointWriter,
    checkpoint_epochs,
    discard_checkpoints,
    resume_training,
)
from mrkd_core.config import MRKDConfig
from mrkd_core.data.base import Sample
from mrkd_core.data.fingerprint import fingerprint_samples
from mrkd_core.data.torch_datasets import (
    ILMTrainDataset,
    TrainItem,
    check_batches,
    close_loader,
    decode_train_images,
    make_loader,
    normalize,
)
from mrkd_core.device import autocast_context, cpu_heap_reuse, place_model, resolve_device
from mrkd_core.errors import TrainingDiverged
from mrkd_core.model import MRKD, build_mrkd, mrkd_loss
from mrkd_core.progress import EpochProgress, EpochReporter, epoch_reporters
from mrkd_core.storage import ArtifactStore
from mrkd_core.tiling import Tiling

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- results
@dataclass
class TrainResult:
    """What :func:`train` returns.

    ``model``: the trained network in eval mode, on the training device. ``epoch_losses``:
    the mean loss of Eq. 4 per epoch, from epoch 1 (a resumed run includes the epochs of
    its checkpoint). ``train_seconds``: wall time of the epochs run here, the teacher-feature
    cache and the loader's start included (decoding the images excluded);
    ``images_per_second``: training images (tiles, for a tiled config) per second over that
    time (NaN when no epoch ran). ``device``: where it trained, e.g. ``'cpu'`` or ``'cuda:0'``.
    ``resumed_from_epoch``: completed epochs taken from a checkpoint (0 = from scratch).
    ``log``: one ``{"epoch", "loss", "seconds", "images_per_second"}`` dict per epoch run here.
    ``n_train``: the images trained on. ``train_fingerprint``: of the images trained on
    (``mrkd_core.data.fingerprint``): given, or computed when checkpoints are kept; None
    without checkpoints.
    """

    model: MRKD
    epoch_losses: list[float]
    train_seconds: float
    images_per_second: float
    device: str
    resumed_from_epoch: int = 0
    log: list[dict] = field(default_factory=list)
    n_train: int = 0  # images trained on
    train_fingerprint: str | None = None


@dataclass(frozen=True)
class EpochRecord:
    """One finished epoch as ``train.json`` keeps it: 1-based ``epoch``, mean loss of Eq. 4,
    wall ``seconds`` and ``images`` seen."""

    epoch: int
    loss: float
    seconds: float
    images: int

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict[str, float]:
        return {"epoch": self.epoch, "loss": self.loss, "seconds": self.seconds,
                "images_per_second": self.images_per_second}


# --------------------------------------------------------------------------- where f_T,n comes from
class TeacherFeatures(Protocol):
    """A run's source of teacher features: ``(model, batch) → (f_T,n, f_T,a)`` (Eq. 1), no gradient.

    ``needs_normal_images`` tells the dataset whether batches must carry x_n.
    """

    needs_normal_images: ClassVar[bool]

    def __call__(self, model: MRKD, batch: TrainItem) -> tuple[list[Tensor], list[Tensor]]: ...


@dataclass(frozen=True)
class TeacherPass:
    """The teacher on every batch: on [x_n; x_a] in one pass with ILM; on x_n alone without (x_a = x_n)."""

    ilm: bool
    needs_normal_images: ClassVar[bool] = True

    def __call__(self, model: MRKD, batch: TrainItem) -> tuple[list[Tensor], list[Tensor]]:
        if self.ilm:
            return model.teacher_pair(batch.normal, batch.synthetic)
        f_normal = model.teacher_features(batch.normal)
        return f_normal, f_normal


@dataclass(frozen=True)
class CachedTeacherFeatures:
    """f_T,n read from the run's cache by image index; the teacher runs on x_a only (not at all without ILM)."""

    cache: list[Tensor]  # per scale: N×C×H×W, dataset order (``teacher_feature_cache``)
    ilm: bool
    needs_normal_images: ClassVar[bool] = False

    def __call__(self, model: MRKD, batch: TrainItem) -> tuple[list[Tensor], list[Tensor]]:
        f_normal = [c.index_select(0, batch.index) for c in self.cache]
        f_synth = model.teacher_features(batch.synthetic) if self.ilm else f_normal
        return f_normal, f_synth


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
def teacher_feature_cache(model: MRKD, images: Sequence[np.ndarray], cfg: MRKDConfig, device: torch.device,
                          limit: int | None = None) -> list[Tensor] | None:
    """f_T,n of every training image (``images`` order), or None when it exceeds ``limit`` bytes.

    θ_T is frozen and the clean images never change, so the official code's second
    teacher pass per step recomputes the same features 200 times. Computed once, in a
    fixed order and batch size, so every run of a config gets the same bits.
    """
    limit = teacher_cache_limit(device) if limit is None else limit
    n, cache = len(images), None
    for start in range(0, n, cfg.batch_size):
        stop = min(n, start + cfg.batch_size)
        x = torch.stack([normalize(images[i], cfg.normalize_mean, cfg.normalize_std)
                         for i in range(start, stop)]).to(device)
        with autocast_context(device, cfg.precision):
            feats = model.teacher_features(x)
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


def choose_teacher_features(model: MRKD, images: Sequence[np.ndarray], cfg: MRKDConfig, device: torch.device,
                            teacher_cache: bool | None) -> TeacherFeatures:
    """The run's one decision of where f_T,n comes from.

    ``teacher_cache``: None caches when the features fit in ``teacher_cache_limit``;
    True always caches; False never does (a teacher pass every step).
    """
    if teacher_cache is not False:
        limit = None if teacher_cache is None else 1 << 62
        cache = teacher_feature_cache(model, images, cfg, device, limit=limit)
        if cache is not None:
            return CachedTeacherFeatures(cache, cfg.ilm)
    return TeacherPass(cfg.ilm)


# --------------------------------------------------------------------------- the step and the epoch
def train_step(model: MRKD, optimizer: torch.optim.Optimizer, batch: TrainItem, teacher: TeacherFeatures,
               cfg: MRKDConfig, device: torch.device, flm_gen: torch.Generator | None) -> Tensor:
    """One step of Algorithm 1 (lines 5-10) on a batch whose x_a ILM already made; returns the loss of Eq. 4.

    The loss is returned detached and on ``device``, so that a GPU never waits for the host.
    """
    with autocast_context(device, cfg.precision):
        f_normal, f_synth = teacher(model, batch)      # f_T,n and f_T,a = T(x_n), T(x_a)   (Eq. 1)
        f_restored = model.restore(f_synth, flm_gen)   # f_G = G(S(B(f_T,a)) ⊙ M)         (Eq. 1-3)
        loss = mrkd_loss(f_normal, f_restored)         # Σ_l 1 − cos(f_T,n^l, f_G^l)       (Eq. 4)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def build_optimizer(model: MRKD, cfg: MRKDConfig) -> torch.optim.Optimizer:
    """Adam over θ_B, θ_S, θ_G (Sec. 4.1: lr 0.005, betas (0.5, 0.999) as in the official code).

    The fused kernel does the same update in one pass over the ~109 M WRN50 parameters
    instead of ~10 (0.15 s instead of ~1 s per step on 2 CPU cores); it rounds differently
    in the last bit, so weights agree with the for-loop Adam to ~1e-7, not bit for bit.
    """
    params = model.trainable_parameters()
    fused = all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas), fused=fused or None)


def train_epoch(model: MRKD, optimizer: torch.optim.Optimizer, loader: DataLoader, teacher: TeacherFeatures,
                cfg: MRKDConfig, device: torch.device, epoch: int, category: str) -> EpochRecord:
    """One epoch (0-based ``epoch``): the mean loss of Eq. 4 over its batches, its time and the images seen.

    Raises ``TrainingDiverged`` when the loss is not finite.
    """
    started = time.perf_counter()
    model.train()
    flm_gen = torch.Generator(device=device).manual_seed(cfg.seed * 7919 + epoch) if cfg.flm else None
    loader.sampler.set_epoch(epoch)
    total = torch.zeros((), dtype=torch.float64, device=device)  # float64 like the Python sum: same bits
    batches = seen = 0
    for batch in loader:
        total += train_step(model, optimizer, batch.to(device), teacher, cfg, device, flm_gen)
        batches += 1
        seen += len(batch.index)
    mean_loss = total.item() / max(batches, 1)  # the epoch's only host-device sync
    if not math.isfinite(mean_loss):
        raise diverged(cfg, category, f"the loss became {mean_loss} in epoch {epoch + 1}")
    return EpochRecord(epoch + 1, mean_loss, time.perf_counter() - started, seen)


def diverged(cfg: MRKDConfig, category: str, what: str) -> TrainingDiverged:
    """The one-line error of a training whose loss or model stopped being finite numbers."""
    fix = f"lower lr (now {cfg.lr:g}, paper 0.005)" + (", or train in fp32" if cfg.precision != "fp32" else "")
    return TrainingDiverged(f"{category}: the training diverged: {what} — {fix}; no model was stored")


@torch.no_grad()
def check_trained_model(model: MRKD, samples: Sequence[Sample], cfg: MRKDConfig, device: torch.device,
                        category: str) -> None:
    """``TrainingDiverged`` when the trained model's test-time pass is not finite on training images.

    Each epoch's loss is measured in training mode, before each step's update: the last
    update can break the model while every loss looked finite (``--lr 1e12`` for one
    epoch: weights of 1e12, each finite, overflow float32 in the test-time pass, and the
    evaluation stopped on NaN scores). One pass over up to two training images finds it
    before anything is evaluated, calibrated or stored.
    """
    images = decode_train_images(samples[:2], cfg.image_size, category, Tiling.of(cfg))[:2]
    x = torch.stack([normalize(image, cfg.normalize_mean, cfg.normalize_std) for image in images]).to(device)
    model.eval()
    with autocast_context(device, cfg.precision):
        _, restored = model.forward_test(x, flm=cfg.flm_at_test)
    if not all(bool(torch.isfinite(f).all()) for f in restored):
        raise diverged(cfg, category, "the trained model's features are not finite (NaN or infinite) after the "
                                      "last step")


# --------------------------------------------------------------------------- the run
def train(cfg: MRKDConfig, samples: Sequence[Sample], category: str,
          checkpoints: ArtifactStore | None = None, mode: CheckpointMode = CheckpointMode.RESUME,
          teacher_cache: bool | None = None, reporters: Sequence[EpochReporter] | None = None,
          train_fingerprint: str | None = None) -> TrainResult:
    """Train MRKD on the defect-free ``samples`` of one category: the images trained on, as
    ``layout.task_inputs`` decided (train/good less the ``validation_fraction`` hold-out).

    ``checkpoints``: a store (folder or s3 prefix) for ``epoch-NNNN.pt`` every
    ``cfg.checkpoint_every`` epochs; ``mode`` (:class:`~mrkd_core.checkpoint.CheckpointMode`)
    says whether the newest valid one is continued or the store's checkpoints are replaced
    (kept, their higher epochs would shadow the new ones); checkpoints of other data or
    another training revision are never continued. ``teacher_cache``: reuse the clean images' teacher features (None: when they
    fit in ``teacher_cache_limit``; False: never; True: always). ``reporters`` receive every
    finished epoch (:mod:`mrkd_core.progress`; default: the log line), and so does a
    progress bar when ``cfg.progress``; they run in the training loop, so keep them cheap.
    ``train_fingerprint``: the fingerprint of ``samples``, recorded in checkpoints and
    compared on resume (a checkpoint of other data is not continued); None = computed from
    them when ``checkpoints`` is given (names relative to the folder they share; the engine
    passes the one relative to the dataset root, ``layout.task_inputs``).
    Raises ``DataError`` for bad training images, ``StorageError`` for checkpoints of
    another config,
    ``TrainingDiverged`` when the loss, or the trained model's test-time pass, is not finite;
    ``ConfigError`` when a batch would hold one image that BatchNorm cannot train on
    (``data.torch_datasets.check_batches``).
    """
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = place_model(build_mrkd(cfg), cfg, device)
    optimizer = build_optimizer(model, cfg)
    # Decoded before any checkpoint is read or replaced: a bad image fails with its name
    # and leaves the stored checkpoints as they are.
    images = decode_train_images(samples, cfg.image_size, category, Tiling.of(cfg))  # tiles, when cfg tiles
    check_batches(cfg, len(images), category)  # a bad image is named first; both before any checkpoint changes
    if checkpoints is not None and train_fingerprint is None:
        train_fingerprint = fingerprint_samples(samples).digest
    start_epoch, losses = _starting_point(checkpoints, mode, cfg, model, optimizer, train_fingerprint, category)
    reporters = epoch_reporters(reporters, cfg.progress)

    history: list[EpochRecord] = []
    t0 = time.perf_counter()
    with cpu_heap_reuse(device):  # CPU: step n+1 reuses the pages of step n
        teacher = (choose_teacher_features(model, images, cfg, device, teacher_cache)
                   if start_epoch < cfg.epochs else TeacherPass(cfg.ilm))
        dataset = ILMTrainDataset(images, cfg, category, with_normal=teacher.needs_normal_images)
        loader = make_loader(dataset, cfg, start_epoch, pin_memory=device.type == "cuda")
        writer = CheckpointWriter(checkpoints, train_fingerprint) if checkpoints is not None else None
        try:
            for epoch in range(start_epoch, cfg.epochs):
                record = train_epoch(model, optimizer, loader, teacher, cfg, device, epoch, category)
                history.append(record)
                losses.append(record.loss)
                progress = _progress(category, record, cfg, time.perf_counter() - t0, len(history))
                for reporter in reporters:
                    reporter.report(progress)
                if writer is not None and (record.epoch % cfg.checkpoint_every == 0 or record.epoch == cfg.epochs):
                    writer.save(model, optimizer, cfg, record.epoch, losses)
            if writer is not None:
                writer.wait()  # the last checkpoint is stored (or its error raised) before train returns
        finally:
            for reporter in reporters:
                reporter.close()
            close_loader(loader)
            if writer is not None:
                writer.close()
            del teacher, dataset, images  # the feature cache is freed before the heap is trimmed
    check_trained_model(model, samples, cfg, device, category)
    elapsed = time.perf_counter() - t0
    model.eval()
    seen = sum(r.images for r in history)
    return TrainResult(
        model=model,
        epoch_losses=losses,
        train_seconds=elapsed,
        images_per_second=seen / elapsed if elapsed > 0 and seen else float("nan"),
        device=str(device),
        resumed_from_epoch=start_epoch,
        log=[r.to_dict() for r in history],
        n_train=len(samples),
        train_fingerprint=train_fingerprint,
    )


def _starting_point(checkpoints: ArtifactStore | None, mode: CheckpointMode, cfg: MRKDConfig, model: MRKD,
                    optimizer: torch.optim.Optimizer, train_fingerprint: str | None,
                    category: str) -> tuple[int, list[float]]:
    """(completed epochs, their losses) to continue from: the checkpoints' per ``mode``, else (0, [])."""
    if checkpoints is None:
        return 0, []
    if not mode.resumes:
        if checkpoint_epochs(checkpoints):
            log.info("not resuming: the checkpoints in %s are replaced by this training", checkpoints.uri())
            discard_checkpoints(checkpoints)
        return 0, []
    start_epoch, losses = resume_training(checkpoints, cfg, model, optimizer, train_fingerprint)
    if start_epoch:
        log.info("resuming %s from epoch %d (%s)", category, start_epoch, checkpoints.uri())
    return start_epoch, losses


def _progress(category: str, record: EpochRecord, cfg: MRKDConfig, elapsed: float, done: int) -> EpochProgress:
    """What the reporters get for ``record``: ETA = the epochs left × this run's mean epoch time; the
    rate counts tiles when ``cfg`` tiles (what a batch holds)."""
    return EpochProgress(category, record.epoch, cfg.epochs, record.loss, record.seconds, record.images_per_second,
                         elapsed, elapsed / done * (cfg.epochs - record.epoch), "tile" if cfg.tile_size else "img")


__all__ = [
    "CachedTeacherFeatures", "EpochProgress", "EpochRecord", "TeacherFeatures", "TeacherPass", "TrainResult",
    "build_optimizer", "choose_teacher_features", "teacher_cache_limit", "teacher_feature_cache", "train",
    "train_epoch", "train_step",
]
