"""Device and numeric-precision choices, in one place so that no module hard-codes `.cuda()`."""

from __future__ import annotations

import contextlib

import torch

from mrkd_core.errors import DeviceError


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
