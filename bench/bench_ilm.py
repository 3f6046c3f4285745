"""Throughput of ILM synthesis (mrkd_core.ilm) in one process, one thread of OpenCV.

    .venv/bin/python bench/bench_ilm.py [--n 200] [--sizes 128 256]

Prints images/s and ms/image for ``swap`` and ``poisson`` on two kinds of image:
a texture (carpet preset: patches anywhere) and an object (a grey disc on white with
the bottle preset's rule adapted to a white background, so the object mask, the
placement retries and the masked paste are all timed), and a blank white image under that
rule, where every placement is refused: ILM gives up after ``max_tries`` draws per patch
(tests/core/test_ilm.py::test_all_background_gives_up_quietly asserts the bounded search; its
time is this row, once held by that test under 1 s per image). The reference MRKD code takes
5-11 ms per 256 px image (docs/ilm.md); the data loader runs synthesis in workers, so
anything of that order is invisible next to a training step.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrkd_core.ilm import ILMPreset, get_preset, synthesize  # noqa: E402


def texture_image(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    img = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    img += rng.integers(-10, 11, img.shape, dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def object_image(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    r = size * rng.uniform(0.3, 0.4)
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= r * r
    img = np.full((size, size, 3), 255, np.uint8)
    img[disc] = texture_image(size, seed)[disc] // 2 + 40
    return img


def blank_image(size: int, seed: int) -> np.ndarray:
    """White only: under an object rule no patch can be placed."""
    return np.full((size, size, 3), 255, np.uint8)


def bench(images: list[np.ndarray], preset: ILMPreset, blend: str) -> float:
    """Seconds per image, after one warm-up call."""
    synthesize(images[0], None, preset, np.random.default_rng(0), blend)
    t0 = time.perf_counter()
    for i, img in enumerate(images):
        synthesize(img, None, preset, np.random.default_rng(i), blend)
    return (time.perf_counter() - t0) / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="images per cell (default 200)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    args = parser.parse_args()
    cv2.setNumThreads(1)  # one data-loader worker's share

    on_white = dataclasses.replace(get_preset("bottle"), name="bottle-on-white",
                                   background=255.0, background_threshold=30.0)
    kinds = {"texture (carpet)": (texture_image, get_preset("carpet")), "object (bottle rule)": (object_image, on_white),
             "background (gives up)": (blank_image, on_white)}
    out = sys.stdout
    out.write(f"ILM synthesis, one process, cv2 threads=1, {args.n} images per cell\n\n")
    out.write(f"| {'image':<22} | {'size':>4} | {'blend':<7} | {'images/s':>9} | {'ms/image':>8} |\n")
    out.write(f"|{'-' * 24}|{'-' * 6}|{'-' * 9}|{'-' * 11}|{'-' * 10}|\n")
    for kind, (make, preset) in kinds.items():
        for size in args.sizes:
            images = [make(size, seed) for seed in range(args.n)]
            for blend in ("swap", "poisson"):
                sec = bench(images, preset, blend)
                out.write(f"| {kind:<22} | {size:>4} | {blend:<7} | {1 / sec:>9.0f} | {1e3 * sec:>8.2f} |\n")
                out.flush()


if __name__ == "__main__":
    main()
