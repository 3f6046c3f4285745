"""Heatmap overlays and defect masks as PNG images.

The colour of a pixel is a function of its normalised map value only
(``Calibration.normalize_map``: the pixel threshold is the middle of the scale, fixed at
calibration), so an overlay depends on the image and the model, never on the other
files of a call.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from mrkd_core.data.io import png_bytes, save_png


def overlay(image: np.ndarray, normalized_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Jet-coloured ``normalized_map`` (H×W in [0, 1]) blended over ``image`` (H×W×3 uint8 RGB)."""
    if image.shape[:2] != normalized_map.shape:
        raise ValueError(f"image {image.shape[:2]} and map {normalized_map.shape} differ in size")
    level = np.rint(np.clip(normalized_map, 0.0, 1.0) * 255).astype(np.uint8)
    heat = cv2.applyColorMap(level, cv2.COLORMAP_JET)[:, :, ::-1]  # BGR → RGB
    return np.rint(alpha * heat + (1 - alpha) * image.astype(np.float32)).astype(np.uint8)


def write_overlay(path: Path, image: np.ndarray, normalized_map: np.ndarray) -> None:
    """The overlay of :func:`overlay` (H×W×3 uint8 image, H×W normalised map) as a PNG at ``path``."""
    save_png(path, overlay(image, normalized_map))


def mask_image(mask: np.ndarray) -> np.ndarray:
    """A {0, 1} mask as the 0/255 uint8 grey image that mask PNGs hold."""
    return (np.asarray(mask) > 0).astype(np.uint8) * 255


def write_mask(path: Path, mask: np.ndarray) -> None:
    """A {0, 1} mask as a 0/255 grey PNG."""
    save_png(path, mask_image(mask))


def mask_png(mask: np.ndarray) -> bytes:
    """The PNG bytes :func:`write_mask` writes (for answers sent over the network)."""
    return png_bytes(mask_image(mask))
