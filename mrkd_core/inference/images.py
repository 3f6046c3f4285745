"""Images in and maps out at the input's own size.

The network sees what the dataset loaders feed it (``mrkd_core.data.io.load_image``): the
image converted to RGB (grey repeated to 3 channels) and resized to the square
``image_size`` × ``image_size`` with LANCZOS, aspect ratio not kept, as the official code
does. The anomaly map comes back at that square size and is resized to the input's
width × height (bilinear, pixel centres aligned) before thresholding and overlaying, so
masks and overlays have the input's own size. The image score (Eq. 6) is the maximum of
the map at the network's resolution, as in evaluation.

A tiled model (``tile_size``) cuts the frame into tiles instead, each resized the same way,
and its map is stitched and scored at the frame's own size (``mrkd_core.tiling``).
"""

from __future__ import annotations

import os

import cv2
import numpy as np

from mrkd_core.data.io import load_image
from mrkd_core.tiling import to_network_size

__all__ = ["read_image", "to_input_size", "to_network_size"]


def read_image(path: str | os.PathLike[str], size: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(original H×W×3 uint8, network input size×size×3 uint8) of one file, decoded once.

    The network input equals ``load_image(path, size)`` (tests/core/test_inference.py
    checks it for RGB, grey and 16-bit files); ``size`` None: no network input (a tiled
    model cuts its own, ``mrkd_core.tiling``). Unreadable files raise ``DataError``.
    """
    original = load_image(path, None)
    return original, to_network_size(original, size) if size is not None else None


def to_input_size(amap: np.ndarray, width: int, height: int) -> np.ndarray:
    """A S×S float map resized to height×width (bilinear, half-pixel centres), float32."""
    amap = np.asarray(amap, dtype=np.float32)
    if amap.shape == (height, width):
        return amap
    return cv2.resize(amap, (int(width), int(height)), interpolation=cv2.INTER_LINEAR)
