"""Seconds per phase of a run (caching, data, forward, backward, optimizer, ...)."""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch


class PhaseTimer:
    """Adds each timed block's seconds to its phase, less the time of phases timed inside it (each second counts once)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = {}
        self._nested: list[float] = []

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        self._nested.append(0.0)
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            elapsed = time.perf_counter() - start
            self.seconds[phase] = self.seconds.get(phase, 0.0) + elapsed - self._nested.pop()
            if self._nested:
                self._nested[-1] += elapsed
