"""Reading images and masks exactly as the official code prepares them, with clear errors.

The official MRKD/RD4AD code opens every image with PIL, converts it to RGB and resizes
it to 256×256 with LANCZOS; masks are resized with NEAREST and binarised. We do the
same so scores are comparable, and turn every way a file can be bad (empty, truncated,
not an image, absurdly large) into one ``DataError`` line that names the file and says
what to do, instead of a PIL traceback deep inside a DataLoader worker.

What a picture decodes to depends on the picture, never on how it was saved (docs/
datasets.md, "Decoding"): the same picture as 8-bit PNG, 16-bit PNG or TIFF, palette PNG,
BMP or a JPEG with an EXIF orientation gives the same pixels, up to the format's own
rounding. 16-bit samples are scaled by the container's range (v · 255 / 65535), never
by the image's own maximum; the EXIF orientation is applied; palettes are expanded.
MVTec AD, BTAD and MTD are 8-bit without orientation tags, where this is exactly the
official code's ``convert('RGB')``.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mrkd_core.data.base import mask_files
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


def _cannot_read(path: str, why: str, fix: str = _FIX) -> DataError:
    return DataError(f"{path}: cannot read image ({why}) — {fix}")


def _open_lazily(p: str, max_pixels: int) -> Image.Image:
    """``Image.open`` of ``p`` (its header read, no pixel decoded) within the bomb guard; else a DataError."""
    try:
        size_bytes = os.stat(p).st_size
    except FileNotFoundError:
        raise DataError(f"{p}: file not found — restore it or run `mrkd data check` on the dataset") from None
    except OSError as exc:
        raise _cannot_read(p, _one_line(exc)) from None
    if size_bytes == 0:
        raise _cannot_read(p, "the file is empty, 0 bytes")
    return _decode(p, p, max_pixels, _FIX)


def open_image_bytes(data: bytes, name: str, max_pixels: int = MAX_IMAGE_PIXELS,
                     fix: str = "send a PNG, JPEG, BMP or TIFF image") -> Image.Image:
    """:func:`open_image` for an encoded image in memory (an HTTP body): the same decoding and
    checks, errors naming ``name`` and ending with ``fix``."""
    if not data:
        raise _cannot_read(name, "it is empty, 0 bytes", fix)
    return _load(_decode(io.BytesIO(data), name, max_pixels, fix), name, fix)


def _decode(source: str | io.BytesIO, p: str, max_pixels: int, fix: str) -> Image.Image:
    """``Image.open`` of ``source`` (header only) within the bomb guard; errors name ``p`` and end with ``fix``."""
    try:
        with warnings.catch_warnings():
            # Our own limit below replaces Pillow's global warning threshold.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(source)
    except Image.DecompressionBombError as exc:
        raise DataError(
            f"{p}: image too large to decode safely ({_one_line(exc)}; decompression-bomb guard) — {fix}"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        # Pillow names a file by its path but bytes by their buffer's repr: say what it means instead.
        why = ("UnidentifiedImageError: not an image format Pillow reads" if isinstance(exc, UnidentifiedImageError)
               and not isinstance(source, str) else _one_line(exc))
        raise _cannot_read(p, why, fix) from None
    width, height = img.size
    if width * height > max_pixels:
        img.close()
        raise DataError(
            f"{p}: image is {width}×{height} = {width * height:,} pixels, over the limit of {max_pixels:,} "
            f"(decompression-bomb guard) — {fix}, or shrink it"
        )
    return img


def open_image(path: str | os.PathLike[str], max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open and fully decode ``path``, upright; any failure is a DataError naming the file.

    Decoding here (``load()``) rather than lazily means a truncated file fails now, with
    its name, and not later in a resize or tensor conversion. An EXIF orientation (phone
    and camera JPEGs) is applied, so the image, its size and its mask's expected size are
    those of the picture as every viewer shows it.
    """
    p = os.fspath(path)
    return _load(_open_lazily(p, max_pixels), p, _FIX)


def _load(img: Image.Image, p: str, fix: str) -> Image.Image:
    """Decode the pixels of a lazily opened ``img`` and make it upright; errors name ``p``."""
    try:
        img.load()
        # In place: no copy when there is nothing to rotate (the usual case).
        ImageOps.exif_transpose(img, in_place=True)
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        img.close()
        raise _cannot_read(p, _one_line(exc), fix) from None
    return img


# EXIF orientations that turn a picture a quarter (its width and height swap when it is made upright).
_QUARTER_TURNS = frozenset({5, 6, 7, 8})
_EXIF_ORIENTATION = 0x0112


def header_size(path: str | os.PathLike[str], max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """(width, height) of ``path`` upright, from its header, without decoding its pixels; else a DataError.

    What can be known about a file without decoding it, in a fraction of :func:`open_image`'s
    time: that it exists, is not empty, is an image, is not over the decompression-bomb
    limit, and its size as :func:`open_image` gives it (a quarter-turn EXIF orientation
    swaps width and height). A PNG is also checked chunk by chunk (``verify``: the CRC of
    every chunk up to ``IEND``, no decompression), so a truncated or damaged PNG fails here;
    other formats are only decoded when used. The errors are :func:`open_image`'s lines.
    """
    p = os.fspath(path)
    with _open_lazily(p, max_pixels) as img:
        try:
            width, height = img.size
            # A PNG's EXIF is in its header only when stored before the pixels (reading a later one decodes).
            if img.format != "PNG" or "exif" in img.info:
                if img.getexif().get(_EXIF_ORIENTATION) in _QUARTER_TURNS:
                    width, height = height, width
            if img.format == "PNG":
                img.verify()
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise _cannot_read(p, _one_line(exc)) from None
    return width, height


def image_size(path: str | os.PathLike[str], max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """(width, height) of a readable image (fully decoded, so corrupt files are caught)."""
    with open_image(path, max_pixels) as img:
        return img.size


# Full scale of the integer sample types PIL opens: 16-bit grey is "I;16" (and its byte
# orders); "I" (32-bit) is what older Pillow versions made of 16-bit PNGs, so it is read
# as a 16-bit container too. "F" (float TIFF) is taken as [0, 1], the float convention.
_FULL_SCALE = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0, "I": 65535.0, "F": 1.0}


def _to_rgb_or_l(img: Image.Image) -> Image.Image:
    """Reduce any PIL mode to L (grey) or RGB: 8-bit samples, by the format's range only.

    High-bit-depth samples are scaled by their type's full range (16-bit: v · 255 / 65535,
    rounded), so a picture saved with 16 bits decodes like its 8-bit save, whatever its
    content (scaling by the image's own maximum would make a dark 16-bit image brighter
    than the same image in 8 bits). Palettes are expanded, alpha is dropped.
    """
    if img.mode in ("L", "RGB"):
        return img
    scale = _FULL_SCALE.get(img.mode)
    if scale is not None:
        arr = np.asarray(img).astype(np.float64) * (255.0 / scale)
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("1", "LA", "La"):
        return img.convert("L")
    return img.convert("RGB")


def _mask_values(img: Image.Image) -> np.ndarray:
    """H×W bool: a mask pixel is a defect when any of its colour samples is non-zero.

    Decided on the raw samples, so a mask saved as 8- or 16-bit grey (values 0/1, 0/255
    or 0/65535), 1-bit, palette or RGB(A) binarises alike; alpha is ignored.
    """
    if img.mode not in ("1", "L", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX") and img.mode not in _FULL_SCALE:
        img = img.convert("RGB")  # palette, CMYK, YCbCr ...: their colours
    arr = np.asarray(img)
    if arr.ndim == 2:
        return arr > 0
    colour = 1 if img.mode in ("LA", "La") else 3  # the last sample of LA / RGBA is alpha
    return (arr[..., :colour] > 0).any(axis=2)


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


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 hex of a file's bytes, read in blocks (images, archives, label lists). Raises ``OSError``."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def load_image(path: str | os.PathLike[str], size: int | None,
               max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """uint8 array H×W×3: grey images (grid, screw, zipper, MTD) get 3 equal channels.

    ``size``: resize to size×size with LANCZOS like the official code (aspect ratio is not
    kept, e.g. MTD tiles are squashed, as there); None keeps the original size.
    """
    with open_image(path, max_pixels) as raw:
        return _image_array(raw, size)


def load_image_bytes(data: bytes, name: str, size: int | None = None,
                     max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """:func:`load_image` of an encoded image in memory (PNG, JPEG, BMP, TIFF bytes): the same pixels
    as the same bytes read from a file; errors name ``name``."""
    with open_image_bytes(data, name, max_pixels) as raw:
        return _image_array(raw, size)


def load_mask(path: str | os.PathLike[str], size: int | None,
              image_size: tuple[int, int] | None = None, image_path: str | os.PathLike[str] | None = None,
              max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """uint8 array H×W with values {0, 1} (any value > 0 is a defect), NEAREST-resized.

    ``path`` is a mask file or a folder of masks (MVTec LOCO AD), whose union is the mask.
    ``image_size`` (width, height of the image the mask belongs to) turns a mask of another
    size into a DataError naming both sizes: resizing both to 256×256 would silently
    misalign them and corrupt the pixel metrics.
    """
    p = os.fspath(path)
    files = mask_files(p)
    if not files:
        raise DataError(f"{p}: mask folder holds no mask image — add one PNG per defect, or remove the folder "
                        "and its image")
    binary = None
    for file in files:
        with open_image(file, max_pixels) as raw:
            if image_size is not None and tuple(raw.size) != tuple(image_size):
                of = f" of {os.fspath(image_path)}" if image_path is not None else ""
                raise DataError(
                    f"{file}: mask is {raw.size[0]}×{raw.size[1]} but its image{of} is "
                    f"{image_size[0]}×{image_size[1]} — the mask must have the image's size; fix or regenerate the mask"
                )
            if binary is not None and binary.shape != (raw.size[1], raw.size[0]):
                raise DataError(f"{file}: mask is {raw.size[0]}×{raw.size[1]} but the other masks of {p} are "
                                f"{binary.shape[1]}×{binary.shape[0]} — the masks of one image must share its size")
            one = _mask_values(raw)
            binary = one if binary is None else binary | one
    binary = binary.astype(np.uint8)
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
    path.write_bytes(png_bytes(array))


def png_bytes(array: np.ndarray) -> bytes:
    """uint8 H×W or H×W×3 encoded as PNG (fast compression), in memory."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
