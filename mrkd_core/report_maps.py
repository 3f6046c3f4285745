"""The report's qualitative maps (Fig. 7): which test images a run keeps, the file they go in, and reading it.

The engine writes ``maps.npz`` into each evaluated run directory (:func:`maps_npz`); the
report reads it back (:func:`read_maps`) for the heatmap grid of its category. Both sides
of the format live here, so that they change together.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

from mrkd_core.data.io import load_image
from mrkd_core.storage import ArtifactStore

if TYPE_CHECKING:
    from mrkd_core.evaluate import EvalResult

__all__ = ["IMAGE_LABELLED_ORDER", "MAPS_PER_CATEGORY", "image_labelled_order", "maps_npz", "read_maps"]

MAPS_PER_CATEGORY = 6  # test images whose maps are kept for the report's Fig. 7 grid


def maps_npz(ev: EvalResult, image_size: int) -> bytes:
    """``maps.npz`` of a run: the first ``MAPS_PER_CATEGORY - 2`` anomalous and the first 2 normal test
    images of ``ev``, each at ``image_size``, with its mask and map (float32); ``has_masks`` False
    when the masks are zeros standing in for no pixel ground truth."""
    labels = np.array([s["label"] for s in ev.scores])
    order = list(np.flatnonzero(labels == 1)[: MAPS_PER_CATEGORY - 2]) + list(np.flatnonzero(labels == 0)[:2])
    images = np.stack([load_image(ev.scores[i]["path"], image_size) for i in order]) if order else np.zeros((0,))
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        images=images,
        has_masks=np.array(not ev.absent),  # False: the masks are zeros standing in for no ground truth
        masks=ev.masks[order] if order else np.zeros((0,)),
        maps=ev.maps[order].astype(np.float32) if order else np.zeros((0,)),
        paths=np.array([ev.scores[i]["path"] for i in order]),
        labels=labels[order] if order else np.zeros((0,)),
    )
    return buf.getvalue()


def read_maps(store: ArtifactStore, run_directory: str) -> list[tuple[np.ndarray, np.ndarray | None, np.ndarray]]:
    """(image, mask, map) triples kept for the report (Fig. 7); mask None without pixel ground truth.

    Order: anomalous test images first, then normal ones (as the engine keeps them). Without
    pixel ground truth a figure has no mask to show where the defect is, so there the
    first three are two anomalous images and then a normal one (``IMAGE_LABELLED_ORDER``):
    the heatmaps, on one colour scale, show the contrast. FileNotFoundError without
    ``maps.npz``. Files written before ``has_masks`` existed had masks.
    """
    with np.load(io.BytesIO(store.read_bytes(f"{run_directory}/maps.npz"))) as z:
        if z["images"].ndim != 4:
            return []
        has_masks = bool(z["has_masks"]) if "has_masks" in z.files else True
        order = list(range(z["images"].shape[0]))
        if not has_masks and "labels" in z.files:
            order = image_labelled_order(z["labels"].astype(int).tolist())
        return [(z["images"][i], z["masks"][i] if has_masks else None, z["maps"][i]) for i in order]


#: Labels of the first rows of an image-labelled figure (1 = anomalous): see ``read_maps``.
IMAGE_LABELLED_ORDER = (1, 1, 0)


def image_labelled_order(labels: list[int]) -> list[int]:
    """Indices of ``labels`` with the first rows following ``IMAGE_LABELLED_ORDER`` where the labels allow."""
    pools = {0: [i for i, lab in enumerate(labels) if lab == 0], 1: [i for i, lab in enumerate(labels) if lab == 1]}
    first = []
    for want in IMAGE_LABELLED_ORDER:
        if pools[want]:
            first.append(pools[want].pop(0))
    return first + [i for i in range(len(labels)) if i not in first]
