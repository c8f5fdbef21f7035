"""What the denoiser trains on, encoded once: image latents and caption conditionings.

Every image goes through the VAE once (both flips when flipping is on: the mirrored
image is encoded, not the latent mirrored); random crops are taken on the cached
latent grid, and each crop's place in the image is kept for SDXL's size conditioning.
Every stored caption goes through the frozen text encoders once; augmented variants
are encoded when first drawn and kept, at most MAX_TEXT_VARIANTS of them. With
caching off (or a text encoder being trained) the same draws are encoded every step.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Callable, Sequence

import torch

from .batching import BatchPlan
from .devices import trim_freed_memory
from .distributed import SINGLE, ProcessGroup
from .families import TextConditioning
from .preprocess import Geometry
from .progress import ProgressCallback, ProgressEvent, StopCheck
from .seeding import generator
from .timing import PhaseTimer

MAX_TEXT_VARIANTS = 256  # augmented-caption conditionings kept for reuse (SD1.x: 236 KB each in fp32)
TEXT_CHUNK = 32

ImageEncoder = Callable[[torch.Tensor, int], torch.Tensor]  # (pixels, draw number) -> latents
TextEncoder = Callable[[Sequence[torch.nn.Module], list[str]], TextConditioning]


class ImageLatents:
    """Latents and crop geometry of every image, and the random flips and crops of each batch."""

    def __init__(self, plan: BatchPlan, encode: ImageEncoder, scale: int, device: torch.device, timer: PhaseTimer):
        self.plan, self.settings = plan, plan.settings
        self.encode, self.scale, self.device, self.timer = encode, scale, device, timer
        self.latents: list[list[torch.Tensor]] = []
        self.geometry: list[Geometry] = []

    @property
    def cached(self) -> bool:
        return self.settings.cache_latents

    def build(self, progress: ProgressCallback, should_stop: StopCheck, group: ProcessGroup = SINGLE) -> None:
        """Encode each image once; with random flip, the mirrored image too. With several processes each encodes
        every N-th image and the latents (small) are gathered, so every image goes through the VAE once in all."""
        total = len(self.plan.dataset)
        encoded: dict[int, tuple[list[torch.Tensor], Geometry]] = {}
        with torch.no_grad(), self.timer("vae_cache"):
            for count, index in enumerate(range(group.rank, total, group.world_size)):
                pixels, geometry = self.plan.prepared_pixels(index)
                pixels = pixels[None]
                variants = [pixels, pixels.flip(-1)] if self.settings.random_flip else [pixels]
                encoded[index] = ([self.encode(v, index * 2 + k)[0] for k, v in enumerate(variants)], geometry)
                progress(ProgressEvent("cache", min(total, (count + 1) * group.world_size), total, message="encoding images"))
                if should_stop():
                    break
            if group.active:
                local = {i: ([latent.cpu() for latent in latents], g) for i, (latents, g) in encoded.items()}
                encoded = {}
                for part in group.gather(local):
                    encoded.update({i: ([latent.to(self.device) for latent in latents], g) for i, (latents, g) in part.items()})
        for index in range(total):
            if index not in encoded:
                break  # stopped early: the run ends before its first step
            self.latents.append(encoded[index][0])
            self.geometry.append(encoded[index][1])

    def _entry(self, index: int, flipped: bool, phase: str | None = "vae") -> tuple[torch.Tensor, Geometry]:
        """A cached latent, or one encoded now (timed as ``phase``: a step's, not the eval's)."""
        if self.cached:
            return self.latents[index][1 if flipped else 0], self.geometry[index]
        with torch.no_grad():
            pixels, geometry = self.plan.prepared_pixels(index)
            pixels = pixels[None]
            with self.timer(phase) if phase else nullcontext():
                return self.encode(pixels.flip(-1) if flipped else pixels, index * 2 + int(flipped))[0], geometry

    def batch(self, indices: Sequence[int], rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(latents, size ids) of this process's part of one global micro-batch: flips and crops are drawn from
        ``rng`` for the whole global batch, in order, so every process draws what one process would."""
        flips = torch.rand(len(indices), generator=rng) < 0.5
        mine = range(len(indices))[getattr(indices, "part", slice(None))]
        latents, sizes = [], []
        for position, (index, flip) in enumerate(zip(indices, flips.tolist())):
            width, height = self.plan.bucket_of(index)
            latent_height, latent_width = height // self.scale, width // self.scale
            use_flip = flip and self.settings.random_flip
            latent, geometry = self._entry(index, use_flip) if position in mine or not self.cached else self._cached(index, use_flip)
            # Random crops happen on the latent grid (8 px steps) so the cached latent stays valid.
            full_height, full_width = latent.shape[-2:]
            top = int(torch.randint(0, full_height - latent_height + 1, (1,), generator=rng))
            left = int(torch.randint(0, full_width - latent_width + 1, (1,), generator=rng))
            if position in mine:
                latents.append(latent[:, top:top + latent_height, left:left + latent_width])
                sizes.append(geometry.size_ids(top, left, (width, height), use_flip, self.scale))
        return torch.stack(latents).to(self.device), torch.tensor(sizes, dtype=torch.float32)

    def _cached(self, index: int, flipped: bool) -> tuple[torch.Tensor, Geometry]:
        return self.latents[index][1 if flipped else 0], self.geometry[index]

    def eval_item(self, index: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The unflipped latent's top-left ``size`` x ``size`` crop (latent units) and its size ids: fixed across runs."""
        latent, geometry = self._entry(index, False, phase=None)
        crop = latent[:, :size, :size]
        target = (crop.shape[-1] * self.scale, crop.shape[-2] * self.scale)
        return crop[None].to(self.device), torch.tensor([geometry.size_ids(0, 0, target, False, self.scale)], dtype=torch.float32)

    def clear(self) -> None:
        self.latents, self.geometry = [], []


class CaptionConditioning:
    """The text conditioning of each batch's captions (augmented per draw), from the cache where it is exact."""

    def __init__(self, plan: BatchPlan, encode: TextEncoder, device: torch.device, timer: PhaseTimer, trains_text: bool):
        self.plan, self.settings = plan, plan.settings
        self.encode, self.device, self.timer, self.trains_text = encode, device, timer, trains_text
        self.cache: dict[str, dict[str, torch.Tensor]] = {}
        self._variants: list[str] = []

    @property
    def cached(self) -> bool:
        return self.settings.cache_text and not self.trains_text

    def build(self, encoders: Sequence[torch.nn.Module], group: ProcessGroup = SINGLE) -> None:
        """Encode every stored caption once (and the empty one when captions can drop out); with several
        processes each encodes every N-th caption and the conditionings are gathered."""
        captions = {entry.caption for entry in self.plan.dataset.entries}
        if self.settings.caption_dropout > 0:
            captions.add("")
        mine = sorted(captions)[group.rank::group.world_size]
        self.cache, self._variants = {}, []
        with torch.no_grad(), self.timer("text_cache"):
            for start in range(0, len(mine), TEXT_CHUNK):
                self._store(mine[start:start + TEXT_CHUNK], encoders)
            if group.active:
                shared = group.gather({c: {k: v.cpu() for k, v in parts.items()} for c, parts in self.cache.items()})
                self.cache = {c: {k: v.to(self.device) for k, v in parts.items()} for part in shared for c, parts in part.items()}

    def _store(self, captions: list[str], encoders) -> None:
        encoded = self.encode(encoders, captions)
        for row, caption in enumerate(captions):
            self.cache[caption] = {key: value[row].float() for key, value in encoded.items()}

    def captions(self, indices: Sequence[int]) -> list[str]:
        """The captions of a batch as this draw sees them: augmented when it is a training draw."""
        captions = [self.plan.dataset.entries[i].caption for i in indices]
        augmentation = self.settings.caption_augmentation
        draw = getattr(indices, "draw", None)
        if draw is not None and augmentation.active:
            # A generator of its own, so turning augmentation on leaves flips, crops and noise as they were.
            rng = generator(self.settings.seed, draw[0], draw[1], 17)
            captions = [augmentation.apply(caption, rng) for caption in captions]
        return captions

    def batch(self, indices: Sequence[int], encoders: Sequence[torch.nn.Module]) -> TextConditioning:
        """The conditioning of this process's part of a global micro-batch (augmentation drawn for all of it)."""
        captions = self.captions(indices)[getattr(indices, "part", slice(None))]
        # A training draw's encoding is a phase of the step; the eval's stays in the eval's time.
        timed = self.timer("text_encoder") if getattr(indices, "draw", None) is not None else nullcontext()
        if not self.cached:
            with torch.no_grad() if not self.trains_text else nullcontext(), timed:
                return {key: value.float() for key, value in self.encode(encoders, captions).items()}
        missing = sorted({c for c in captions if c not in self.cache})
        if missing:
            # An augmented variant: a frozen encoder maps a string to one conditioning, so encoding it
            # now and keeping it is exact. The encoders stay on the accelerator for these.
            for encoder in encoders:
                encoder.to(self.device)
            with torch.no_grad(), timed:
                self._store(missing, encoders)
            self._variants += missing
            while len(self._variants) > MAX_TEXT_VARIANTS:
                self.cache.pop(self._variants.pop(0), None)
        return {key: torch.stack([self.cache[c][key] for c in captions]) for key in self.cache[captions[0]]}

    def clear(self) -> None:
        self.cache, self._variants = {}, []


def fill_caches(caches: list[tuple[ImageLatents, CaptionConditioning]], models, progress: ProgressCallback, should_stop: StopCheck,
                group: ProcessGroup = SINGLE) -> None:
    """Fill every (images, captions) cache pair (training, then validation), then keep on the accelerator only the
    frozen models the loop still runs."""
    base, device = models.base, models.device
    frozen = base.text_encoders
    base.vae.to(device)
    for images, captions in caches:
        if images.cached:
            images.build(progress, should_stop, group)
        if captions.cached:
            for encoder in frozen:
                encoder.to(device)
            captions.build(frozen, group)
    images, captions = caches[0]
    if images.cached and all(latents.cached for latents, _ in caches):
        models.offload(base.vae)
    if captions.cached:
        if not captions.settings.caption_augmentation.active:  # augmented captions still need the encoders for new variants
            for encoder in frozen:
                models.offload(encoder)
    elif not models.trains_text:
        for encoder in frozen:
            encoder.to(device)
    trim_freed_memory()
