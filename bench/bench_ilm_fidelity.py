"""ILM fidelity: our swap patches against a re-statement of NSA's published algorithm.

    .venv/bin/python bench/bench_ilm_fidelity.py [--n 1000] [--size 256]

On real texture photos shipped in scikit-image's wheel (``skimage.data.brick``, ``gravel``,
``grass``: 512×512 grey, random crops of ``--size`` px, 3 equal channels) and with the
default (texture) preset, both generate ``--n`` synthetic images per photo from the same
crops; the table gives, per photo and method, the mean over images of

- changed: the fraction of pixels whose value changed (any channel);
- written: the fraction of pixels a patch was written to (``synthesize``'s mask);
- regions4 / regions8: 4- / 8-connected components of the changed pixels (on a photo a
  pasted patch leaves pixels that happen to be unchanged, which split it into several
  4-connected regions);

and the ratio ours / reference. The reference is
``tests/nsa_reference.py`` (NSA's ``patch_ex`` as the official MRKD code runs it:
``same=True``, ``swap``, no resize, gamma sampler). docs/ilm.md records the figures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrkd_core.ilm import DEFAULT_PRESET, synthesize  # noqa: E402
from tests.nsa_reference import nsa_reference  # noqa: E402

PHOTOS = ("brick", "gravel", "grass")
EIGHT = np.ones((3, 3), dtype=bool)


def crops(photo: str, size: int, n: int, seed: int) -> list[np.ndarray]:
    from skimage import data

    img = getattr(data, photo)()
    grey = img if img.ndim == 2 else img[..., 0]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        y, x = rng.integers(0, grey.shape[0] - size + 1), rng.integers(0, grey.shape[1] - size + 1)
        out.append(np.repeat(grey[y:y + size, x:x + size, None], 3, axis=2).astype(np.uint8))
    return out


KEYS = ("changed", "written", "regions4", "regions8")


def measure(images: list[np.ndarray], method: str, seed: int) -> dict[str, float]:
    values: dict[str, list[float]] = {k: [] for k in KEYS}
    for i, img in enumerate(images):
        rng = np.random.default_rng([seed, i])
        out, mask = (synthesize(img, None, DEFAULT_PRESET, rng, "swap") if method == "ours"
                     else nsa_reference(img, DEFAULT_PRESET, rng))
        diff = (out != img).any(axis=2)
        values["changed"].append(diff.mean())
        values["written"].append(mask.mean())
        values["regions4"].append(ndimage.label(diff)[1])
        values["regions8"].append(ndimage.label(diff, structure=EIGHT)[1])
    out = {k: float(np.mean(v)) for k, v in values.items()}
    out["changed_se"] = float(np.std(values["changed"]) / np.sqrt(len(images)))
    return out


def _line(photo: str, method: str, r: dict[str, float], se: str = "") -> str:
    return (f"{photo:<8} {method:<10} {r['changed']:8.4f} {se:>7} {r['written']:8.4f} "
            f"{r['regions4']:9.2f} {r['regions8']:9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="synthetic images per photo and method (default 1000)")
    parser.add_argument("--size", type=int, default=256, help="crop size in px (default 256)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"default preset {DEFAULT_PRESET.width_bounds_pct}, up to {DEFAULT_PRESET.num_patches} patches; "
          f"{args.n} images per photo and method, {args.size} px crops")
    print(f"{'photo':<8} {'method':<10} {'changed':>8} {'± se':>7} {'written':>8} {'regions4':>9} {'regions8':>9}")
    totals: dict[str, list[dict[str, float]]] = {"ours": [], "reference": []}
    for photo in PHOTOS:
        images = crops(photo, args.size, args.n, args.seed)
        rows = {m: measure(images, m, args.seed + 1) for m in ("ours", "reference")}
        for m, r in rows.items():
            totals[m].append(r)
            print(_line(photo, m, r, f"{r['changed_se']:.4f}"))
        print(_line(photo, "ratio", {k: rows["ours"][k] / rows["reference"][k] for k in KEYS}))
    mean = {m: {k: float(np.mean([r[k] for r in rs])) for k in KEYS} for m, rs in totals.items()}
    for m in ("ours", "reference"):
        print(_line("all", m, mean[m]))
    print(_line("all", "ratio", {k: mean["ours"][k] / mean["reference"][k] for k in KEYS}))

if __name__ == "__main__":
    main()
