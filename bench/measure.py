"""Measurements shared by both trainers' worker processes."""
from __future__ import annotations

import statistics


def peak_memory_bytes(device_type: str) -> int | None:
    """Peak resident set (CPU) or peak allocated accelerator memory, in bytes."""
    if device_type == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def steady_seconds(step_seconds: list[float], warmup: int) -> float | None:
    """Median step time after the first ``warmup`` steps (first steps pay one-off allocation costs)."""
    steady = step_seconds[warmup:] or step_seconds
    return statistics.median(steady) if steady else None
