"""Aspect-ratio buckets: train each image near its own shape instead of a square crop.

The grid holds every (width, height) in multiples of ``step`` whose area is at most
``max_area`` (the training resolution squared by default), from half to twice the
square side, both orientations. An image goes to the bucket whose aspect ratio is
closest to its own (ties: the larger bucket); it is resized to cover the bucket and
cropped to it. With ``no_upscale`` an image that would have to grow gets a bucket of its
own, its size rounded down to the step, so no pixel is invented.

Batches are drawn from one bucket at a time (one tensor shape per batch); the epoch's
batch order and each bucket's image order come from seeded generators, so the same
seed gives the same batches and a resumed run sees the ones it would have seen.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable, Sequence

import torch

BUCKET_STEP = 64  # SD1.x's UNet downsamples 8x (VAE) then 8x (3 stride-2 levels): sides must be multiples of 64


def round_down(value: float, step: int) -> int:
    return int(value // step) * step


def bucket_grid(max_area: int, step: int = BUCKET_STEP) -> list[tuple[int, int]]:
    """Every (width, height), multiples of ``step``, area <= max_area, sides between half and twice the square side."""
    side = math.sqrt(max_area)
    min_side = max(step, round_down(side / 2, step))
    max_side = max(min_side, round_down(max_area / min_side, step))
    buckets = set()
    for width in range(min_side, max_side + 1, step):
        height = min(max_side, max(min_side, round_down(max_area / width, step)))
        if width * height <= max_area:
            buckets.add((width, height))
            buckets.add((height, width))
    return sorted(buckets)


def nearest_bucket(size: tuple[int, int], buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is closest to the image's in log space (ties: larger area)."""
    width, height = size
    ratio = math.log(width / height)
    return min(buckets, key=lambda b: (round(abs(math.log(b[0] / b[1]) - ratio), 9), -b[0] * b[1]))


def assign_bucket(size: tuple[int, int], buckets: Sequence[tuple[int, int]], no_upscale: bool = False, step: int = BUCKET_STEP) -> tuple[int, int]:
    """The bucket one image trains at; never larger than the image on either side when ``no_upscale``."""
    width, height = size
    bucket = nearest_bucket(size, buckets)
    if not no_upscale or cover_scale(size, bucket) <= 1:
        return bucket
    max_area = max(b[0] * b[1] for b in buckets)
    scale = min(1.0, math.sqrt(max_area / (width * height)))
    # Images under one step on a side cannot shrink further: the step is the floor (a small upscale).
    return (max(step, round_down(width * scale, step)), max(step, round_down(height * scale, step)))


def cover_scale(size: tuple[int, int], bucket: tuple[int, int]) -> float:
    """The factor that makes the image cover the bucket (then the excess is cropped)."""
    return max(bucket[0] / size[0], bucket[1] / size[1])


def epoch_batches(
    pool_buckets: Sequence[tuple[int, int]], batch_size: int, make_generator: Callable[..., torch.Generator]
) -> list[list[int]]:
    """One epoch's batches as lists of pool positions, every batch from one bucket.

    ``make_generator(*parts)`` gives a seeded generator (the trainer's ``generator`` with
    the seed and epoch bound). A bucket's last partial batch is filled from the start of
    the same bucket's shuffled order, so every batch is full and one shape.
    """
    by_bucket: dict[tuple[int, int], list[int]] = defaultdict(list)
    for position, bucket in enumerate(pool_buckets):
        by_bucket[bucket].append(position)
    batches: list[list[int]] = []
    for number, bucket in enumerate(sorted(by_bucket)):
        positions = by_bucket[bucket]
        order = [positions[i] for i in torch.randperm(len(positions), generator=make_generator(number)).tolist()]
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            while len(batch) < batch_size:
                batch += order[: batch_size - len(batch)]
            batches.append(batch)
    shuffle = torch.randperm(len(batches), generator=make_generator(len(by_bucket))).tolist()
    return [batches[i] for i in shuffle]


def batches_per_epoch(pool_buckets: Sequence[tuple[int, int]], batch_size: int) -> int:
    counts: dict[tuple[int, int], int] = defaultdict(int)
    for bucket in pool_buckets:
        counts[bucket] += 1
    return sum(math.ceil(count / batch_size) for count in counts.values())


def describe(bucket_counts: dict[tuple[int, int], int]) -> str:
    return ", ".join(f"{w}x{h}: {n}" for (w, h), n in sorted(bucket_counts.items(), key=lambda kv: -kv[1]))
