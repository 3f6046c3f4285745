"""PyTorch views of a list of ``Sample`` records.

They open files lazily in ``__getitem__`` so that DataLoader workers share the decoding
work and a Ray task ships only paths. Bad files raise ``DataError`` naming the file.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mrkd_core.data.base import Sample
from mrkd_core.data.io import load_image, load_pair


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 H×W×3 → float32 3×H×W, scaled to [0, 1] then standardised (ImageNet stats, Sec. 4.1)."""
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    m = torch.as_tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(3, 1, 1)
    return t.sub_(m).div_(s)


class TestDataset(Dataset):
    """Test images with their masks (all zeros for defect-free images), ready for the model.

    Item: ``{"image": float 3×S×S (normalised), "mask": float 1×S×S in {0,1}, "label": int,
    "defect_type": str, "path": str, "category": str}``.
    """

    __test__ = False  # not a pytest test class despite its name

    def __init__(self, samples: Sequence[Sample], image_size: int,
                 mean: Sequence[float], std: Sequence[float]):
        self.samples = list(samples)
        self.image_size = int(image_size)
        self.mean = tuple(float(x) for x in mean)
        self.std = tuple(float(x) for x in std)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> dict:
        s = self.samples[idx]
        image, mask = load_pair(s.path, s.mask_path, self.image_size)
        return {
            "image": normalize(image, self.mean, self.std),
            "mask": torch.from_numpy(mask).float().unsqueeze(0),
            "label": int(s.label),
            "defect_type": s.defect_type,
            "path": s.path,
            "category": s.category,
        }


class TrainImages(Dataset):
    """Defect-free training images as uint8 H×W×3 arrays; ILM and normalisation happen on top."""

    def __init__(self, samples: Sequence[Sample], image_size: int):
        self.samples = list(samples)
        self.image_size = int(image_size)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int) -> np.ndarray:
        return load_image(self.samples[idx].path, self.image_size)
