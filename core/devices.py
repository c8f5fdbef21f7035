"""Device and precision choice, shared by the CLI and the node layer.

Inside ComfyUI the node layer passes ComfyUI's own torch device; elsewhere we
pick the best available accelerator the way ComfyUI does (CUDA, then XPU,
then MPS, then CPU).
"""
from __future__ import annotations

import ctypes
import functools
import os
import sys

import torch

from .errors import SettingsError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


ACCELERATORS = ("cuda", "xpu", "mps")  # in the order ComfyUI prefers them


def _accelerator_count(device_type: str) -> int:
    """How many devices of one accelerator type this torch can use."""
    if device_type == "mps":
        return 1 if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available() else 0
    backend = getattr(torch, device_type, None)
    return backend.device_count() if backend is not None and backend.is_available() else 0


def device_choices() -> list[str]:
    """Every device this torch can train on, as widget choices: each accelerator by index, then the CPU."""
    names = [f"{kind}:{index}" if kind != "mps" else "mps" for kind in ACCELERATORS for index in range(_accelerator_count(kind))]
    return [*dict.fromkeys(names), "cpu"]


def default_device() -> torch.device:
    return next((torch.device(kind) for kind in ACCELERATORS if _accelerator_count(kind)), torch.device("cpu"))


def usable_device(spec: str | torch.device | None) -> torch.device:
    """``spec`` as a torch device, checked to exist here; the best available device when None."""
    if spec is None:
        return default_device()
    try:
        device = torch.device(spec)
    except (RuntimeError, TypeError):
        raise SettingsError(f"Unknown device {str(spec)!r}; use cpu, cuda, cuda:N, xpu or mps.") from None
    if device.type not in ACCELERATORS:
        return device  # the CPU, or e.g. DirectML's privateuseone, which ComfyUI can hand us: its own backend checks it
    count = _accelerator_count(device.type)
    if count == 0:
        raise SettingsError(
            f"Device {device} is not available: this torch ({torch.__version__}) finds no {device.type} device; "
            f"use {default_device().type} instead."
        )
    if device.index is not None and device.index >= count:
        raise SettingsError(f"Device {device} does not exist: {count} {device.type} device(s) found, {device.type}:0 to {device.type}:{count - 1}.")
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """Map ``auto`` to a concrete precision for this device.

    On GPUs bf16 where supported, else fp16. On the CPU bf16 only where the
    CPU has native bf16 matrix instructions; elsewhere bf16 is slower than fp32.
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
    return "bf16" if cpu_has_native_bf16() else "fp32"


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 matrix instructions (AVX512-BF16 or AMX), where bf16 autocast is about 2x faster.

    ``LORA_TRAINER_CPU_BF16=0`` or ``1`` overrides the detection (the tests pin it to 0 so that
    ``auto`` means the same on every CI machine).
    """
    override = os.environ.get("LORA_TRAINER_CPU_BF16")
    if override in ("0", "1"):
        return override == "1"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@functools.lru_cache(maxsize=1)
def keep_freed_memory_for_reuse() -> bool:
    """Stop glibc from handing large freed blocks back to the OS between training steps.

    By default glibc serves allocations over 128 KiB-32 MiB with mmap and
    unmaps them on free, so every step page-faults its activations in again
    (15-20 % of a CPU step). Raising the mmap and trim thresholds keeps freed
    memory in the heap for the next step. Returns whether it was applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # musl or another libc: leave it alone
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    largest_mmap_threshold = 32 * 1024 * 1024  # glibc refuses larger values on 64-bit
    applied = libc.mallopt(m_mmap_threshold, largest_mmap_threshold) == 1
    applied &= libc.mallopt(m_trim_threshold, 1 << 30) == 1
    return bool(applied)


def trim_freed_memory() -> bool:
    """Hand the heap's free pages back to the OS (glibc's malloc_trim) after a phase that freed a lot: the
    frozen models' CPU copies after caching, the per-layer temporaries of a DoRA set-up or export (an SDXL
    DoRA kept 4 GiB of freed fp32 temporaries otherwise). Returns whether anything was released."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):  # musl or another libc
        return False


def seed_device_generator(device: torch.device, seed: int) -> None:
    """Seed the default generators that random ops on ``device`` (and the CPU) draw from.

    ``torch.manual_seed`` also queues a lazy seeding for every backend not yet
    started (CUDA, XPU, MTIA on a CPU run), each capturing a formatted stack
    trace: 110 us a call against 2 us here, paid on every training step.
    """
    torch.default_generator.manual_seed(seed)
    if device.type in ("cuda", "xpu"):
        backend = getattr(torch, device.type)
        with backend.device(device):
            backend.manual_seed(seed)
    elif device.type == "mps":
        torch.mps.manual_seed(seed)
    elif device.type != "cpu":
        torch.manual_seed(seed)  # another backend (e.g. DirectML's privateuseone): torch knows how to seed it


def autocast_for(device: torch.device, dtype: torch.dtype):
    """Mixed precision in ``dtype`` on ``device``; nothing for fp32."""
    from contextlib import nullcontext

    return nullcontext() if dtype == torch.float32 else torch.autocast(device_type=device.type, dtype=dtype)


def torch_dtype(precision: str) -> torch.dtype:
    return _DTYPES[precision]


def accelerator_memory(device: torch.device | str | None) -> int | None:
    """Total memory of a CUDA or XPU device in bytes; None for the CPU, MPS (shared memory) and the unknown."""
    if device is None:
        return None
    device = torch.device(device)
    backend = getattr(torch, device.type, None) if device.type in ("cuda", "xpu") else None
    if backend is None or not backend.is_available():
        return None
    return int(backend.get_device_properties(device).total_memory)
