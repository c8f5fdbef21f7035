"""Every random draw of a run comes from (seed, step, ...): the same seed gives the same LoRA, and a
resumed run draws exactly what the uninterrupted run would have."""
from __future__ import annotations

import torch


def mix_seed(*parts: int) -> int:
    """Combine integers into one 63-bit seed (splitmix-style), so each (seed, step) draw is independent."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value ^= (int(part) + 0x9E3779B97F4A7C15 + (value << 6) + (value >> 2)) & 0xFFFFFFFFFFFFFFFF
        value = (value * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    return value & 0x7FFFFFFFFFFFFFFF


def generator(*parts: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(mix_seed(*parts))
