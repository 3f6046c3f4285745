"""Device and numeric-precision choices, in one place so that no module hard-codes `.cuda()`."""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from mrkd_core.errors import DeviceError

if TYPE_CHECKING:  # annotations only: the model package must not depend on this module at import
    from mrkd_core.config import MRKDConfig
    from mrkd_core.model import MRKD


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available else CPU; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"device '{name}' was requested but no CUDA GPU is available here; use --device cpu or auto"
            )
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise DeviceError(f"unknown device '{name}'; use auto, cpu or cuda")


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast on CUDA when asked; CPU always runs fp32 (bf16 on CPU is slower and changes results)."""
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# Smallest image size from which NHWC (channels_last) beats NCHW for MRKD training on
# CPU with oneDNN (0-8 % faster at 128 and 256 px); below it the late-stage maps are
# tiny and NHWC is slower (WRN50 at 64 px: 0.3-0.9x of NCHW over three runs). Measured
# with bench/bench_train.py, docs/performance.md.
CPU_CHANNELS_LAST_MIN_SIZE = 128


def use_channels_last(memory_format: str, device: torch.device, image_size: int) -> bool:
    """Whether a run uses NHWC tensors: forced by ``memory_format``, else measured per device.

    On CUDA, NHWC is the layout cuDNN's tensor-core convolutions use. The layout changes
    speed only: results agree to float rounding (tests/core/test_perf_equivalence.py).
    """
    if memory_format != "auto":
        return memory_format == "channels_last"
    if device.type == "cuda":
        return True
    return device.type == "cpu" and image_size >= CPU_CHANNELS_LAST_MIN_SIZE


def place_model(model: "MRKD", cfg: "MRKDConfig", device: torch.device) -> "MRKD":
    """Move an MRKD model to ``device`` in the layout ``use_channels_last`` picks (in place; returned).

    The one place where a model meets its device, so training, evaluation, prediction
    and benchmarks all run the layout the config asks for.
    """
    channels_last = use_channels_last(cfg.memory_format, device, cfg.image_size)
    model = model.to(device=device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    model.channels_last = channels_last
    return model


# glibc mallopt parameters (malloc.h) and their defaults.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536
_heap_lock = threading.Lock()
_heap_users = [0]  # trainings inside cpu_heap_reuse in this process (the setting is per process)


def _glibc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has mallopt's semantics below
        return libc
    except (OSError, AttributeError):
        return None


@contextlib.contextmanager
def cpu_heap_reuse(device: torch.device) -> Iterator[bool]:
    """While a CPU training runs, keep freed tensor memory in the heap for the next step.

    glibc serves every allocation above its mmap threshold (at most 32 MB) with a fresh
    ``mmap`` and unmaps it on free, so each training step of WRN50 at 256 px page-faults
    and zeroes its activations anew: ~3 M page faults and ~10 s of system time per
    batch of 16 here. With large blocks taken from the heap (``M_MMAP_MAX=0``) and the
    heap never trimmed during the run, step n+1 reuses the pages of step n once the heap has
    grown to hold a step's blocks wherever its small allocations fell (a few steps: up to 6 in
    tests/core/test_perf_equivalence.py's probe, nothing given back between steps): ~13 % faster
    at that size (docs/performance.md), identical results. Resident memory settles after
    the first steps at the level glibc's default reaches (WRN50 128 px batch 16: 3.8 GB
    from step 2 on, over 8 steps).

    The setting is per process, so it is reference-counted across concurrent trainings;
    when the last one ends the glibc defaults come back and the heap is trimmed, so the
    process (a Ray worker that lives on) gives the memory back. No-op on CUDA and
    outside glibc. Yields whether it is active.
    """
    libc = _glibc() if device.type == "cpu" else None
    if libc is None:
        yield False
        return
    with _heap_lock:
        if _heap_users[0] == 0:
            libc.mallopt(_M_MMAP_MAX, 0)
            libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(2**31 - 1))
        _heap_users[0] += 1
    try:
        yield True
    finally:
        with _heap_lock:
            _heap_users[0] -= 1
            if _heap_users[0] == 0:
                libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)
