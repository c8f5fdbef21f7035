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


class StepPhases:
    """Each step's seconds per phase, from running phase totals read at every step's end.

    Means over a run include the first steps, whose one-off costs (oneDNN primitive creation, first
    allocations) can be several seconds a phase on a full-size model and would skew the split of a
    steady step; the median of each phase over the steady steps does not.
    """

    def __init__(self, totals):
        self._totals = totals  # a callable giving {phase: seconds so far}
        self._snapshots: list[dict[str, float]] = []

    def step_ended(self) -> None:
        self._snapshots.append(dict(self._totals()))

    def steady_medians(self, warmup: int, phases=None) -> dict[str, float]:
        """Median seconds of each phase per step, over the steps that ``steady_seconds`` uses (step 2 on)."""
        deltas = [
            {name: after.get(name, 0.0) - before.get(name, 0.0) for name in set(after) | set(before)}
            for before, after in zip(self._snapshots, self._snapshots[1:])
        ]
        steady = deltas[warmup:] or deltas
        names = phases if phases is not None else sorted({name for delta in steady for name in delta})
        return {name: round(statistics.median(delta.get(name, 0.0) for delta in steady), 4) for name in names} if steady else {}
