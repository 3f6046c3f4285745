"""Tiles for high-resolution frames: cut, resize, stitch and smooth, for every path that sees images.

With ``tile_size`` > 0 (docs/tiling.md) a frame is not resized whole to ``image_size``:
it is cut into square tiles of ``tile_size`` pixels of the original image, ``tile_stride``
pixels apart, and each tile is resized to ``image_size`` × ``image_size`` as an image would
be (``to_network_size``: LANCZOS, like ``data.io.load_image``). The network sees nothing
else, in training (one tile = one training image of Algorithm 1) and at test time.

At test time each tile's map (Eq. 5 before its Gaussian: the sum of the fused scales) is
resized to the tile's size in the frame and placed at its position; where tiles overlap
their maps are averaged. The Gaussian of Eq. 5 is then applied once, on the stitched map
at the frame's resolution, with σ = ``gaussian_sigma`` × tile / ``image_size`` per axis:
the paper's σ = 4 is in network pixels, and one network pixel covers tile / ``image_size``
frame pixels, so the smoothing keeps the paper's extent relative to the features. The
image score (Eq. 6) is the maximum of that map. Masks, thresholds, overlays and the
calibration all live at the frame's resolution.

Tile placement: origins 0, stride, 2·stride, … while a tile fits, and one more tile aligned
to the far edge when the last one stops short of it, so every pixel is covered and no tile
is padded or cut (a side not a multiple of the stride overlaps its last two tiles more).
A frame side shorter than ``tile_size`` is one tile of that side (resized like the others).

This module is the one place where that happens: evaluation (``mrkd_core.evaluate``),
calibration (which scores through evaluation), training data (``data.torch_datasets``) and
prediction with every engine (``inference.predict.Predictor``: PyTorch, ONNX Runtime,
OpenVINO; the HTTP service wraps the Predictor) call it; an engine only maps a batch of
tiles to their maps. Memory per frame is bounded: tiles are cut lazily and run in batches,
and a frame costs its stitched map (float64 while accumulating).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from mrkd_core.config import MRKDConfig
from mrkd_core.score import fuse_maps

K = TypeVar("K")
TileMaps = Callable[[np.ndarray], "Tensor | np.ndarray"]


def to_network_size(image: np.ndarray, size: int) -> np.ndarray:
    """An H×W×3 uint8 image (or tile) resized like the dataset loaders: LANCZOS to size×size.

    Equal to ``data.io.load_image(path, size)`` on the same pixels saved as a file.
    """
    if image.shape[:2] == (size, size):
        return image
    return np.array(Image.fromarray(image).resize((int(size), int(size)), Image.Resampling.LANCZOS), dtype=np.uint8)


def network_sigma(cfg: MRKDConfig) -> float:
    """σ of the Gaussian applied to each network input's map: Eq. 5's for a whole image, 0 for a tile
    (a tiled map is smoothed once, after stitching: ``Tiling.anomaly_map``)."""
    return 0.0 if cfg.tiled else float(cfg.gaussian_sigma)


def tile_starts(length: int, tile: int, stride: int) -> tuple[int, ...]:
    """Origins along one side: 0, stride, … while a tile fits, plus one aligned to the far edge if needed."""
    if length <= tile:
        return (0,)
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return tuple(starts)


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one height × width frame lie: tile sides and origins, row-major order."""

    height: int
    width: int
    tile_h: int
    tile_w: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    @property
    def origins(self) -> list[tuple[int, int]]:
        """(y, x) of each tile's top-left pixel, row by row."""
        return [(y, x) for y in self.ys for x in self.xs]

    def coverage(self) -> np.ndarray:
        """height × width int: how many tiles cover each pixel (≥ 1 everywhere)."""
        rows = np.zeros(self.height, dtype=np.int64)
        cols = np.zeros(self.width, dtype=np.int64)
        for y in self.ys:
            rows[y:y + self.tile_h] += 1
        for x in self.xs:
            cols[x:x + self.tile_w] += 1
        return rows[:, None] * cols[None, :]


class Stitcher:
    """One frame's map, built tile by tile: each tile map resized to its box and added; overlaps averaged.

    Accumulated in float64, so that a constant map stitches back to exactly that constant
    (a sum of k equal float32 values and its division by k are exact in float64).
    """

    def __init__(self, grid: TileGrid):
        self.grid = grid
        self._sum: Tensor | None = None
        self._added = 0

    @property
    def done(self) -> bool:
        return self._added == len(self.grid)

    def add(self, indices: Sequence[int], maps: Tensor) -> None:
        """Place the C×S×S maps (a B×C×S×S tensor) of the tiles ``indices`` of this frame."""
        g = self.grid
        if self._sum is None:
            self._sum = torch.zeros((maps.shape[1], g.height, g.width), dtype=torch.float64)
        origins = g.origins
        for k, tile in zip(indices, maps):  # one tile at a time: a batch of large tiles in float64 would not be small
            y, x = origins[k]
            self._sum[:, y:y + g.tile_h, x:x + g.tile_w] += F.interpolate(
                tile[None].to("cpu", torch.float64), size=(g.tile_h, g.tile_w), mode="bilinear", align_corners=False)[0]
        self._added += len(indices)

    def result(self) -> Tensor:
        """C×height×width float32: every pixel the mean of the tile maps that cover it."""
        if not self.done or self._sum is None:
            raise RuntimeError(f"{self._added} of {len(self.grid)} tiles placed")
        out = self._sum.div_(torch.from_numpy(self.grid.coverage())).float()
        self._sum = None
        return out


@dataclass(frozen=True)
class Tiling:
    """A model's tiling: tile side and stride in frame pixels, the network's input side, Eq. 5's σ."""

    tile_size: int
    tile_stride: int
    image_size: int
    gaussian_sigma: float

    @classmethod
    def of(cls, cfg: MRKDConfig) -> Tiling | None:
        """The tiling of ``cfg``; None when it resizes whole images (``tile_size`` 0)."""
        if not cfg.tiled:
            return None
        return cls(cfg.tile_size, cfg.stride, cfg.image_size, float(cfg.gaussian_sigma))

    # ------------------------------------------------------------------ cutting
    def grid(self, height: int, width: int) -> TileGrid:
        th, tw = min(self.tile_size, height), min(self.tile_size, width)
        return TileGrid(int(height), int(width), th, tw, tile_starts(height, th, self.tile_stride),
                        tile_starts(width, tw, self.tile_stride))

    def tiles(self, frame: np.ndarray, grid: TileGrid | None = None) -> Iterator[np.ndarray]:
        """The network inputs of an H×W×3 uint8 frame: each tile resized to image_size (row-major, lazily)."""
        g = grid or self.grid(*frame.shape[:2])
        for y, x in g.origins:
            yield to_network_size(np.ascontiguousarray(frame[y:y + g.tile_h, x:x + g.tile_w]), self.image_size)

    # ------------------------------------------------------------------ smoothing (Eq. 5) and score (Eq. 6)
    def sigma(self, grid: TileGrid) -> tuple[float, float]:
        """(σ_y, σ_x) in frame pixels: Eq. 5's σ (network pixels) × the tile-to-input ratio of each axis."""
        s = self.gaussian_sigma
        return (s * grid.tile_h / self.image_size, s * grid.tile_w / self.image_size)

    def anomaly_map(self, stitched: Tensor, grid: TileGrid, scales: Sequence[int] | None = None) -> Tensor:
        """S_AL (Eq. 5) of a frame: the chosen channels of its stitched L×H×W maps summed, then smoothed once.

        ``scales`` (1-based, Table 7) defaults to every channel (a map fused before stitching).
        Returns H×W float32; its maximum is the image score (Eq. 6).
        """
        chosen = tuple(scales) if scales is not None else tuple(range(1, stitched.shape[0] + 1))
        return fuse_maps(stitched.unsqueeze(0), chosen, self.sigma(grid))[0]

    # ------------------------------------------------------------------ the driver
    def stitched_maps(self, frames: Iterable[tuple[K, np.ndarray]], tile_maps: TileMaps,
                      batch_size: int) -> Iterator[tuple[K, Tensor, TileGrid]]:
        """(key, C×H×W float32 stitched map before smoothing, grid) per (key, H×W×3 uint8 frame), in order.

        ``tile_maps`` maps a B×S×S×3 uint8 batch of tiles to their B×C×S×S maps (Eq. 5 before
        the Gaussian; an engine's forward pass). Tiles of consecutive frames share batches of
        up to ``batch_size``; a frame is yielded as soon as its last tile is placed, and
        ``frames`` is read one frame ahead at most, so memory stays bounded whatever the
        frame size or count.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size {batch_size} must be at least 1")
        open_frames: deque[tuple[K, Stitcher]] = deque()
        batch: list[tuple[Stitcher, int, np.ndarray]] = []

        def run() -> None:
            maps = torch.as_tensor(tile_maps(np.stack([tile for _, _, tile in batch])))
            start = 0
            while start < len(batch):  # consecutive tiles of one frame are placed together
                owner = batch[start][0]
                stop = start
                while stop < len(batch) and batch[stop][0] is owner:
                    stop += 1
                owner.add([k for _, k, _ in batch[start:stop]], maps[start:stop])
                start = stop
            batch.clear()

        def finished() -> Iterator[tuple[K, Tensor, TileGrid]]:
            while open_frames and open_frames[0][1].done:
                key, stitcher = open_frames.popleft()
                yield key, stitcher.result(), stitcher.grid

        for key, frame in frames:
            grid = self.grid(*frame.shape[:2])
            stitcher = Stitcher(grid)
            open_frames.append((key, stitcher))
            for k, tile in enumerate(self.tiles(frame, grid)):
                batch.append((stitcher, k, tile))
                if len(batch) == batch_size:
                    run()
                    yield from finished()
            del frame
        if batch:
            run()
        yield from finished()

    def describe(self, height: int, width: int) -> str:
        """One line: the tiles of a height × width frame and what a network pixel covers."""
        g = self.grid(height, width)
        return (f"{len(g)} tiles of {g.tile_w}×{g.tile_h} px (stride {self.tile_stride}) per {width}×{height} frame, "
                f"each resized to {self.image_size}×{self.image_size}")


__all__ = ["Stitcher", "TileGrid", "Tiling", "network_sigma", "tile_starts", "to_network_size"]
