"""Tiny fake copies of every on-disk dataset layout, plus helpers that plant bad files.

Shared by all tests: the real datasets are gigabytes, but loaders, validation and
downloads only care about names, formats and sizes. Images are random noise of a few
dozen pixels; masks are one filled rectangle (value 255) so tests know their area.

    make_mvtec(root)   MVTec AD layout, one grayscale category (grid)
    make_btad(root)    BTAD: 01 = .bmp images/.png masks, 02 = .png/.png, 03 = .bmp/.bmp
    make_mtd(root)     MTD: variable-size grey .jpg with same-stem .png masks
    make_elpv(root)    ELPV: labels.csv exactly as the elpv-dataset package writes it + grey PNG cells
    make_elpv_package  the same inside a stand-in ``elpv_dataset`` package (for sys.path)
    make_visa(root)    VisA as published: split_csv/1cls.csv, <object>/Data/Images/{Normal,Anomaly}/*.JPG,
                       instance-labelled Data/Masks/Anomaly/*.png
    make_mvtec_ad2     MVTec AD 2: train, validation, test_public (+ ground_truth/bad), test_private(_mixed)
    make_mvtec_loco    MVTec LOCO AD: test/{good,logical,structural}, ground_truth/<type>/<id>/NNN.png folders
                       (one PNG per defect, valued per defects_config.json)
    benchmark_archive  one of the three as its published archive (name, bytes)
    plant_*            zero-byte, text-named-.png, truncated PNG, wrong-size mask ...
    make_tar/make_zip  archives (optionally hostile) for download tests
    train_smoke_key    one trained key (smoke spec, obj_disc, 32 px) in a local store
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

MVTEC_DEFECTS = ("crack", "scratch")
# `mrkd train` options for a model trained in seconds (ResNet18, random teacher, 32 px, 1 epoch).
FAST_CLI = ("--backbone", "resnet18", "--teacher-weights", "none", "--image-size", "32", "--epochs", "1",
            "--batch-size", "4", "--num-workers", "0", "--no-progress", "--device", "cpu")
MTD_DEFECT_FOLDERS = ("MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven")


def write_image(path: str | Path, width: int, height: int, gray: bool = False, seed: int = 0) -> Path:
    """Random-noise image; the format follows the extension (.png .bmp .jpg)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, width, height, len(path.name)])
    shape = (height, width) if gray else (height, width, 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
    return path


def save_16bit(path: str | Path, pic: np.ndarray) -> Path:
    """The 16-bit save (v · 257) of an 8-bit picture: RGB via OpenCV, grey via PIL (mode I;16); PNG or TIFF."""
    import cv2

    wide = pic.astype(np.uint16) * 257
    if pic.ndim == 3:
        assert cv2.imwrite(str(path), wide[..., ::-1])  # cv2 writes BGR, 16-bit RGB PNG/TIFF
    else:
        Image.fromarray(wide).save(path)
    return Path(path)


def save_rotated_jpeg(path: str | Path, pic: np.ndarray) -> Path:
    """Pixels stored rotated, with EXIF orientation 6 ('rotate 90° clockwise to display')."""
    stored = Image.fromarray(pic).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, exif=exif, quality=98, subsampling=0)
    return Path(path)


def write_mask(path: str | Path, width: int, height: int, box: tuple[int, int, int, int] | None = None) -> Path:
    """0/255 mask with the rectangle ``box`` = (x0, y0, x1, y1) filled (default: central quarter)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((height, width), dtype=np.uint8)
    x0, y0, x1, y1 = box or (width // 4, height // 4, width // 4 + width // 2, height // 4 + height // 2)
    arr[y0:y1, x0:x1] = 255
    Image.fromarray(arr, mode="L").save(path)
    return path


def make_mvtec(root: str | Path, categories: Sequence[str] = ("bottle", "grid"), n_train: int = 3,
               n_good: int = 2, defects: Sequence[str] = MVTEC_DEFECTS, n_per_defect: int = 2,
               size: tuple[int, int] = (40, 32), grayscale: Sequence[str] = ("grid",)) -> Path:
    """MVTec AD layout: n_train + n_good + len(defects)·n_per_defect images per category.

    ``size`` is (width, height), deliberately not square so tests see the resize.
    """
    root = Path(root)
    w, h = size
    for c in categories:
        gray = c in grayscale
        for i in range(n_train):
            write_image(root / c / "train" / "good" / f"{i:03d}.png", w, h, gray, seed=i)
        for i in range(n_good):
            write_image(root / c / "test" / "good" / f"{i:03d}.png", w, h, gray, seed=100 + i)
        for d in defects:
            for i in range(n_per_defect):
                write_image(root / c / "test" / d / f"{i:03d}.png", w, h, gray, seed=200 + i)
                write_mask(root / c / "ground_truth" / d / f"{i:03d}_mask.png", w, h)
    return root


BTAD_FORMATS = {"01": (".bmp", ".png"), "02": (".png", ".png"), "03": (".bmp", ".bmp")}  # (image, mask)


def make_btad(root: str | Path, products: Sequence[str] = ("01", "02", "03"), n_train: int = 3, n_ok: int = 2,
              n_ko: int = 2, size: tuple[int, int] = (36, 30)) -> Path:
    """BTAD layout (train/ok, test/ok, test/ko, ground_truth/ko with same-stem masks)."""
    root = Path(root)
    w, h = size
    for p in products:
        img_ext, mask_ext = BTAD_FORMATS[p]
        for i in range(n_train):
            write_image(root / p / "train" / "ok" / f"{i:04d}{img_ext}", w, h, seed=i)
        for i in range(n_ok):
            write_image(root / p / "test" / "ok" / f"{i:04d}{img_ext}", w, h, seed=50 + i)
        for i in range(n_ko):
            write_image(root / p / "test" / "ko" / f"{i:04d}{img_ext}", w, h, seed=90 + i)
            write_mask(root / p / "ground_truth" / "ko" / f"{i:04d}{mask_ext}", w, h)
    return root


def mtd_size(folder: str, i: int) -> tuple[int, int]:
    """(width, height) of fake MTD image i of ``folder``: varies like the real tiles."""
    return 30 + (7 * i + len(folder)) % 25, 20 + (5 * i) % 17


def make_mtd(root: str | Path, n_free: int = 10, n_per_defect: int = 2) -> Path:
    """MTD layout: MT_*/Imgs/<name>.jpg (grey, variable size) and <name>.png masks.

    MT_Free images get all-zero masks, as in the real repository.
    """
    root = Path(root)
    for folder, n in [("MT_Free", n_free), *((d, n_per_defect) for d in MTD_DEFECT_FOLDERS)]:
        for i in range(n):
            w, h = mtd_size(folder, i)
            stem = f"exp{i % 3}_num_{1000 + i}"
            write_image(root / folder / "Imgs" / f"{stem}.jpg", w, h, gray=True, seed=i)
            if folder == "MT_Free":
                write_mask(root / folder / "Imgs" / f"{stem}.png", w, h, box=(0, 0, 0, 0))
            else:
                write_mask(root / folder / "Imgs" / f"{stem}.png", w, h)
    return root


def write_defect_image(path: Path, width: int, height: int, boxes: Sequence[tuple[int, int, int, int]],
                       seed: int) -> Path:
    """A noise image with each box (x0, y0, x1, y1) painted bright: a visible defect."""
    write_image(path, width, height, seed=seed)
    arr = np.array(Image.open(path).convert("RGB"))
    for x0, y0, x1, y1 in boxes:
        arr[y0:y1, x0:x1] = (250, 240, 30)
    Image.fromarray(arr).save(path)
    return path


def write_valued_mask(path: Path, width: int, height: int, boxes: Sequence[tuple[int, int, int, int, int]]) -> Path:
    """8-bit mask with each (x0, y0, x1, y1, value) box filled with its value (instance or defect ids)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((height, width), dtype=np.uint8)
    for x0, y0, x1, y1, value in boxes:
        arr[y0:y1, x0:x1] = value
    Image.fromarray(arr, mode="L").save(path)
    return path


VISA_OBJECTS = ("candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2",
                "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum")


def make_visa(root: str | Path, objects: Sequence[str] = VISA_OBJECTS, n_train: int = 3, n_good: int = 2,
              n_anomaly: int = 2, size: tuple[int, int] = (48, 40)) -> Path:
    """VisA as ``VisA_20220922.tar`` holds it: the 1-class split lists every image of every object.

    Anomaly masks are instance-labelled: the first anomaly has two defects valued 1 and 2.
    """
    root = Path(root)
    w, h = size
    rows = ["object,split,label,image,mask"]
    for o in objects:
        images = root / o / "Data" / "Images"
        anno = ["image,label,mask"]
        for i in range(n_train + n_good):
            rel = f"{o}/Data/Images/Normal/{i:04d}.JPG"
            write_image(root / rel, w, h, seed=i)
            rows.append(f"{o},{'train' if i < n_train else 'test'},normal,{rel},")
            anno.append(f"{rel},normal,")
        for i in range(n_anomaly):
            rel, mask = f"{o}/Data/Images/Anomaly/{i:03d}.JPG", f"{o}/Data/Masks/Anomaly/{i:03d}.png"
            boxes = [(4, 4, 14, 12, 1)] + ([(30, 24, 40, 34, 2)] if i == 0 else [])
            write_defect_image(root / rel, w, h, [b[:4] for b in boxes], seed=50 + i)
            write_valued_mask(root / mask, w, h, boxes)
            rows.append(f"{o},test,anomaly,{rel},{mask}")
            anno.append(f"{rel},defect,{mask}")
        (images.parent.parent / "image_anno.csv").write_text("\n".join(anno) + "\n")
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    (root / "LICENSE-DATASET").write_text("generated test data\n")
    return root


MVTEC_AD2_SCENARIOS = ("can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts")


def make_mvtec_ad2(root: str | Path, categories: Sequence[str] = MVTEC_AD2_SCENARIOS, n_train: int = 3,
                   n_validation: int = 2, n_good: int = 2, n_bad: int = 2, n_private: int = 2,
                   size: tuple[int, int] = (44, 36)) -> Path:
    """MVTec AD 2 layout: train, validation, test_public with ground_truth/bad, and the private test sets."""
    root = Path(root)
    w, h = size
    for c in categories:
        for i in range(n_train):
            write_image(root / c / "train" / "good" / f"{i:03d}_regular.png", w, h, seed=i)
        for i in range(n_validation):
            write_image(root / c / "validation" / "good" / f"{i:03d}_regular.png", w, h, seed=30 + i)
        for i in range(n_good):
            write_image(root / c / "test_public" / "good" / f"{i:03d}_regular.png", w, h, seed=60 + i)
        for i in range(n_bad):
            box = (6 + 3 * i, 5, 18 + 3 * i, 15)
            write_defect_image(root / c / "test_public" / "bad" / f"{i:03d}_regular.png", w, h, [box], seed=90 + i)
            write_mask(root / c / "test_public" / "ground_truth" / "bad" / f"{i:03d}_regular_mask.png", w, h, box)
        for split, light in (("test_private", "regular"), ("test_private_mixed", "mixed")):
            for i in range(n_private):
                write_image(root / c / split / f"{i:03d}_{light}.png", w, h, seed=120 + i)
    return root


MVTEC_LOCO_CATEGORIES = ("breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors")
# defects_config.json of the generated LOCO: two logical types (an absolute saturation threshold
# smaller than the defect, and a relative one) and one structural type (relative 1.0: plain PRO).
LOCO_DEFECTS = [
    {"defect_name": "missing_part", "pixel_value": 251, "saturation_threshold": 30, "relative_saturation": False},
    {"defect_name": "extra_part", "pixel_value": 252, "saturation_threshold": 0.5, "relative_saturation": True},
    {"defect_name": "scratch", "pixel_value": 253, "saturation_threshold": 1.0, "relative_saturation": True},
]


def make_mvtec_loco(root: str | Path, categories: Sequence[str] = MVTEC_LOCO_CATEGORIES, n_train: int = 3,
                    n_validation: int = 1, n_good: int = 2, n_per_type: int = 2,
                    size: tuple[int, int] = (48, 40)) -> Path:
    """MVTec LOCO AD layout; each defective image's ground truth is a folder of one PNG per defect.

    Logical image 0 has two defects (two PNGs: values 251 and 252, overlapping); the others one.
    """
    import json

    root = Path(root)
    w, h = size
    for c in categories:
        cat = root / c
        for i in range(n_train):
            write_image(cat / "train" / "good" / f"{i:03d}.png", w, h, seed=i)
        for i in range(n_validation):
            write_image(cat / "validation" / "good" / f"{i:03d}.png", w, h, seed=30 + i)
        for i in range(n_good):
            write_image(cat / "test" / "good" / f"{i:03d}.png", w, h, seed=60 + i)
        for kind, defects in (("logical_anomalies", [(4, 4, 20, 14, 251), (14, 10, 30, 22, 252)]),
                              ("structural_anomalies", [(24, 20, 34, 30, 253)])):
            for i in range(n_per_type):
                channels = defects if i == 0 else defects[:1]
                write_defect_image(cat / "test" / kind / f"{i:03d}.png", w, h, [d[:4] for d in channels],
                                   seed=90 + i)
                for k, box in enumerate(channels):
                    write_valued_mask(cat / "ground_truth" / kind / f"{i:03d}" / f"{k:03d}.png", w, h, [box])
        (cat / "defects_config.json").write_text(json.dumps(LOCO_DEFECTS, indent=2))
        (cat / "license.txt").write_text("generated test data\n")
        (cat / "readme.txt").write_text("generated test data\n")
    return root


# What each archive is called when published, how it is packed, and how its tree is built.
BENCHMARK_ARCHIVES = {
    "visa": ("VisA_20220922.tar", "w", make_visa),
    "mvtec_ad2": ("mvtec_ad_2.tar.gz", "w:gz", make_mvtec_ad2),
    "mvtec_loco": ("mvtec_loco_anomaly_detection.tar.xz", "w:xz", make_mvtec_loco),
}


def benchmark_archive(dataset: str, workdir: str | Path) -> tuple[str, bytes]:
    """(published file name, bytes) of a generated ``visa``, ``mvtec_ad2`` or ``mvtec_loco`` archive.

    Like the published ones, every archive has its categories at its top.
    """
    filename, mode, make = BENCHMARK_ARCHIVES[dataset]
    tree = make(Path(workdir) / f"{dataset}-tree")
    return filename, make_tar(Path(workdir) / filename, tree_files(tree), mode=mode).read_bytes()


# The defect probabilities as the package's labels.csv spells them (repr of thirds).
ELPV_PROBABILITIES = ("0.0", "0.3333333333333333", "0.6666666666666666", "1.0")
# (type, thirds) → number of cells: every level of both types, a few of each.
ELPV_COUNTS = {("mono", 0): 10, ("mono", 1): 2, ("mono", 2): 1, ("mono", 3): 4,
               ("poly", 0): 6, ("poly", 1): 1, ("poly", 2): 2, ("poly", 3): 3}


def make_elpv(data: str | Path, counts: Mapping[tuple[str, int], int] = ELPV_COUNTS, size: int = 32) -> Path:
    """ELPV's data folder: ``labels.csv`` (no header; path, probability, type, whitespace-separated,
    padded like the real file) and ``images/cellNNNN.png`` (8-bit grey), cells of all kinds interleaved.

    Returns ``data``. No ELPV image is used: the cells are generated noise with a bright
    blob on the "defective" ones.
    """
    data = Path(data)
    keys = [key for key, n in counts.items() for _ in range(n)]
    # shuffled (seeded): the real list is not sorted by type or label
    order = [keys[i] for i in np.random.default_rng(0).permutation(len(keys))]
    lines = []
    for i, (kind, thirds) in enumerate(order, start=1):
        name = f"images/cell{i:04d}.png"
        rng = np.random.default_rng(i)
        cell = rng.integers(90, 150, (size, size), dtype=np.uint8)
        if thirds:
            cell[size // 4: size // 2, size // 4: size // 2] = 60 * thirds
        (data / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(cell, mode="L").save(data / name)
        lines.append(f"{name}  {ELPV_PROBABILITIES[thirds]:<20}{kind}")
    (data / "labels.csv").write_text("\n".join(lines) + "\n")
    return data


def make_elpv_package(site: str | Path, **kwargs) -> Path:
    """A stand-in ``elpv_dataset`` package under ``site`` (prepend ``site`` to sys.path to use it)."""
    pkg = Path(site) / "elpv_dataset"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    make_elpv(pkg / "data", **kwargs)
    return Path(site)


# --------------------------------------------------------------------------- bad files
def plant_zero_byte(path: str | Path) -> Path:
    path = Path(path)
    path.write_bytes(b"")
    return path


def plant_text_as_image(path: str | Path) -> Path:
    path = Path(path)
    path.write_text("this is not an image\n")
    return path


def plant_truncated(path: str | Path, keep: float = 0.5) -> Path:
    """Cut an existing image file: the header stays valid, decoding fails."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: max(64, int(len(data) * keep))])
    return path


def plant_wrong_size_mask(mask_path: str | Path, width: int, height: int) -> Path:
    return write_mask(mask_path, width, height)


def png_with_header_size(path: str | Path, width: int, height: int) -> Path:
    """A tiny PNG whose header claims width×height (for the decompression-bomb guard)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    path = Path(path)
    path.write_bytes(body)
    return path


# --------------------------------------------------------------------------- archives
def make_tar(dest: str | Path, files: Mapping[str, bytes], mode: str = "w:gz",
             symlinks: Mapping[str, str] | None = None, hardlinks: Mapping[str, str] | None = None) -> Path:
    """Tar with regular ``files`` (name → bytes) and optional links (name → target); names are not sanitised."""
    dest = Path(dest)
    with tarfile.open(dest, mode) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
        for kind, links in ((tarfile.SYMTYPE, symlinks or {}), (tarfile.LNKTYPE, hardlinks or {})):
            for name, target in links.items():
                info = tarfile.TarInfo(name)
                info.type = kind
                info.linkname = target
                tar.addfile(info)
    return dest


def make_zip(dest: str | Path, files: Mapping[str, bytes], symlinks: Mapping[str, str] | None = None) -> Path:
    """Zip with regular ``files``; ``symlinks`` are stored with the Unix symlink mode bit."""
    dest = Path(dest)
    with zipfile.ZipFile(dest, "w") as zf:
        for name, data in files.items():
            zf.writestr(zipfile.ZipInfo(name), data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, target)
    return dest


def tree_files(src: str | Path, prefix: str = "") -> dict[str, bytes]:
    """Every file under ``src`` as {prefix + relative posix path: bytes} (to archive a layout)."""
    src = Path(src)
    return {prefix + p.relative_to(src).as_posix(): p.read_bytes() for p in sorted(src.rglob("*")) if p.is_file()}


def train_smoke_key(base: str | Path, run_id: str = "r1", register=None):
    """Generate the smoke data under ``base/data`` and train its obj_disc key at 32 px into ``base/store``.

    Returns (store, task, result of ``engine.train_evaluate``): what engine and store
    tests inspect, rewrite or damage. ``register``: the ``RegistryOptions`` of a run that registers.
    """
    from mrkd_core.engine import train_evaluate
    from mrkd_core.specs import load_spec, prepare_data
    from mrkd_core.storage import ArtifactStore

    base = Path(base)
    spec = load_spec("smoke", [Path(__file__).resolve().parents[1] / "flows" / "specs"]).narrow(
        categories=["obj_disc"], image_size=32)
    prepare_data(spec, str(base / "data"))
    task = spec.tasks(str(base / "data"))[0]
    store = ArtifactStore(base / "store")
    return store, task, train_evaluate(task, store, run_id, register=register)


# --------------------------------------------------------------------------- result tables
def table_row(schema, **values):
    """A row with every column of a pyarrow ``schema``: a plausible value per type, ``values`` on top."""
    import pyarrow as pa

    from mrkd_core.results import utcnow

    def default(t):
        if pa.types.is_boolean(t):
            return False
        if pa.types.is_integer(t):
            return 1
        if pa.types.is_floating(t):
            return 0.5
        if pa.types.is_timestamp(t):
            return utcnow()
        return "x"

    row = {f.name: default(f.type) for f in schema}
    row.update(values)
    return row


def write_table_rows(store, table, dataset: str, run_id: str, name: str = "cat-mrkd-0123456789abcdef.parquet",
                     n: int = 1, **values) -> str:
    """``n`` rows of ``table`` (a ``PartitionedTable``) in one partition, from a run dir that has a manifest."""
    source = f"runs/{run_id}/{dataset}/cat/0123456789abcdef"
    store.write_json(f"{source}/manifest.json", {"format": "mrkd-manifest/1"})
    rows = [table_row(table.schema, dataset=dataset, run_id=run_id, **values) for _ in range(n)]
    return table.write(store, rows, name, source)


def write_hive_rows(store, table, dataset: str, run_id: str, name: str = "old-mrkd-0123456789abcdef.parquet",
                    **values) -> str:
    """One row as versions before the plain layout wrote it: ``<col>=<value>`` folders, partition columns
    only in the path (what tests/fixtures/store-15298c0 holds for metrics and scores)."""
    import pyarrow.parquet as pq

    from mrkd_core.partitioned import SOURCE_KEY
    from mrkd_core.results import to_table

    source = f"runs/{run_id}/{dataset}/cat/0123456789abcdef"
    store.write_json(f"{source}/manifest.json", {"format": "mrkd-manifest/1"})
    t = to_table([table_row(table.schema, dataset=dataset, run_id=run_id, **values)], table.schema)
    t = t.drop_columns(list(table.partition_by)).replace_schema_metadata({SOURCE_KEY: source.encode()})
    buf = io.BytesIO()
    pq.write_table(t, buf)
    path = f"{table.partition_dir({'dataset': dataset, 'run_id': run_id}, hive=True)}/{name}"
    store.write_bytes(path, buf.getvalue())
    return path
