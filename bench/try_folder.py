"""The folder of the README's inspection quick try: ``parts/bracket/`` (MVTec layout) and ``new_images/``.

Realistic rather than obvious: every image is a crop of the real brick photo in
scikit-image's wheel (35-45 % of its side, mirrored half of the time, ±6 % brightness;
``mrkd_core.data.synthetic``, category ``tex_brick``), and the defects are painted onto
such crops (a dark scratch, a bright blob, a flat patch of the image's mean: ``scratch``,
``blob``, ``missing``) with their pixel masks in ``ground_truth/``. ``new_images/`` holds
other crops (another seed), good and defective, named by what they are.

With ``--large``, the folder of the README's "Large frames" block instead: ``plates/plate/``
(MVTec layout, 1024×1024 frames of a generated washer, ``obj_disc``, with defects 4-16 px
across: the high-resolution benchmark of docs/tiling.md) and ``frames/`` (its test frames).

::

    python bench/try_folder.py /tmp/try            # then run the README's commands in /tmp/try
    python bench/try_folder.py /tmp/big --large    # the same for the "Large frames" block
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mrkd_core.data.io import save_png  # noqa: E402
from mrkd_core.data.synthetic import CATEGORIES, make_synthetic_mvtec, render_image  # noqa: E402

SOURCE = "tex_brick"


def make_try_folder(where: Path, size: int = 256, n_train: int = 50, n_good: int = 10, n_defect: int = 9,
                    n_new: int = 4) -> Path:
    """Write ``where/parts/bracket`` and ``where/new_images``; returns ``where``."""
    part = where / "parts" / "bracket"
    for i in range(n_train):
        save_png(part / "train" / "good" / f"{i:03d}.png", render_image(SOURCE, 0, "train", i, size)[0])
    for i in range(n_good):
        save_png(part / "test" / "good" / f"{i:03d}.png", render_image(SOURCE, 0, "test_good", i, size)[0])
    defects = CATEGORIES[SOURCE].defects
    for i in range(n_defect):
        kind = defects[i % len(defects)]
        image, mask = render_image(SOURCE, 0, "test_defect", i, size, defect=kind)
        save_png(part / "test" / kind / f"{i // len(defects):03d}.png", image)
        save_png(part / "ground_truth" / kind / f"{i // len(defects):03d}_mask.png", mask * 255)
    new = where / "new_images"
    for i in range(n_new):
        save_png(new / f"good_{i}.png", render_image(SOURCE, 1, "test_good", i, size)[0])
        kind = defects[i % len(defects)]
        save_png(new / f"{kind}_{i}.png", render_image(SOURCE, 1, "test_defect", i, size, defect=kind)[0])
    return where


def make_large_frames(where: Path, size: int = 1024, n_train: int = 12, n_good: int = 2, n_defect: int = 4,
                      defect_px: tuple[float, float] = (4, 16)) -> Path:
    """Write ``where/plates/plate`` (MVTec layout) and ``where/frames`` (copies of its test frames); returns ``where``."""
    with tempfile.TemporaryDirectory(dir=where.parent if where.parent.exists() else None) as tmp:
        make_synthetic_mvtec(tmp, categories=("obj_disc",), n_train=n_train, n_test_good=n_good,
                             n_test_defect=n_defect, size=size, seed=3, defect_px=defect_px)
        (where / "plates").mkdir(parents=True, exist_ok=True)
        shutil.copytree(Path(tmp) / "obj_disc", where / "plates" / "plate")
    frames = where / "frames"
    frames.mkdir(exist_ok=True)
    for image in sorted((where / "plates" / "plate" / "test").rglob("*.png")):
        shutil.copy(image, frames / f"{image.parent.name}_{image.stem}.png")
    return where


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("where", type=Path, help="folder to create parts/ and new_images/ in (plates/ and frames/ "
                                                    "with --large)")
    parser.add_argument("--size", type=int, help="image side in pixels (default 256; 1024 with --large)")
    parser.add_argument("--large", action="store_true", help="the high-resolution frames of the 'Large frames' block")
    args = parser.parse_args(argv)
    if args.large:
        print(make_large_frames(args.where, args.size or 1024))
    else:
        print(make_try_folder(args.where, args.size or 256))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
