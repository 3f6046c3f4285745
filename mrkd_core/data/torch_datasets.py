"""What the network is fed: PyTorch views of ``Sample`` records, for training and for the test stage.

Test images (``TestDataset``; ``TestFrames`` at their own resolution for a tiled model) open
their files lazily in ``__getitem__``, so that DataLoader workers share the decoding work and
a Ray task ships only paths; bad files raise ``DataError`` naming the file.

The training data of Algorithm 1: ``ILMTrainDataset`` yields one ``TrainItem`` per
training image (per tile of a training image with ``tile_size``: ``mrkd_core.tiling``, so
ILM, the shuffling and the teacher-feature cache all work per tile): its index, the clean
image x_n and the synthetic anomalous image x_a = ILM(x_n) (Sec. 3.2). ILM runs here, i.e.
in DataLoader workers, so synthesis never stalls the model. ``EpochSampler`` and ``make_loader`` give one loader for the whole run
whose shuffling and ILM draws are pure functions of ``(cfg.seed, epoch, index)``, so a
resumed run continues exactly as the uninterrupted one (``mrkd_core.train``).
"""


from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mrkd_core.config import MRKDConfig
from mrkd_core.data.base import Sample
from mrkd_core.data.io import load_image, load_pair
from mrkd_core.errors import ConfigError, DataError
from mrkd_core.ilm import ILMPreset, ilm_pair, resolve_preset
from mrkd_core.model.ocbe import OCBE_STRIDE
from mrkd_core.tiling import Tiling


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 H×W×3 → float32 3×H×W, scaled to [0, 1] then standardised (ImageNet stats, Sec. 4.1)."""
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    m = torch.as_tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(3, 1, 1)
    return t.sub_(m).div_(s)


class TestDataset(Dataset):
    """Test images with their masks (all zeros for defect-free images), ready for the model.

    Item: ``{"image": float 3×S×S (normalised), "mask": float 1×S×S in {0,1}, "label": int,
    "defect_type": str, "path": str, "category": str}``.
    """

    __test__ = False  # not a pytest test class despite its name

    def __init__(self, samples: Sequence[Sample], image_size: int,
                 mean: Sequence[float], std: Sequence[float]):
        self.samples = list(samples)
        self.image_size = int(image_size)
        self.mean = tuple(float(x) for x in mean)
        self.std = tuple(float(x) for x in std)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> dict:
        s = self.samples[idx]
        image, mask = load_pair(s.path, s.mask_path, self.image_size)
        return {
            "image": normalize(image, self.mean, self.std),
            "mask": torch.from_numpy(mask).float().unsqueeze(0),
            "label": int(s.label),
            "defect_type": s.defect_type,
            "path": s.path,
            "category": s.category,
        }


class TestFrames(Dataset):
    """Test images at their own resolution, for a tiled model (``mrkd_core.tiling``): the tiles are cut from them.

    Item: ``{"image": uint8 H×W×3, "mask": uint8 H×W in {0,1}, "label", "defect_type",
    "path", "category"}`` (``batch_size=None`` in a DataLoader: frames differ in size).
    """

    def __init__(self, samples: Sequence[Sample]):
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> dict:
        s = self.samples[idx]
        image, mask = load_pair(s.path, s.mask_path, None)
        return {"image": image, "mask": mask, "label": int(s.label), "defect_type": s.defect_type, "path": s.path,
                "category": s.category}


class TrainImages(Dataset):
    """Defect-free training images as uint8 H×W×3 arrays; ILM and normalisation happen on top."""

    def __init__(self, samples: Sequence[Sample], image_size: int):
        self.samples = list(samples)
        self.image_size = int(image_size)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> np.ndarray:
        return load_image(self.samples[idx].path, self.image_size)


_EMPTY = torch.empty(0)


class TrainItem(NamedTuple):
    """One training image, or (after the DataLoader's collation) one batch of them.

    ``index``: int64, the image's position in the dataset (B after collation); it picks
    the rows of a per-run teacher-feature cache. ``normal``: x_n, float32 3×S×S (B×3×S×S),
    normalised; empty when the run does not need it (``with_normal=False``).
    ``synthetic``: x_a = ILM(x_n), same shape; empty without ILM (then x_a = x_n and the
    training step reuses x_n's teacher features).

    The same three fields in every item of every run, so nothing in the training loop
    changes type between iterations.
    """

    index: torch.Tensor
    normal: torch.Tensor
    synthetic: torch.Tensor

    def to(self, device: torch.device) -> "TrainItem":
        """The batch on ``device`` (asynchronous copies from pinned memory)."""
        return TrainItem(*(t.to(device, non_blocking=True) for t in self))


def decode_train_images(samples: Sequence[Sample], image_size: int, category: str,
                        tiling: Tiling | None = None) -> list[np.ndarray]:
    """Every training image decoded and resized once (uint8 S×S×3), in ``samples`` order.

    With ``tiling`` (``Tiling.of(cfg)``) each image is decoded at its own resolution and
    cut into its tiles, each resized to S×S: the list holds every tile of the first image
    (row-major), then of the next, and a tile is a training image of Algorithm 1 from there on.
    Up front, so that a bad file fails here with its name before any training time is
    spent, and 200 epochs do not decode each PNG 200 times; DataLoader workers share the
    arrays copy-on-write. Raises ``DataError`` when ``samples`` is empty or a file is bad.
    """
    if not samples:
        raise DataError(
            f"category '{category}' has no training images — add defect-free images to its train/good folder"
        )
    if tiling is not None:
        def tiles(sample: Sample) -> list[np.ndarray]:
            return list(tiling.tiles(load_image(sample.path, None)))

        with ThreadPoolExecutor(max_workers=4) as pool:
            return [tile for frame in pool.map(tiles, samples) for tile in frame]
    files = TrainImages(list(samples), image_size)
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(files.__getitem__, range(len(files))))


class ILMTrainDataset(Dataset):
    """``TrainItem(index, x_n, x_a)`` for Eq. 1 from decoded training images.

    ``with_normal=False`` (chosen by the training run when the clean images' teacher
    features are cached) leaves x_n out: it would only be normalised, shipped from the
    worker and dropped. Items are drawn by index (epoch from ``set_epoch``) or by an
    ``(epoch, index)`` key from ``EpochSampler``; the ILM patches of an image depend on
    ``(cfg.seed, epoch, index)`` only.
    """

    def __init__(self, images: Sequence[np.ndarray], cfg: MRKDConfig, category: str, *, with_normal: bool = True):
        self.images = list(images)
        self.cfg = cfg
        # cfg.ilm_preset for this category; "auto" is estimated from these very images.
        self.preset: ILMPreset | None = resolve_preset(cfg.ilm_preset, category, self.images) if cfg.ilm else None
        self.with_normal = bool(with_normal)
        self.epoch = 0

    @classmethod
    def from_samples(cls, samples: Sequence[Sample], cfg: MRKDConfig, category: str, *,
                     with_normal: bool = True) -> "ILMTrainDataset":
        """Decode ``samples`` (``decode_train_images``, in tiles when ``cfg`` says so) and build the dataset on them."""
        return cls(decode_train_images(samples, cfg.image_size, category, Tiling.of(cfg)), cfg, category,
                   with_normal=with_normal)

    def set_epoch(self, epoch: int) -> None:
        """The epoch used for plain integer indices (``EpochSampler`` passes it with each index)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> TrainItem:
        """``key`` = an index (epoch from ``set_epoch``) or an ``(epoch, index)`` pair."""
        epoch, idx = key if isinstance(key, tuple) else (self.epoch, key)
        cfg = self.cfg
        image = self.images[idx]
        index = torch.tensor(idx, dtype=torch.int64)
        normal = normalize(image, cfg.normalize_mean, cfg.normalize_std) if self.with_normal else _EMPTY
        if not cfg.ilm:
            return TrainItem(index, normal, _EMPTY)
        rng = np.random.default_rng([cfg.seed, epoch, idx])
        source = None
        if cfg.ilm_source == "other" and len(self.images) > 1:
            other = int(rng.integers(len(self.images) - 1))
            source = self.images[other if other < idx else other + 1]
        synthetic, _ = ilm_pair(
            image, self.preset, rng, fraction=cfg.ilm_fraction, source=source, blend=cfg.ilm_blend
        )
        return TrainItem(index, normal, normalize(synthetic, cfg.normalize_mean, cfg.normalize_std))


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffling of one epoch, a pure function of (seed, epoch) so that resume is exact."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


class EpochSampler(Sampler):
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
    """One loader of ``TrainItem`` batches for the whole run; ``loader.sampler.set_epoch(e)`` before each epoch."""
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


def check_batches(cfg: MRKDConfig, n_train: int, category: str) -> None:
    """``ConfigError`` when a training batch would hold one image whose f_B is 1×1 (before any training).

    The loader keeps the last partial batch, as the official code does. BatchNorm in training
    mode normalises each channel over the batch's positions, and the OCBE's last stage works
    at 1/32 of the image: at 32 px that is one position, so a batch of one image gives one
    value per channel, which BatchNorm cannot normalise (PyTorch stops with "Expected more
    than 1 value per channel"; the value would be set to β whatever the image). Dropping or
    merging that batch would silently change what is trained on, so it is refused with the
    fields that avoid it. From 64 px on (f_B 2×2) a batch of one image trains as any other.
    """
    positions = (cfg.image_size // OCBE_STRIDE) ** 2
    last = n_train % cfg.batch_size or cfg.batch_size
    if positions > 1 or n_train == 0 or (last > 1 and cfg.batch_size > 1):
        return
    if n_train == 1:
        fix = "add training images (at least 2)"
    else:
        fits = [b for b in range(2, n_train + 1) if n_train % b != 1]
        better = min(fits, key=lambda b: (abs(b - cfg.batch_size), b))
        fix = f"set batch_size {better} (--batch-size {better}) so that no batch holds a single image"
    held = f" (train/good less the validation_fraction {cfg.validation_fraction:g} held out)" \
        if cfg.validation_fraction > 0 else ""
    raise ConfigError(
        f"{category}: {n_train} training image(s){held} in batches of {cfg.batch_size} leave a batch of one image, and at "
        f"image_size {cfg.image_size} the OCBE embedding f_B is 1×1, so BatchNorm cannot train on it (one value per "
        f"channel) — set image_size 64 or more (--image-size 64), or {fix}")


def close_loader(loader: DataLoader) -> None:
    """Stop persistent DataLoader workers now (a failed run may keep the loader alive in its traceback)."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    loader._iterator = None
