"""Reading images and masks exactly as the official code prepares them, with clear errors.

The official MRKD/RD4AD code opens every image with PIL, converts it to RGB and resizes
it to 256×256 with LANCZOS; masks are resized with NEAREST and binarised. We do the
same so scores are comparable, and turn every way a file can be bad (empty, truncated,
not an image, absurdly large) into one ``DataError`` line that names the file and says
what to do, instead of a PIL traceback deep inside a DataLoader worker.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mrkd_core.errors import DataError

log = logging.getLogger(__name__)

# Decompression-bomb guard, per call: the largest MVTec AD image is 1024×1024 and BTAD's
# 1600×1600, so 100 M pixels only ever trips on broken or hostile files. We check the size
# in the header (Image.open does not decode) before any pixel is decompressed.
MAX_IMAGE_PIXELS = 100_000_000

_FIX = "replace or remove the file"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _cannot_read(path: str, why: str) -> DataError:
    return DataError(f"{path}: cannot read image ({why}) — {_FIX}")


def open_image(path: str | os.PathLike[str], max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open and fully decode ``path``; any failure is a DataError naming the file.

    Decoding here (``load()``) rather than lazily means a truncated file fails now, with
    its name, and not later in a resize or tensor conversion.
    """
    p = os.fspath(path)
    try:
        size_bytes = os.stat(p).st_size
    except FileNotFoundError:
        raise DataError(f"{p}: file not found — restore it or run `mrkd data check` on the dataset") from None
    except OSError as exc:
        raise _cannot_read(p, _one_line(exc)) from None
    if size_bytes == 0:
        raise _cannot_read(p, "the file is empty, 0 bytes")
    try:
        with warnings.catch_warnings():
            # Our own limit below replaces Pillow's global warning threshold.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(p)
    except Image.DecompressionBombError as exc:
        raise DataError(
            f"{p}: image too large to decode safely ({_one_line(exc)}) — {_FIX} (decompression-bomb guard)"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise _cannot_read(p, _one_line(exc)) from None
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise DataError(
            f"{p}: image is {width}×{height} = {width * height:,} pixels, over the limit of {max_pixels:,} "
            f"(decompression-bomb guard) — {_FIX}, or shrink it"
        )
    try:
        img.load()
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        img.close()
        raise _cannot_read(p, _one_line(exc)) from None
    return img


def image_size(path: str | os.PathLike[str], max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """(width, height) of a readable image (fully decoded, so corrupt files are caught)."""
    with open_image(path, max_pixels) as img:
        return img.size


def _to_rgb_or_l(img: Image.Image) -> Image.Image:
    """Reduce any PIL mode to L (grey) or RGB without changing what the official code sees.

    16-bit grey (mode I/I;16) is scaled to 8 bits instead of clipped, which is what
    ``convert('L')`` would do.
    """
    if img.mode in ("L", "RGB"):
        return img
    if img.mode.startswith("I") or img.mode == "F":
        arr = np.asarray(img).astype(np.float64)
        if arr.max(initial=0) > 255:
            arr = arr / 257.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("1", "LA"):
        return img.convert("L")
    return img.convert("RGB")


def _image_array(raw: Image.Image, size: int | None) -> np.ndarray:
    img = _to_rgb_or_l(raw)
    if size is not None:
        # Resizing the single grey channel then stacking equals resizing its RGB copy.
        img = img.resize((int(size), int(size)), Image.Resampling.LANCZOS)
    # np.array copies: PIL's buffer view is read-only, and torch.from_numpy warns on those.
    arr = np.array(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return arr


def load_image(path: str | os.PathLike[str], size: int | None,
               max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """uint8 array H×W×3: grey images (grid, screw, zipper, MTD) get 3 equal channels.

    ``size``: resize to size×size with LANCZOS like the official code (aspect ratio is not
    kept, e.g. MTD tiles are squashed, as there); None keeps the original size.
    """
    with open_image(path, max_pixels) as raw:
        return _image_array(raw, size)


def load_mask(path: str | os.PathLike[str], size: int | None,
              image_size: tuple[int, int] | None = None, image_path: str | os.PathLike[str] | None = None,
              max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """uint8 array H×W with values {0, 1} (any value > 0 is a defect), NEAREST-resized.

    ``image_size`` (width, height of the image the mask belongs to) turns a mask of another
    size into a DataError naming both sizes: resizing both to 256×256 would silently
    misalign them and corrupt the pixel metrics.
    """
    p = os.fspath(path)
    with open_image(p, max_pixels) as raw:
        if image_size is not None and tuple(raw.size) != tuple(image_size):
            of = f" of {os.fspath(image_path)}" if image_path is not None else ""
            raise DataError(
                f"{p}: mask is {raw.size[0]}×{raw.size[1]} but its image{of} is {image_size[0]}×{image_size[1]} "
                "— the mask must have the image's size; fix or regenerate the mask"
            )
        img = raw if raw.mode in ("L", "1") else _to_rgb_or_l(raw).convert("L")
        binary = (np.asarray(img) > 0).astype(np.uint8)
    if size is not None:
        binary = np.array(
            Image.fromarray(binary, mode="L").resize((int(size), int(size)), Image.Resampling.NEAREST),
            dtype=np.uint8,
        )
    return binary


def load_pair(image_path: str | os.PathLike[str], mask_path: str | os.PathLike[str] | None,
              size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Image and its mask (all zeros when ``mask_path`` is None), size-checked against each other."""
    with open_image(image_path) as raw:
        original = raw.size
        image = _image_array(raw, size)
    if mask_path is None:
        h, w = image.shape[:2]
        return image, np.zeros((h, w), dtype=np.uint8)
    mask = load_mask(mask_path, size, image_size=original, image_path=image_path)
    return image, mask


def save_png(path: Path, array: np.ndarray) -> None:
    """Write uint8 H×W or H×W×3 as PNG (fast compression: test and demo data is throwaway)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(array)).save(path, format="PNG", compress_level=1)
