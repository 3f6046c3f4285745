"""Datasets: registry, loaders, image I/O, downloads, validation and synthetic data.

``get_dataset(name)`` returns a ``DatasetSpec`` (mvtec, btad, mtd, folder). Importing the
package registers every dataset module in it (see ``registry.discover``). The torch
datasets are imported lazily so that listing samples never pulls in torch.
"""

from __future__ import annotations

from typing import Any

from mrkd_core.data.base import DatasetSpec, Problem, Sample
from mrkd_core.data.io import load_image, load_mask
from mrkd_core.data.registry import DATASETS, discover, get_dataset, register

discover()

__all__ = [
    "DATASETS",
    "DatasetSpec",
    "Problem",
    "Sample",
    "TestDataset",
    "TrainImages",
    "get_dataset",
    "load_image",
    "load_mask",
    "register",
]


def __getattr__(name: str) -> Any:
    if name in ("TestDataset", "TrainImages"):
        from mrkd_core.data import torch_datasets

        return getattr(torch_datasets, name)
    raise AttributeError(f"module 'mrkd_core.data' has no attribute {name!r}")
