"""Which dataset layout a folder holds: ``--dataset auto`` and what ``mrkd data check`` says it recognised.

Decided by the marks each published layout leaves, most specific first, so that a folder
that also passes as a plain MVTec-layout folder is read with its own rules (LOCO's mask
folders, VisA's split file, MVTec AD 2's ``test_public``):

    elpv         labels.csv and images/ at the root
    visa         split_csv/1cls.csv at the root
    mvtec_ad2    a category folder with test_public/
    mvtec_loco   a category folder with defects_config.json or logical_anomalies/
    mtd          MT_Free/Imgs/
    btad         category folders 01/02/03 with train/ok/
    mvtec        every category folder is an MVTec AD category with train/good/
    folder       any other folder with <category>/train/ (image-labelled when no category has ground_truth/)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mrkd_core.data.base import list_dirs, require_root
from mrkd_core.data.btad import BTAD_PRODUCTS
from mrkd_core.data.elpv import LABELS
from mrkd_core.data.mtd import MTD_FREE
from mrkd_core.data.mvtec import MVTEC_CATEGORIES
from mrkd_core.data.mvtec_loco import DEFECTS_CONFIG, LOGICAL
from mrkd_core.data.visa import SPLIT_CSV
from mrkd_core.errors import DataError


@dataclass(frozen=True)
class Recognised:
    """A layout recognised in a folder: the catalogued dataset name and the mark that decided it."""

    name: str
    why: str


def recognise(root: str | os.PathLike[str]) -> Recognised:
    """The layout of ``root`` (see the module docstring); a DataError naming the folder when none fits."""
    path = require_root(root)
    children = list_dirs(path)
    if (path / LABELS).is_file() and (path / "images").is_dir():
        return Recognised("elpv", f"{LABELS} and images/ (ELPV)")
    if (path / SPLIT_CSV).is_file():
        return Recognised("visa", f"{SPLIT_CSV} (VisA's 1-class split)")
    for c in children:
        if (c / "test_public").is_dir():
            return Recognised("mvtec_ad2", f"{c.name}/test_public/ (MVTec AD 2)")
    for c in children:
        if (c / DEFECTS_CONFIG).is_file() or (c / "test" / LOGICAL).is_dir():
            return Recognised("mvtec_loco", f"{c.name}/{DEFECTS_CONFIG} or test/{LOGICAL}/ (MVTec LOCO AD)")
    if (path / MTD_FREE / "Imgs").is_dir():
        return Recognised("mtd", f"{MTD_FREE}/Imgs/ (Magnetic Tile Defects)")
    categories = [c for c in children if (c / "train").is_dir()]
    if categories and all(c.name in BTAD_PRODUCTS and (c / "train" / "ok").is_dir() for c in categories):
        return Recognised("btad", "products 01/02/03 with train/ok/ (BTAD)")
    if categories and all(c.name in MVTEC_CATEGORIES and (c / "train" / "good").is_dir() for c in categories):
        return Recognised("mvtec", "MVTec AD category folders with train/good/")
    if categories:
        if any((c / "ground_truth").is_dir() for c in categories):
            return Recognised("folder", "<category>/train/ folders in MVTec AD layout")
        return Recognised("folder", "<category>/train/ folders in MVTec AD layout without ground_truth/ "
                                    "(image-labelled)")
    raise DataError(f"{path}: no known dataset layout (MVTec AD, VisA, MVTec AD 2, MVTec LOCO AD, BTAD, MTD, ELPV, "
                    "or <category>/train/good folders) — pass the folder that holds the categories, or --dataset")
