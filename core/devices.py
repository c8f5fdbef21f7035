"""Device and precision choice, shared by the CLI and the node layer.

Inside ComfyUI the node layer passes ComfyUI's own torch device; elsewhere we
pick the best available accelerator the way ComfyUI does (CUDA, then XPU,
then MPS, then CPU).
"""
from __future__ import annotations

import torch

from .errors import SettingsError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        return torch.device("xpu")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_precision(precision: str, device: torch.device) -> str:
    """Map ``auto`` to a concrete precision for this device.

    On GPUs bf16 where supported, else fp16. On the CPU fp32: bf16 autocast
    is only faster on CPUs with native bf16 matmul, which we cannot detect
    reliably, so it stays an explicit choice there.
    """
    if precision not in PRECISIONS:
        raise SettingsError(f"Precision must be one of {', '.join(PRECISIONS)}, got {precision!r}.")
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise SettingsError("fp16 training is not supported on the CPU; use fp32 or bf16.")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type in ("xpu", "mps"):
        return "fp16" if device.type == "mps" else "bf16"
    return "fp32"


def torch_dtype(precision: str) -> torch.dtype:
    return _DTYPES[precision]
