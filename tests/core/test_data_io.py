"""Decoding (mrkd_core/data/io.py): the pixels depend on the picture, never on how it was saved.

Every file is generated here: one picture saved as 8-bit PNG (the reference), 16-bit PNG,
16-bit TIFF, palette PNG, BMP and JPEG with an EXIF orientation must decode to the same
pixels, up to the format's own rounding (JPEG is lossy; 16-bit → 8-bit rounds). Masks are
held to the same rule.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mrkd_core.data.io import image_size, load_image, load_image_bytes, load_mask, load_pair
from mrkd_core.errors import DataError
from mrkd_core.data.validate import check_image
from tests.datagen import save_16bit, save_rotated_jpeg

W, H = 48, 40  # not square: a rotation that is not undone changes the shape


def _picture(grey: bool, dark: bool = False) -> np.ndarray:
    """A smooth picture (JPEG keeps it within a few levels) of at most 256 colours (a palette holds it)."""
    yy, xx = np.mgrid[0:H, 0:W]
    k = 1 if dark else 4  # dark: every value < 64, where a scale-by-maximum rule would differ
    r = ((xx * 4 + yy * 2) % 64) * k
    if grey:
        return r.astype(np.uint8)
    g = ((yy * 4 + 8) % 64) * k
    b = (r + g) // 2  # a function of (r, g): 16 × 16 colours at most
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def _save_palette(path: Path, pic: np.ndarray) -> Path:
    flat = pic.reshape(-1, 3) if pic.ndim == 3 else np.repeat(pic.reshape(-1, 1), 3, axis=1)
    colours, index = np.unique(flat, axis=0, return_inverse=True)
    assert len(colours) <= 256
    img = Image.fromarray(index.reshape(H, W).astype(np.uint8), mode="P")
    img.putpalette(colours.astype(np.uint8).ravel().tolist())
    img.save(path)
    return path


def _saves(tmp_path: Path, pic: np.ndarray, tag: str) -> dict[str, Path]:
    Image.fromarray(pic).save(ref := tmp_path / f"{tag}-8bit.png")
    Image.fromarray(pic).save(bmp := tmp_path / f"{tag}.bmp")
    return {
        "8-bit PNG": ref,
        "16-bit PNG": save_16bit(tmp_path / f"{tag}-16bit.png", pic),
        "16-bit TIFF": save_16bit(tmp_path / f"{tag}-16bit.tif", pic),
        "palette PNG": _save_palette(tmp_path / f"{tag}-palette.png", pic),
        "BMP": bmp,
        "JPEG, EXIF rotation": save_rotated_jpeg(tmp_path / f"{tag}-rotated.jpg", pic),
    }


@pytest.mark.parametrize("grey,dark", [(False, False), (True, False), (True, True), (False, True)],
                         ids=["rgb", "grey", "dark-grey", "dark-rgb"])
@pytest.mark.parametrize("size", [None, 32])
def test_same_picture_decodes_alike_in_every_format(tmp_path, grey, dark, size):
    pic = _picture(grey, dark)
    files = _saves(tmp_path, pic, "pic")
    reference = load_image(files["8-bit PNG"], size)
    if size is None:  # the reference itself is the picture, grey as 3 equal channels
        np.testing.assert_array_equal(reference, np.repeat(pic[..., None], 3, axis=2) if grey else pic)
    for fmt, path in files.items():
        got = load_image(path, size)
        assert got.shape == reference.shape and got.dtype == np.uint8, fmt
        diff = np.abs(got.astype(int) - reference.astype(int))
        if fmt.startswith("JPEG"):
            assert diff.mean() < 1.5 and diff.max() <= 16, (fmt, diff.mean(), diff.max())
        else:
            assert diff.max() == 0, (fmt, diff.max())


def test_bytes_in_memory_decode_as_the_same_file(tmp_path):
    """The HTTP service's door (load_image_bytes) gives the pixels mrkd predict reads from the file."""
    files = _saves(tmp_path, _picture(grey=False), "pic")
    Image.fromarray(np.dstack([_picture(grey=False), np.full((H, W), 200, np.uint8)])).save(rgba := tmp_path / "a.png")
    for fmt, path in {**files, "RGBA PNG": rgba}.items():
        np.testing.assert_array_equal(load_image_bytes(path.read_bytes(), "body"), load_image(path, None), fmt)
    with pytest.raises(DataError, match=r"^body: cannot read image \(it is empty, 0 bytes\) — send a PNG"):
        load_image_bytes(b"", "body")
    with pytest.raises(DataError, match=r"^part\.png: cannot read image \(UnidentifiedImageError: not an image format"):
        load_image_bytes(b"not an image", "part.png")
    with pytest.raises(DataError, match="cannot read image"):
        load_image_bytes(files["8-bit PNG"].read_bytes()[:200], "cut.png")


def test_sixteen_bit_values_scale_by_the_format_not_the_content(tmp_path):
    """A dark 16-bit image is as dark as its 8-bit save (the old rule scaled only when max > 255)."""
    for v8 in (0, 1, 60, 128, 255):
        Image.fromarray(np.full((4, 4), v8 * 257, dtype=np.uint16)).save(p := tmp_path / f"v{v8}.png")
        assert Image.open(p).mode == "I;16"
        assert set(np.unique(load_image(p, None))) == {v8}
    # values that are not multiples of 257 round to the nearest 8-bit level
    Image.fromarray(np.array([[128, 129, 385, 65535]], dtype=np.uint16)).save(p := tmp_path / "odd.png")
    np.testing.assert_array_equal(load_image(p, None)[0, :, 0], [0, 1, 1, 255])
    # an image whose every 16-bit value is below 256 is nearly black, not an 8-bit image
    Image.fromarray(np.array([[0, 128, 129, 255]], dtype=np.uint16)).save(p := tmp_path / "dim.png")
    np.testing.assert_array_equal(load_image(p, None)[0, :, 0], [0, 0, 1, 1])


def test_exif_orientation_sets_the_size_everything_checks_against(tmp_path):
    pic = _picture(grey=False)
    jpeg = save_rotated_jpeg(tmp_path / "rot.jpg", pic)
    assert Image.open(jpeg).size == (H, W)  # stored rotated
    assert image_size(jpeg) == (W, H)  # decoded upright
    problems: list = []
    assert check_image(jpeg, problems) == (W, H) and not problems
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[5:15, 10:30] = 255
    Image.fromarray(mask).save(mask_path := tmp_path / "rot_mask.png")  # drawn on the upright picture
    image, m = load_pair(jpeg, mask_path, None)
    assert image.shape == (H, W, 3)
    np.testing.assert_array_equal(m, mask > 0)


def test_same_mask_binarises_alike_in_every_format(tmp_path):
    region = np.zeros((H, W), dtype=bool)
    region[8:20, 5:30] = True
    region[30:35, 40:46] = True
    files = {}
    Image.fromarray(region.astype(np.uint8) * 255).save(files.setdefault("8-bit 0/255", tmp_path / "m8.png"))
    Image.fromarray(region.astype(np.uint8)).save(files.setdefault("8-bit 0/1", tmp_path / "m01.png"))
    Image.fromarray(region.astype(np.uint16) * 65535).save(files.setdefault("16-bit 0/65535", tmp_path / "m16.png"))
    Image.fromarray(region.astype(np.uint16)).save(files.setdefault("16-bit 0/1", tmp_path / "m16_01.png"))
    Image.fromarray(region.astype(np.uint16) * 65535).save(files.setdefault("16-bit TIFF", tmp_path / "m16.tif"))
    Image.fromarray(region).convert("1").save(files.setdefault("1-bit", tmp_path / "m1.png"))
    pal = Image.fromarray(region.astype(np.uint8), mode="P")
    pal.putpalette([0, 0, 0, 255, 255, 255])
    pal.save(files.setdefault("palette", tmp_path / "mp.png"))
    blue = np.zeros((H, W, 3), dtype=np.uint8)
    blue[region] = (0, 0, 1)  # the darkest blue: its luminance rounds to 0, its colour is not 0
    Image.fromarray(blue).save(files.setdefault("RGB, dark blue", tmp_path / "mrgb.png"))
    rgba = np.zeros((H, W, 4), dtype=np.uint8)
    rgba[..., 3] = 255  # opaque black background
    rgba[region] = (255, 0, 0, 255)
    Image.fromarray(rgba).save(files.setdefault("RGBA", tmp_path / "mrgba.png"))
    for fmt, path in files.items():
        np.testing.assert_array_equal(load_mask(path, None), region.astype(np.uint8), err_msg=fmt)
        assert load_mask(path, 20).shape == (20, 20), fmt
