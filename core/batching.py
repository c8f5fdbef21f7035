"""Which images each micro-batch holds, at what size, and how each image is cropped.

The order is defined on the global batch from (seed, step): the dataset pool (each
entry once per repeat) is permuted per epoch, or, with aspect-ratio buckets, cut into
one-bucket batches per epoch (``core.buckets``). With several processes the global
micro-batch holds ``batch_size`` images per process and each process trains its slice
(``part``), so N processes of batch b see exactly what one process of batch N·b sees.
Nothing here runs a model.
"""
from __future__ import annotations

import statistics
from typing import Any

import torch

from . import buckets as buckets_lib
from .dataset import ImageCaptionDataset, image_size
from .preprocess import Geometry, prepare_image
from .seeding import generator
from .train_settings import TrainSettings


class BatchIndices(list):
    """Entry indices of one global micro-batch, with the (step, micro) draw it belongs to and this process's ``part``.

    The draw seeds caption augmentation; evaluation passes plain lists, so it always
    sees the stored captions (and all of them).
    """

    draw: tuple[int, int] | None = None
    part: slice = slice(None)


class BatchPlan:
    """The run's data order and image geometry, fixed by the dataset and the settings."""

    def __init__(self, dataset: ImageCaptionDataset, settings: TrainSettings, world_size: int = 1, rank: int = 0):
        self.dataset, self.settings = dataset, settings
        self.world_size, self.rank = world_size, rank
        self.global_batch = settings.batch_size * world_size  # images in one micro-batch over all processes
        self.pool = [index for index, entry in enumerate(dataset.entries) for _ in range(entry.repeats)]
        self._permutations: dict[int, torch.Tensor] = {}
        self._bucket_batch_cache: dict[int, list[list[int]]] = {}
        self._entry_buckets: list[tuple[int, int]] | None = None

    # ------------------------------------------------------------------ sizes

    def bucket_of(self, entry_index: int) -> tuple[int, int]:
        """(width, height) in px the entry trains at: its bucket, or the square resolution."""
        if not self.settings.bucket:
            return (self.settings.resolution, self.settings.resolution)
        if self._entry_buckets is None:
            grid = buckets_lib.bucket_grid(self.settings.bucket_area)
            self._entry_sizes = [image_size(entry) for entry in self.dataset.entries]
            self._entry_buckets = [buckets_lib.assign_bucket(size, grid, self.settings.no_upscale) for size in self._entry_sizes]
            self._batches_per_epoch = buckets_lib.batches_per_epoch([self._entry_buckets[i] for i in self.pool], self.global_batch)
        return self._entry_buckets[entry_index]

    def bucket_counts(self) -> dict[tuple[int, int], int]:
        """Images per bucket (repeats not counted)."""
        counts: dict[tuple[int, int], int] = {}
        for index in range(len(self.dataset)):
            counts[self.bucket_of(index)] = counts.get(self.bucket_of(index), 0) + 1
        return counts

    def prepared_pixels(self, entry_index: int) -> tuple[torch.Tensor, Geometry]:
        """The entry's image resized and (center-)cropped to its training size, in [-1, 1], and where it was cut."""
        width, height = self.bucket_of(entry_index)
        image = self.dataset.entries[entry_index].open_image()
        return prepare_image(image, width, height, self.settings.crop == "center", bool(self.settings.bucket))

    # ------------------------------------------------------------------ order

    def _bucket_batches(self, epoch: int) -> list[list[int]]:
        """The epoch's batches (pool positions), each from one bucket; only the newest epoch is kept."""
        if epoch not in self._bucket_batch_cache:
            pool_buckets = [self.bucket_of(index) for index in self.pool]
            seed = self.settings.seed
            self._bucket_batch_cache = {
                epoch: buckets_lib.epoch_batches(pool_buckets, self.global_batch, lambda *parts: generator(seed, epoch, 7, *parts))
            }
        return self._bucket_batch_cache[epoch]

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._permutations:
            self._permutations = {epoch: torch.randperm(len(self.pool), generator=generator(self.settings.seed, epoch, 7))}
        return self._permutations[epoch]

    def batch_indices(self, step: int, micro: int) -> BatchIndices:
        settings = self.settings
        if settings.bucket:
            number = step * settings.grad_accum + micro
            self.bucket_of(0)  # assigns every bucket once
            per_epoch = self._batches_per_epoch
            indices = BatchIndices(self.pool[p] for p in self._bucket_batches(number // per_epoch)[number % per_epoch])
        else:
            first = (step * settings.grad_accum + micro) * self.global_batch
            positions = range(first, first + self.global_batch)
            indices = BatchIndices(self.pool[int(self._permutation(p // len(self.pool))[p % len(self.pool)])] for p in positions)
        indices.draw = (step, micro)
        indices.part = slice(self.rank * settings.batch_size, (self.rank + 1) * settings.batch_size)
        return indices

    # ------------------------------------------------------------------ metadata

    def dataset_metadata(self) -> dict[str, Any]:
        """kohya's dataset metadata: folders with repeats, tag counts, augmentation and buckets."""
        settings = self.settings
        metadata: dict[str, Any] = {
            "ss_dataset_dirs": self.dataset.dataset_dirs(),
            "ss_tag_frequency": self.dataset.tag_frequency_by_dir(),
            "ss_caption_dropout_rate": f"{settings.caption_dropout:g}",
            "ss_caption_tag_dropout_rate": f"{settings.tag_dropout:g}",
            "ss_shuffle_caption": str(settings.shuffle_tags),
            "ss_keep_tokens": str(settings.keep_tokens),
            "ss_enable_bucket": str(settings.bucket),
        }
        if settings.bucket:
            counts = self.bucket_counts()
            metadata["ss_bucket_no_upscale"] = str(settings.no_upscale)
            metadata["ss_bucket_info"] = {
                "buckets": {str(i): {"resolution": list(b), "count": n} for i, (b, n) in enumerate(sorted(counts.items()))},
                "mean_img_ar_error": statistics.fmean(
                    abs(w / h - b[0] / b[1]) for (w, h), b in zip(self._entry_sizes, self._entry_buckets)
                ),
            }
        return metadata
