"""Datasets: the catalog, loaders, image I/O, downloads, validation and synthetic data.

``get_dataset(name)`` returns a ``DatasetLayout`` (mvtec, btad, mtd, folder). Importing the
package catalogues every dataset module in it (see ``catalog.discover``). The torch
datasets are imported lazily so that listing samples never pulls in torch.
"""

from __future__ import annotations

from typing import Any

from mrkd_core.data.base import DatasetLayout, Problem, Sample
from mrkd_core.data.catalog import DATASETS, catalogued, discover, get_dataset
from mrkd_core.data.io import load_image, load_mask

discover()

__all__ = [
    "DATASETS",
    "DatasetLayout",
    "Problem",
    "Sample",
    "TestDataset",
    "TrainImages",
    "get_dataset",
    "load_image",
    "load_mask",
    "catalogued",
]


def __getattr__(name: str) -> Any:
    if name in ("TestDataset", "TrainImages"):
        from mrkd_core.data import torch_datasets

        return getattr(torch_datasets, name)
    raise AttributeError(f"module 'mrkd_core.data' has no attribute {name!r}")
