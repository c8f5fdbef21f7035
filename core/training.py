"""The LoRA training loop.

What makes it fast and small compared with the diffusers example script:
every image goes through the VAE once (latents cached, both flips when
flipping is on), every caption through the text encoder once while it is
frozen, and only the UNet with its adapters stays on the accelerator during
the loop. Randomness is derived from (seed, step), so a run resumed from a
checkpoint continues exactly as the uninterrupted run would have.
"""
from __future__ import annotations

import gc
import math
import os
import statistics
import time
import warnings
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from . import buckets as buckets_lib
from . import checkpoints
from . import lora as lora_lib
from .augment import CaptionAugmentation
from .cpu_kernels import matmul_convolutions, onednn_linears
from .dataset import ImageCaptionDataset, image_size
from .devices import keep_freed_memory_for_reuse, resolve_precision, seed_device_generator, torch_dtype, usable_device
from .errors import SettingsError, TrainerError
from .locking import FolderLock
from .losses import (
    LOSSES, PREDICTIONS, add_noise_offset, denoising_loss, min_snr_weights, resolve_prediction_type, training_target,
)
from .model_loading import BaseModel, materialize, module_from_config
from .optim import LR_SCHEDULERS, check_optimizer, make_optimizer, optimizer_class_name, warmup_step_count
from .preprocess import center_crop, center_crop_to, pil_to_tensor, resize_for_training, resize_to_cover
from .progress import ProgressCallback, ProgressEvent, StopCheck, never_stop, optional

CROP_MODES = ("center", "random")
EVAL_IMAGES = 4
EVAL_DRAWS = 2
EVAL_SEED = 20240611
# The phases of a training step, each timed on its own; vae and text_encoder take time only when that model runs
# every step (latents or text not cached, or the text encoder trained).
STEP_PHASES = ("data", "vae", "text_encoder", "forward", "backward", "optimizer")
MAX_TEXT_VARIANTS = 256  # augmented-caption embeddings kept for reuse (SD1.x: 236 KB each in fp32)


class BatchIndices(list):
    """Entry indices of one micro-batch, with the (step, micro) draw it belongs to.

    The draw seeds caption augmentation; evaluation passes plain lists, so it always
    sees the stored captions.
    """

    draw: tuple[int, int] | None = None


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 1000
    learning_rate: float = 1e-4
    batch_size: int = 1
    grad_accum: int = 1
    resolution: int = 512
    seed: int = 0
    lr_scheduler: str = "cosine"
    warmup_steps: float = 0  # steps, or a fraction of the run when below 1.0
    max_grad_norm: float = 1.0
    # --- optimization depth: optimizer, losses, failure handling, previews (core/optim.py, core/losses.py)
    optimizer: str = "adamw"
    text_encoder_learning_rate: float | None = None  # None means the UNet's learning rate
    lr_cycles: int = 1  # restarts of cosine_with_restarts
    prediction: str = "auto"  # auto (the base scheduler's), epsilon or v
    loss: str = "mse"  # mse or huber
    huber_c: float = 0.1
    min_snr_gamma: float = 0.0  # 0 turns min-SNR weighting off; 5 is the usual value
    noise_offset: float = 0.0
    max_bad_steps: int = 5  # non-finite losses in a row before the run stops
    keep_last: int = 0  # checkpoints to keep (0 keeps all)
    sample_every: int = 0
    sample_prompts: tuple[str, ...] = ()
    sample_seed: int = 0
    sample_steps: int = 20
    sample_size: int = 0  # 0 means the training resolution
    sample_guidance: float = 7.5
    precision: str = "auto"
    gradient_checkpointing: bool = False
    crop: str = "center"
    random_flip: bool = True
    # Data options (see core/augment.py and core/buckets.py); defaults change nothing.
    caption_dropout: float = 0.0
    shuffle_tags: bool = False
    keep_tokens: int = 0
    tag_dropout: float = 0.0
    bucket: bool = False
    max_area: int = 0  # bucket area limit in px; 0 = resolution squared
    no_upscale: bool = False
    save_every: int = 0
    cache_latents: bool = True
    cache_text: bool = True
    output_name: str = "lora"

    @property
    def caption_augmentation(self) -> CaptionAugmentation:
        return CaptionAugmentation(self.caption_dropout, self.shuffle_tags, self.keep_tokens, self.tag_dropout)

    @property
    def bucket_area(self) -> int:
        return self.max_area or self.resolution * self.resolution

    def _validate_data(self) -> None:
        self.caption_augmentation.validate()
        if not isinstance(self.max_area, int) or self.max_area < 0:
            raise SettingsError(f"Bucket max area must be 0 (resolution squared) or a pixel count, got {self.max_area}.")
        if self.max_area and not buckets_lib.BUCKET_STEP ** 2 <= self.max_area <= 4096 * 4096:
            raise SettingsError(f"Bucket max area {self.max_area} px is outside 64x64 to 4096x4096.")
        if (self.no_upscale or self.max_area) and not self.bucket:
            raise SettingsError("No-upscale and max area apply to aspect-ratio buckets; turn bucketing on.")

    def validate(self, dataset_size: int | None = None) -> None:
        checks = [
            (isinstance(self.steps, int) and self.steps >= 1, f"Training steps must be at least 1, got {self.steps}."),
            (math.isfinite(self.learning_rate) and self.learning_rate > 0, f"Learning rate must be a positive number, got {self.learning_rate}."),
            (isinstance(self.batch_size, int) and self.batch_size >= 1, f"Batch size must be at least 1, got {self.batch_size}."),
            (isinstance(self.grad_accum, int) and self.grad_accum >= 1, f"Gradient accumulation must be at least 1, got {self.grad_accum}."),
            (self.resolution >= 64 and self.resolution % 64 == 0, f"Resolution must be a multiple of 64 and at least 64, got {self.resolution}."),
            (self.resolution <= 4096, f"Resolution {self.resolution} is over 4096 px; SD1.x is trained at 512."),
            (self.lr_scheduler in LR_SCHEDULERS, f"LR scheduler must be one of {', '.join(LR_SCHEDULERS)}, got {self.lr_scheduler!r}."),
            (0 <= self.warmup_steps and (self.warmup_steps < 1 or float(self.warmup_steps).is_integer()),
             f"Warm-up must be a whole number of steps or a fraction below 1.0, got {self.warmup_steps}."),
            (warmup_step_count(self.warmup_steps, self.steps) <= self.steps or self.lr_scheduler == "constant",
             f"Warm-up ({self.warmup_steps} steps) is longer than the run ({self.steps} steps)."),
            (self.text_encoder_learning_rate is None or (math.isfinite(self.text_encoder_learning_rate) and self.text_encoder_learning_rate > 0),
             f"Text-encoder learning rate must be a positive number, got {self.text_encoder_learning_rate}."),
            (isinstance(self.lr_cycles, int) and self.lr_cycles >= 1, f"LR cycles must be at least 1, got {self.lr_cycles}."),
            (self.prediction in PREDICTIONS, f"Prediction must be one of {', '.join(PREDICTIONS)}, got {self.prediction!r}."),
            (self.loss in LOSSES, f"Loss must be one of {', '.join(LOSSES)}, got {self.loss!r}."),
            (self.huber_c > 0, f"The Huber parameter must be positive, got {self.huber_c}."),
            (self.min_snr_gamma >= 0, f"Min-SNR gamma cannot be negative (0 turns it off), got {self.min_snr_gamma}."),
            (0 <= self.noise_offset <= 1, f"Noise offset must be between 0 and 1 (0.05-0.1 is usual), got {self.noise_offset}."),
            (isinstance(self.max_bad_steps, int) and self.max_bad_steps >= 1, f"The non-finite step limit must be at least 1, got {self.max_bad_steps}."),
            (isinstance(self.keep_last, int) and self.keep_last >= 0, f"Checkpoints to keep cannot be negative (0 keeps all), got {self.keep_last}."),
            (self.sample_every >= 0, f"Sample interval cannot be negative, got {self.sample_every}."),
            (not self.sample_every or any(p.strip() for p in self.sample_prompts), "Sample previews need at least one prompt."),
            (self.sample_steps >= 1, f"Sampling steps must be at least 1, got {self.sample_steps}."),
            (self.sample_size == 0 or (self.sample_size >= 64 and self.sample_size % 8 == 0), f"Sample size must be 0 (training size) or a multiple of 8 of at least 64, got {self.sample_size}."),
            (self.max_grad_norm >= 0, f"Gradient clipping norm cannot be negative, got {self.max_grad_norm}."),
            (self.crop in CROP_MODES, f"Crop must be one of {', '.join(CROP_MODES)}, got {self.crop!r}."),
            (self.save_every >= 0, f"Save interval cannot be negative, got {self.save_every}."),
        ]
        for ok, message in checks:
            if not ok:
                raise SettingsError(message)
        self._validate_data()
        check_optimizer(self.optimizer)
        if dataset_size is not None and self.batch_size > dataset_size:
            raise SettingsError(
                f"Batch size {self.batch_size} is larger than the dataset ({dataset_size} images with repeats); "
                "lower the batch size or add repeats."
            )


@dataclass
class TrainResult:
    lora: lora_lib.LoRAWeights
    steps: int
    loss_history: list[float]
    lr_history: list[float]
    seconds_per_step: float | None
    seconds_to_first_step: float | None
    eval_loss_before: float | None  # the base model's; both None when the run was cancelled
    eval_loss_after: float | None
    interrupted: bool = False
    resumed_from_step: int = 0
    checkpoint_dir: str | None = None
    checkpoints: list[str] = field(default_factory=list)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    skipped_steps: list[int] = field(default_factory=list)  # steps whose loss was not finite (no update made)
    samples: list[str] = field(default_factory=list)  # preview image files written
    checkpoint_bytes: int = 0  # disk used by the checkpoints kept

    def summary(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "seconds_per_step": self.seconds_per_step,
            "seconds_to_first_step": self.seconds_to_first_step,
            "loss_first": self.loss_history[0] if self.loss_history else None,
            "loss_last": self.loss_history[-1] if self.loss_history else None,
            "eval_loss_before": self.eval_loss_before,
            "eval_loss_after": self.eval_loss_after,
            "interrupted": self.interrupted,
            "resumed_from_step": self.resumed_from_step,
            "skipped_steps": self.skipped_steps,
            "checkpoint_megabytes": round(self.checkpoint_bytes / 2**20, 2),
        }


def mix_seed(*parts: int) -> int:
    """Combine integers into one 63-bit seed (splitmix-style), so each (seed, step) draw is independent."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value ^= (int(part) + 0x9E3779B97F4A7C15 + (value << 6) + (value >> 2)) & 0xFFFFFFFFFFFFFFFF
        value = (value * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    return value & 0x7FFFFFFFFFFFFFFF


def generator(*parts: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(mix_seed(*parts))


# --------------------------------------------------------------------------- the trainer


def _number(value: float) -> str:
    """A loss scale as people read it: 65536 rather than 6.5536e+04, 0.25 below one."""
    return f"{value:.0f}" if value >= 1 else f"{value:g}"


@dataclass(frozen=True)
class SkippedStep:
    """Why a step made no update. fp16 loss-scale calibration skips (the scale still above 1) are normal
    and do not count toward ``max_bad_steps``; everything else does."""

    reason: str
    counts_toward_limit: bool = True


class Trainer:
    """One training run. ``run()`` returns a TrainResult; the base model is left as it was found."""

    def __init__(
        self,
        base: BaseModel,
        dataset: ImageCaptionDataset,
        lora_settings: lora_lib.LoRASettings,
        settings: TrainSettings,
        device: torch.device | str | None = None,
        progress: ProgressCallback | None = None,
        should_stop: StopCheck | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        resume_from: str | os.PathLike | None = None,
        init_lora: str | os.PathLike | None = None,
        release_frozen_models: bool = False,
        cpu_matmul_convolutions: bool = True,
        cpu_onednn_linears: bool = True,
    ):
        """``release_frozen_models`` frees the VAE, text encoder and base UNet weights once they are no
        longer needed (after caching; the base afterwards is unusable): for one-shot runs like the CLI.
        ``cpu_matmul_convolutions`` and ``cpu_onednn_linears`` let frozen convolutions and linears use ``core.cpu_kernels``
        on the CPU (off only to measure them)."""
        lora_settings.validate()
        settings.validate(dataset.num_samples)
        if len(dataset) == 0:
            raise SettingsError("The dataset is empty.")
        self.base, self.dataset, self.lora_settings, self.settings = base, dataset, lora_settings, settings
        self.device = usable_device(device)
        self.precision = resolve_precision(settings.precision, self.device)
        self.dtype = torch_dtype(self.precision)
        self.progress = optional(progress)
        self.should_stop = should_stop or never_stop
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.resume_from = Path(resume_from) if resume_from else None
        if settings.save_every and not self.checkpoint_dir:
            raise SettingsError("Saving every N steps needs a checkpoint folder.")
        self.release_frozen_models = release_frozen_models
        self.cpu_matmul_convolutions = cpu_matmul_convolutions
        self.cpu_onednn_linears = cpu_onednn_linears
        self._kernels = ExitStack()
        if self.device.type == "cpu":
            keep_freed_memory_for_reuse()
        self.init_lora = Path(init_lora) if init_lora else None
        if self.init_lora is not None and self.resume_from is not None:
            raise SettingsError("Give either a checkpoint to resume or a LoRA file to start from, not both.")
        if self.init_lora is not None and not self.init_lora.is_file():
            raise SettingsError(f"The LoRA file to start from, {self.init_lora}, does not exist.")
        self.prediction_type = resolve_prediction_type(settings.prediction, base.noise_scheduler)
        self.train_text_encoder = lora_settings.train_text_encoder
        self.pool = [index for index, entry in enumerate(dataset.entries) for _ in range(entry.repeats)]
        self._permutations: dict[int, torch.Tensor] = {}
        self.phase_seconds: dict[str, float] = {}
        self._nested_seconds: list[float] = []
        self.started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")

    # ------------------------------------------------------------------ setup

    @contextmanager
    def _timed(self, phase: str):
        """Adds the block's time to ``phase``, less the time of phases timed inside it (each second counts once)."""
        start = time.perf_counter()
        self._nested_seconds.append(0.0)
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            elapsed = time.perf_counter() - start
            self.phase_seconds[phase] = self.phase_seconds.get(phase, 0.0) + elapsed - self._nested_seconds.pop()
            if self._nested_seconds:
                self._nested_seconds[-1] += elapsed

    def _autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def _training_copy(self, module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
        """The module itself when it already has the right device and dtype, else a copy that does.

        A copy leaves the caller's model untouched (ComfyUI keeps it cached);
        it is built on the meta device and filled directly on the target, so
        the CPU never holds two full copies.
        """
        parameter = next(module.parameters())
        if parameter.device == self.device and parameter.dtype == dtype:
            return module
        clone = materialize(module_from_config(type(module), module.config), module.state_dict(), type(module).__name__, dtype, self.device)
        if self.release_frozen_models:
            module.to("meta")
        return clone

    def _tokenize(self, captions: list[str]) -> torch.Tensor:
        tokens = self.base.tokenizer(
            captions,
            padding="max_length",
            max_length=self.base.text_encoder.config.max_position_embeddings,
            truncation=True,
            return_tensors="pt",
        )
        return tokens.input_ids

    def _encode_text(self, text_encoder, captions: list[str]) -> torch.Tensor:
        ids = self._tokenize(captions).to(self.device)
        with self._autocast():
            return text_encoder(ids)[0]

    def _vae_autocast(self):
        # bf16 keeps fp32's range, so the SD VAE cannot overflow in it and encodes about twice as fast (as in
        # the diffusers script and kohya's default); fp16 can overflow in the SD VAE, so it encodes in fp32.
        return self._autocast() if self.dtype == torch.bfloat16 else nullcontext()

    def _encode_images(self, pixels: torch.Tensor, seed: int) -> torch.Tensor:
        vae = self.base.vae
        pixels = pixels.to(self.device, next(vae.parameters()).dtype)
        with self._vae_autocast():
            distribution = vae.encode(pixels).latent_dist
        mean, std = distribution.mean.float(), distribution.std.float()
        noise = torch.randn(mean.shape, generator=generator(self.settings.seed, seed, 31)).to(self.device)
        return (mean + std * noise) * vae.config.scaling_factor

    def _prepared_pixels(self, entry_index: int) -> torch.Tensor:
        image = self.dataset.entries[entry_index].open_image()
        if self.settings.bucket:
            width, height = self._bucket_of(entry_index)
            image = resize_to_cover(image, width, height)
            if self.settings.crop == "center":
                image = center_crop_to(image, width, height)
            return pil_to_tensor(image)
        image = resize_for_training(image, self.settings.resolution)
        if self.settings.crop == "center":
            image = center_crop(image, self.settings.resolution)
        return pil_to_tensor(image)

    def _bucket_of(self, entry_index: int) -> tuple[int, int]:
        """(width, height) in px the entry trains at: its bucket, or the square resolution."""
        if not self.settings.bucket:
            return (self.settings.resolution, self.settings.resolution)
        if getattr(self, "_entry_buckets", None) is None:
            grid = buckets_lib.bucket_grid(self.settings.bucket_area)
            self._entry_sizes = [image_size(entry) for entry in self.dataset.entries]
            self._entry_buckets = [buckets_lib.assign_bucket(size, grid, self.settings.no_upscale) for size in self._entry_sizes]
            self._batches_per_epoch = buckets_lib.batches_per_epoch([self._entry_buckets[i] for i in self.pool], self.settings.batch_size)
        return self._entry_buckets[entry_index]

    def bucket_counts(self) -> dict[tuple[int, int], int]:
        """Images per bucket (repeats not counted)."""
        counts: dict[tuple[int, int], int] = {}
        for index in range(len(self.dataset)):
            counts[self._bucket_of(index)] = counts.get(self._bucket_of(index), 0) + 1
        return counts

    def _build_latent_cache(self) -> None:
        """Encode each image once; with random flip, the mirrored image too (encoded, not mirrored latents)."""
        self.latents: list[list[torch.Tensor]] = []
        total = len(self.dataset)
        self.base.vae.to(self.device)
        with torch.no_grad(), self._timed("vae_cache"):
            for index in range(total):
                pixels = self._prepared_pixels(index)[None]
                variants = [pixels, pixels.flip(-1)] if self.settings.random_flip else [pixels]
                self.latents.append([self._encode_images(v, index * 2 + k)[0] for k, v in enumerate(variants)])
                self.progress(ProgressEvent("cache", index + 1, total, message="encoding images"))
                if self.should_stop():
                    break

    def _build_text_cache(self) -> None:
        """Encode every stored caption once (and the empty one when captions can drop out).

        Augmented variants are encoded when first drawn and kept in the same cache,
        at most MAX_TEXT_VARIANTS of them (see _batch_text).
        """
        captions = {entry.caption for entry in self.dataset.entries}
        if self.settings.caption_dropout > 0:
            captions.add("")
        captions = sorted(captions)
        self.text_cache: dict[str, torch.Tensor] = {}
        self._text_variants: list[str] = []
        self.base.text_encoder.to(self.device)
        with torch.no_grad(), self._timed("text_cache"):
            for start in range(0, len(captions), 32):
                chunk = captions[start:start + 32]
                for caption, embedding in zip(chunk, self._encode_text(self.base.text_encoder, chunk)):
                    self.text_cache[caption] = embedding.float()

    def _offload(self, module: torch.nn.Module) -> None:
        if self.release_frozen_models:
            module.to("meta")  # drops the weights' storage
        elif self.device.type != "cpu":
            module.to("cpu")

    # ------------------------------------------------------------------ data

    def _bucket_batches(self, epoch: int) -> list[list[int]]:
        """The epoch's batches (pool positions), each from one bucket, memoised like _permutation."""
        cache = getattr(self, "_bucket_batch_cache", {})
        if epoch not in cache:
            pool_buckets = [self._bucket_of(index) for index in self.pool]
            seed = self.settings.seed
            self._bucket_batch_cache = cache = {
                epoch: buckets_lib.epoch_batches(pool_buckets, self.settings.batch_size, lambda *parts: generator(seed, epoch, 7, *parts))
            }
        return cache[epoch]

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch not in self._permutations:
            self._permutations = {epoch: torch.randperm(len(self.pool), generator=generator(self.settings.seed, epoch, 7))}
        return self._permutations[epoch]

    def _batch_indices(self, step: int, micro: int) -> list[int]:
        if self.settings.bucket:
            number = step * self.settings.grad_accum + micro
            self._bucket_of(0)  # assigns every bucket once
            per_epoch = self._batches_per_epoch
            indices = BatchIndices(self.pool[p] for p in self._bucket_batches(number // per_epoch)[number % per_epoch])
        else:
            first = (step * self.settings.grad_accum + micro) * self.settings.batch_size
            positions = range(first, first + self.settings.batch_size)
            indices = BatchIndices(self.pool[int(self._permutation(p // len(self.pool))[p % len(self.pool)])] for p in positions)
        indices.draw = (step, micro)
        return indices

    def _batch_latents(self, indices: list[int], rng: torch.Generator) -> torch.Tensor:
        flips = torch.rand(len(indices), generator=rng) < 0.5
        batch = []
        for index, flip in zip(indices, flips.tolist()):
            width, height = self._bucket_of(index)
            latent_height, latent_width = height // self.base.vae_scale_factor, width // self.base.vae_scale_factor
            use_flip = flip and self.settings.random_flip
            if self.settings.cache_latents:
                latent = self.latents[index][1 if use_flip else 0]
            else:
                with torch.no_grad():
                    pixels = self._prepared_pixels(index)[None]
                    with self._timed("vae"):
                        latent = self._encode_images(pixels.flip(-1) if use_flip else pixels, index * 2 + int(use_flip))[0]
            # Random crop happens on the latent grid (8 px steps) so the cached latent stays valid.
            height, width = latent.shape[-2:]
            top = int(torch.randint(0, height - latent_height + 1, (1,), generator=rng))
            left = int(torch.randint(0, width - latent_width + 1, (1,), generator=rng))
            batch.append(latent[:, top:top + latent_height, left:left + latent_width])
        return torch.stack(batch).to(self.device)

    def _batch_text(self, indices: list[int], text_encoder) -> torch.Tensor:
        captions = [self.dataset.entries[i].caption for i in indices]
        augmentation = self.settings.caption_augmentation
        draw = getattr(indices, "draw", None)
        if draw is not None and augmentation.active:
            # A generator of its own, so turning augmentation on leaves flips, crops and noise as they were.
            rng = generator(self.settings.seed, draw[0], draw[1], 17)
            captions = [augmentation.apply(caption, rng) for caption in captions]
        # A training draw's encoding is a phase of the step; the eval's stays in the eval's time.
        timed = self._timed("text_encoder") if draw is not None else nullcontext()
        if self.train_text_encoder or not self.settings.cache_text:
            with torch.no_grad() if not self.train_text_encoder else nullcontext(), timed:
                return self._encode_text(text_encoder, captions).float()
        missing = sorted({c for c in captions if c not in self.text_cache})
        if missing:
            # An augmented variant: the frozen encoder maps a string to one embedding, so encoding it
            # now and keeping it is exact. The encoder stays on the accelerator for these.
            text_encoder.to(self.device)
            with torch.no_grad(), timed:
                for caption, embedding in zip(missing, self._encode_text(text_encoder, missing)):
                    self.text_cache[caption] = embedding.float()
                    self._text_variants.append(caption)
            while len(self._text_variants) > MAX_TEXT_VARIANTS:
                self.text_cache.pop(self._text_variants.pop(0), None)
        return torch.stack([self.text_cache[c] for c in captions])

    def _data_metadata(self) -> dict[str, Any]:
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

    # ------------------------------------------------------------------ loss

    def _loss(self, unet, latents: torch.Tensor, text: torch.Tensor, rng: torch.Generator, noise=None, timesteps=None, plain: bool = False) -> torch.Tensor:
        """Noise-space loss of one batch; ``plain`` (the eval loss) ignores offset, weighting and Huber."""
        scheduler, settings = self.base.noise_scheduler, self.settings
        if noise is None:
            noise = torch.randn(latents.shape, generator=rng).to(self.device)
        if timesteps is None:
            timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=rng)
        if not plain:
            # Drawn after noise and timesteps, so a run without offset keeps the same random stream.
            noise = add_noise_offset(noise, settings.noise_offset, rng)
        timesteps = timesteps.to(self.device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        target = training_target(scheduler, latents, noise, timesteps, self.prediction_type)
        with self._autocast():
            prediction = unet(noisy.to(self.unet_dtype), timesteps, text.to(self.unet_dtype)).sample
        if plain:
            return denoising_loss(prediction, target)
        weights = min_snr_weights(scheduler, timesteps, settings.min_snr_gamma, self.prediction_type) if settings.min_snr_gamma else None
        return denoising_loss(prediction, target, settings.loss, weights, settings.huber_c)

    @contextmanager
    def _adapters_disabled(self):
        for model in (self.unet, self.text_encoder):
            lora_lib.set_adapters_enabled(model, False)
        try:
            yield
        finally:
            for model in (self.unet, self.text_encoder):
                lora_lib.set_adapters_enabled(model, True)

    @torch.no_grad()
    def evaluate(self, unet, text_encoder) -> float:
        """Denoising loss at fixed noises and timesteps on the first images: comparable across runs."""
        rng = generator(EVAL_SEED)
        count = min(EVAL_IMAGES, len(self.dataset))
        losses = []
        for index in range(count):
            if self.settings.cache_latents:
                latent = self.latents[index][0]
            else:
                latent = self._encode_images(self._prepared_pixels(index)[None], index * 2)[0]
            size = self.settings.resolution // self.base.vae_scale_factor
            latent = latent[:, :size, :size][None].to(self.device)
            text = self._batch_text([index], text_encoder)
            # All draws of an image in one batch: one pass instead of EVAL_DRAWS (the loss is their mean either way).
            timesteps = torch.tensor([
                int((draw + 0.5) / EVAL_DRAWS * self.base.noise_scheduler.config.num_train_timesteps) for draw in range(EVAL_DRAWS)
            ])
            latents, texts = latent.expand(EVAL_DRAWS, -1, -1, -1), text.expand(EVAL_DRAWS, -1, -1)
            losses.append(float(self._loss(unet, latents, texts, rng, timesteps=timesteps, plain=True)))
        return sum(losses) / len(losses)

    # ------------------------------------------------------------------ checkpoints

    def _run_state(self) -> dict[str, Any]:
        return {
            "settings": asdict(self.settings),
            "lora": asdict(self.lora_settings),
            "dataset_hash": self.dataset.content_hash,
            "base_hash": self.base.source_hash,
            "base_source": os.path.basename(self.base.source),
            "prediction_type": self.prediction_type,
        }

    def save_checkpoint(self, step: int) -> Path:
        assert self.checkpoint_dir is not None
        training_state = {
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "loss_history": torch.tensor(self.loss_history, dtype=torch.float64),
            "lr_history": torch.tensor(self.lr_history, dtype=torch.float64),
            "skipped_steps": torch.tensor(self.skipped_steps, dtype=torch.int64),
            # The exact adapter tensors (lora.safetensors is the user's file; DoRA's dora_scale in it is converted).
            "adapters": {"unet": lora_lib.adapter_state(self.unet), "text_encoder": lora_lib.adapter_state(self.text_encoder) if self.train_text_encoder else {}},
        }
        final = checkpoints.write_checkpoint(self.checkpoint_dir, step, self._export(step), training_state, self._run_state())
        self.checkpoints.append(str(final))
        removed = checkpoints.prune_checkpoints(self.checkpoint_dir, self.settings.keep_last) if self.settings.keep_last else []
        self.checkpoints = [c for c in self.checkpoints if Path(c) not in removed]
        kept = checkpoints.find_checkpoints(self.checkpoint_dir)
        self.checkpoint_bytes = sum(checkpoints.folder_bytes(path) for path in kept)
        message = f"saved {final.name}; {len(kept)} checkpoint(s) use {self.checkpoint_bytes / 2**20:.1f} MB"
        if removed:
            message += f" (removed {', '.join(p.name for p in removed)})"
        self.progress(ProgressEvent("save", step, self.settings.steps, message=message))
        return final

    def _load_checkpoint(self, folder: Path) -> int:
        state, weights, training_state = checkpoints.read_checkpoint(folder)
        checkpoints.check_compatible(state, self._run_state(), folder)
        adapters = training_state.get("adapters")
        if adapters is not None:
            lora_lib.load_adapter_state(self.unet, adapters["unet"])
            if self.train_text_encoder:
                lora_lib.load_adapter_state(self.text_encoder, adapters["text_encoder"])
        else:  # checkpoints written before the exact adapter state was kept
            lora_lib.load_kohya_into(self.unet, weights.tensors, lora_lib.UNET_PREFIX)
            if self.train_text_encoder:
                lora_lib.load_kohya_into(self.text_encoder, weights.tensors, lora_lib.TEXT_ENCODER_PREFIX)
        self.optimizer.load_state_dict(training_state["optimizer"])
        if self.scaler is not None and training_state["scaler"]:
            self.scaler.load_state_dict(training_state["scaler"])
        self.loss_history = training_state["loss_history"].tolist()
        self.lr_history = training_state["lr_history"].tolist()
        self.skipped_steps = training_state.get("skipped_steps", torch.zeros(0, dtype=torch.int64)).tolist()
        return int(state["step"])

    def _load_init_lora(self, path: Path) -> int:
        """Start from an existing LoRA file (weights only); returns the step count in its metadata."""
        try:
            weights = lora_lib.read_lora_file(path)
        except Exception as error:
            raise SettingsError(f"{path.name} could not be read as a safetensors LoRA ({error.__class__.__name__}).") from None
        unet_stems = lora_lib.file_module_stems(weights.tensors, lora_lib.UNET_PREFIX)
        te_stems = lora_lib.file_module_stems(weights.tensors, lora_lib.TEXT_ENCODER_PREFIX)
        if not unet_stems and not te_stems:
            raise SettingsError(
                f"{path.name} holds no kohya-format SD1.x LoRA weights (lora_unet_*/lora_te_* keys with .lora_down/.lora_up, or LyCORIS .hada_*/.lokr_*)."
            )
        kinds = lora_lib.file_adapter_types(weights.tensors)
        if kinds != {self.lora_settings.adapter}:
            raise SettingsError(
                f"{path.name} holds {' and '.join(sorted(kinds))} adapters but this run trains {self.lora_settings.adapter}; "
                f"set the adapter type to {sorted(kinds)[0]} to continue it."
            )
        ours = {lora_lib.kohya_stem(name, lora_lib.UNET_PREFIX) for name, _ in lora_lib.lora_layers(self.unet)}
        outside = sorted(unet_stems - ours)
        if outside:
            raise SettingsError(
                f"{path.name} adapts {len(outside)} UNet layers that this run's targets do not include (e.g. {outside[0]}); "
                "choose the targets it was trained with (attention, kohya, kohya+conv or a pattern)."
            )
        if te_stems and not self.train_text_encoder:
            raise SettingsError(f"{path.name} also adapts the text encoder; turn text-encoder training on to continue it.")
        has_dora = any(k.endswith(".dora_scale") for k in weights.tensors)
        if has_dora and not self.lora_settings.use_dora:
            raise SettingsError(f"{path.name} is a DoRA (it has dora_scale keys); turn DoRA on to continue it.")
        lora_lib.load_kohya_into(self.unet, weights.tensors, lora_lib.UNET_PREFIX)
        if self.train_text_encoder:
            lora_lib.load_kohya_into(self.text_encoder, weights.tensors, lora_lib.TEXT_ENCODER_PREFIX)
        try:
            steps_done = int(weights.metadata.get("ss_steps", "0"))
        except ValueError:
            steps_done = 0
        if steps_done >= self.settings.steps:
            raise SettingsError(
                f"{path.name} has already been trained for {steps_done} steps; set the total steps above {steps_done} to continue it."
            )
        return steps_done

    def _fast_forward_schedule(self, step: int) -> None:
        """Put the LR schedule at ``step`` of *this* run's settings (total steps may have changed)."""
        if step <= 0:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()" does not apply here
            self.lr_scheduler.last_epoch = step - 1
            self.lr_scheduler.step()

    # ------------------------------------------------------------------ export

    def _export(self, step: int) -> lora_lib.LoRAWeights:
        tensors = lora_lib.kohya_state_dict(self.unet, lora_lib.UNET_PREFIX)
        if self.train_text_encoder:
            tensors.update(lora_lib.kohya_state_dict(self.text_encoder, lora_lib.TEXT_ENCODER_PREFIX))
        settings = self.settings
        extra = {
            "ss_output_name": settings.output_name,
            "ss_steps": str(step),
            "ss_max_train_steps": str(settings.steps),
            "ss_learning_rate": f"{settings.learning_rate:g}",
            "ss_unet_lr": f"{settings.learning_rate:g}",
            "ss_lr_scheduler": settings.lr_scheduler,
            "ss_lr_warmup_steps": str(warmup_step_count(settings.warmup_steps, settings.steps)),
            "ss_resolution": f"({settings.resolution}, {settings.resolution})",
            "ss_seed": str(settings.seed),
            "ss_batch_size_per_device": str(settings.batch_size),
            "ss_gradient_accumulation_steps": str(settings.grad_accum),
            "ss_max_grad_norm": f"{settings.max_grad_norm:g}",
            "ss_mixed_precision": self.precision,
            "ss_gradient_checkpointing": str(settings.gradient_checkpointing),
            "ss_optimizer": optimizer_class_name(settings.optimizer),
            "ss_prediction_type": self.prediction_type,
            "ss_v_parameterization": str(self.prediction_type == "v_prediction"),
            "ss_loss_type": "l2" if settings.loss == "mse" else "huber",
            "ss_min_snr_gamma": f"{settings.min_snr_gamma:g}" if settings.min_snr_gamma else "None",
            "ss_noise_offset": f"{settings.noise_offset:g}" if settings.noise_offset else "None",
            "ss_num_train_images": str(self.dataset.num_samples),
            **self._data_metadata(),
            "ss_dataset_hash": self.dataset.content_hash,
            "ss_sd_model_name": os.path.basename(self.base.source),
            "ss_training_started_at": self.started_at,
            "ss_training_finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "ss_flip_aug": str(settings.random_flip),
            "ss_random_crop": str(settings.crop == "random"),
            "modelspec.title": settings.output_name,
            "modelspec.resolution": f"{settings.resolution}x{settings.resolution}",
            "modelspec.date": datetime.now(timezone.utc).date().isoformat(),
            "modelspec.prediction_type": "v" if self.prediction_type == "v_prediction" else "epsilon",
        }
        if settings.loss == "huber":
            extra["ss_huber_c"] = f"{settings.huber_c:g}"
        if self.train_text_encoder:
            extra["ss_text_encoder_lr"] = f"{self._text_encoder_lr:g}"
        if self.init_lora is not None:
            extra["ss_network_weights"] = self.init_lora.name
        return lora_lib.LoRAWeights(tensors=tensors, metadata=lora_lib.build_metadata(self.lora_settings, extra))

    # ------------------------------------------------------------------ the loop

    @property
    def _text_encoder_lr(self) -> float:
        settings = self.settings
        return settings.text_encoder_learning_rate if settings.text_encoder_learning_rate is not None else settings.learning_rate

    def _inject(self) -> None:
        ls = self.lora_settings
        torch.manual_seed(mix_seed(self.settings.seed, 0x1A1D))  # peft draws lora_A's init from the global stream
        self.unet_dtype = self.dtype
        self.unet = self._training_copy(self.base.unet, self.unet_dtype)
        conv_rank = ls.effective_conv_rank if ls.targets == "kohya+conv" or ls.conv_rank else None
        lora_lib.inject(
            self.unet, lora_lib.target_pattern(ls.targets), ls.rank, ls.effective_alpha, ls.dropout, "UNet",
            conv_rank=conv_rank, conv_alpha=ls.effective_conv_alpha if conv_rank else None, use_dora=ls.use_dora,
            adapter=ls.adapter,
        )
        self.text_encoder = self.base.text_encoder
        if self.train_text_encoder:
            self.text_encoder = self._training_copy(self.base.text_encoder, self.unet_dtype)
            lora_lib.inject(
                self.text_encoder, lora_lib.TEXT_ENCODER_TARGETS, ls.effective_te_rank, ls.effective_te_alpha, ls.dropout,
                "text encoder", use_dora=ls.use_dora, adapter=ls.adapter,
            )
        for model in (self.unet, self.text_encoder):
            for parameter in model.parameters():
                if parameter.requires_grad:
                    parameter.data = parameter.data.float()  # adapters train in fp32 under any autocast
        if self.device.type == "cpu" and self.cpu_matmul_convolutions:
            self._kernels.enter_context(matmul_convolutions(self.unet))
        if self.device.type == "cpu" and self.cpu_onednn_linears:
            for model in dict.fromkeys((self.unet, self.text_encoder)):
                self._kernels.enter_context(onednn_linears(model))
        if self.settings.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            if self.train_text_encoder:
                self.text_encoder.gradient_checkpointing_enable()

    def _parameter_groups(self) -> list[dict[str, Any]]:
        """UNet adapters at the learning rate, text-encoder adapters at their own."""
        groups = [{"params": [p for p in self.unet.parameters() if p.requires_grad], "lr": self.settings.learning_rate}]
        if self.train_text_encoder:
            groups.append({"params": [p for p in self.text_encoder.parameters() if p.requires_grad], "lr": self._text_encoder_lr})
        return groups

    def _restore_base(self) -> None:
        self._kernels.close()
        for model, original in ((self.unet, self.base.unet), (self.text_encoder, self.base.text_encoder)):
            if model is original:
                lora_lib.remove(model)
                if self.settings.gradient_checkpointing and hasattr(model, "disable_gradient_checkpointing"):
                    model.disable_gradient_checkpointing()
                self._offload(model)
        self._offload(self.base.vae)
        self._offload(self.base.text_encoder)
        self.latents, self.text_cache = [], {}
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _sample(self, step: int) -> None:
        """Preview images with the current adapters; saved under the checkpoint folder, newest to the callback."""
        from .sampling import generate_previews, save_previews

        settings = self.settings
        prompts = [p for p in settings.sample_prompts if p.strip()]
        moved = [m for m in (self.base.vae, self.text_encoder) if next(m.parameters()).device != self.device]
        with self._timed("sample"):
            for module in moved:
                module.to(self.device)
            try:
                images = generate_previews(
                    self.unet, self.base.vae, self.text_encoder, self.base.tokenizer, self.base.noise_scheduler, prompts,
                    seed=settings.sample_seed, steps=settings.sample_steps, size=settings.sample_size or settings.resolution,
                    guidance=settings.sample_guidance, device=self.device, dtype=self.dtype,
                )
            finally:
                for module in moved:
                    self._offload(module)
        if self.checkpoint_dir is not None:
            self.samples += [str(p) for p in save_previews(images, self.checkpoint_dir / "samples", step)]
        self.progress(ProgressEvent("sample", step, settings.steps, preview=images[-1], message=f"preview at step {step}"))

    def run(self) -> TrainResult:
        """Train. A checkpoint folder is locked for the whole run: one training per folder at a time."""
        with FolderLock(self.checkpoint_dir) if self.checkpoint_dir else nullcontext():
            if self.checkpoint_dir:
                checkpoints.remove_unfinished(self.checkpoint_dir)
            out_of_memory = False
            try:
                return self._run()
            except torch.OutOfMemoryError:
                out_of_memory = True
            except RuntimeError as error:
                if "can't allocate memory" not in str(error):
                    raise
                out_of_memory = True
        # Raised outside the except block so the failed step's tensors (held by the traceback) are freed first.
        if out_of_memory:
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            settings = self.settings
            raise TrainerError(
                f"Out of memory while training at {settings.resolution} px with batch size {settings.batch_size}; "
                "use batch size 1, turn on gradient checkpointing, or lower the resolution."
            )
        raise AssertionError("unreachable")

    def _run(self) -> TrainResult:
        settings = self.settings
        self.checkpoints: list[str] = []
        self.loss_history: list[float] = []
        self.lr_history: list[float] = []
        self.skipped_steps: list[int] = []
        self._counted_skips = 0
        self.samples: list[str] = []
        self.checkpoint_bytes = 0
        rng_state = torch.random.get_rng_state()
        run_start = time.perf_counter()
        self._inject()
        try:
            if settings.cache_latents:
                self._build_latent_cache()
            if not self.train_text_encoder and settings.cache_text:
                self._build_text_cache()
            if settings.cache_latents:
                self._offload(self.base.vae)
            if not self.train_text_encoder and settings.cache_text and not settings.caption_augmentation.active:
                self._offload(self.base.text_encoder)  # augmented captions still need it for new variants
            if not settings.cache_text and not self.train_text_encoder:
                self.base.text_encoder.to(self.device)
            if not settings.cache_latents:
                self.base.vae.to(self.device)
            groups = self._parameter_groups()
            parameters = [p for group in groups for p in group["params"]]
            self.optimizer, self.lr_scheduler, self.scaler = make_optimizer(groups, settings, self.device, self.dtype)
            start_step = 0
            if self.resume_from is not None:
                start_step = self._load_checkpoint(checkpoints.resolve_resume_path(self.resume_from))
            elif self.init_lora is not None:
                start_step = self._load_init_lora(self.init_lora)
            self._fast_forward_schedule(start_step)
            interrupted, step, first_step_at = False, start_step, None
            step_times: list[float] = []
            bad_in_row = 0
            smoothed = self.loss_history[-1] if self.loss_history else None
            self.unet.train()
            self.text_encoder.train(self.train_text_encoder)
            while step < settings.steps:
                if self.should_stop():
                    interrupted = True
                    break
                step_start = time.perf_counter()
                loss_value, skipped = self._train_step(step, parameters)
                step += 1
                if first_step_at is None:
                    first_step_at = time.perf_counter() - run_start
                step_times.append(time.perf_counter() - step_start)
                if skipped:
                    bad_in_row += skipped.counts_toward_limit
                    self._skip_step(step, skipped, bad_in_row)
                else:
                    bad_in_row = 0
                    self.loss_history.append(loss_value)
                    self.lr_history.append(self.lr_scheduler.get_last_lr()[0])
                    smoothed = loss_value if smoothed is None else 0.9 * smoothed + 0.1 * loss_value
                    recent = step_times[-20:]
                    per_step = sum(recent) / len(recent)
                    self.progress(ProgressEvent(
                        "train", step, settings.steps, loss=loss_value, smoothed_loss=smoothed,
                        lr=self.lr_history[-1], seconds_per_step=per_step, eta_seconds=per_step * (settings.steps - step),
                    ))
                if settings.save_every and step % settings.save_every == 0 and step < settings.steps:
                    self.save_checkpoint(step)
                if settings.sample_every and step % settings.sample_every == 0:
                    self._sample(step)
            self.unet.eval()
            self.text_encoder.eval()
            if self.checkpoint_dir is not None and (interrupted or step == settings.steps) and step > start_step:
                self.save_checkpoint(step)
            # A cancelled run ends at once; its checkpoint is what matters. The base model's loss is measured
            # here rather than before the first step (the frozen base gives the same number either way), so
            # training starts sooner: 8 forward passes are 5-9 s of a full-size model on a CPU.
            eval_before = eval_after = None
            if not interrupted:
                with self._timed("eval"):
                    with self._adapters_disabled():
                        eval_before = self.evaluate(self.unet, self.text_encoder)
                    eval_after = self.evaluate(self.unet, self.text_encoder)
            lora = self._export(step)
        finally:
            self._restore_base()
            torch.random.set_rng_state(rng_state)
        # Sampling time is not training time: leave it out of the per-step figure.
        steady = step_times[1:] if len(step_times) > 1 else step_times
        return TrainResult(
            lora=lora,
            steps=step,
            loss_history=self.loss_history,
            lr_history=self.lr_history,
            seconds_per_step=statistics.median(steady) if steady else None,
            seconds_to_first_step=first_step_at,
            eval_loss_before=eval_before,
            eval_loss_after=eval_after,
            interrupted=interrupted,
            resumed_from_step=start_step,
            checkpoint_dir=str(self.checkpoint_dir) if self.checkpoint_dir else None,
            checkpoints=self.checkpoints,
            phase_seconds=self.phase_seconds,
            skipped_steps=self.skipped_steps,
            samples=self.samples,
            checkpoint_bytes=self.checkpoint_bytes,
        )

    def _skip_step(self, step: int, skipped: SkippedStep, bad_in_row: int) -> None:
        """A step whose loss or gradient was not finite made no update; too many in a row end the run."""
        settings = self.settings
        problem = skipped.reason
        self.skipped_steps.append(step)
        self.progress(ProgressEvent("skip", step, settings.steps, message=f"step skipped: {problem}"))
        if not skipped.counts_toward_limit:
            return
        self._counted_skips += 1
        if self._counted_skips == 1:
            warnings.warn(f"Step {step} was skipped because {problem}; the adapters were not updated.", RuntimeWarning, stacklevel=3)
        if bad_in_row < settings.max_bad_steps:
            return
        last_good = step - bad_in_row
        kept = ""
        if self.checkpoint_dir is not None:
            # Skipped steps never touched the adapters, so they are still the step-{last_good} ones.
            kept = f" The adapters as of step {last_good} are saved in {self.save_checkpoint(step)}."
        raise TrainerError(
            f"Training stopped at step {step}: {bad_in_row} steps in a row had a non-finite loss or gradient ({problem}).{kept} "
            "Lower the learning rate or train in bf16/fp32 instead of fp16, then resume."
        )

    def _train_step(self, step: int, parameters: list[torch.nn.Parameter]) -> tuple[float, SkippedStep | None]:
        """One optimizer step; returns (mean loss, None) or (nan, why the step was skipped)."""
        settings = self.settings
        total = 0.0
        for micro in range(settings.grad_accum):
            rng = generator(settings.seed, step, micro)
            seed_device_generator(self.device, mix_seed(settings.seed, step, micro, 3))  # LoRA dropout draws from the global stream
            indices = self._batch_indices(step, micro)
            with self._timed("data"):
                latents = self._batch_latents(indices, rng)
                text = self._batch_text(indices, self.text_encoder)
            with self._timed("forward"):
                loss = self._loss(self.unet, latents, text, rng)
            value = float(loss.detach())
            if not math.isfinite(value):
                return self._abandon_step(SkippedStep(f"the loss was {value}"))
            with self._timed("backward"):
                scaled = loss / settings.grad_accum
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            total += value
        with self._timed("optimizer"):
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            if settings.max_grad_norm > 0:
                norm = torch.nn.utils.clip_grad_norm_(parameters, settings.max_grad_norm)
            else:
                norm = torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
            if self.scaler is not None:
                # fp16: the scaler skips steps with inf/nan gradients itself and halves its scale, the only
                # time update() lowers it. Such skips calibrate the scale (kohya and the diffusers script
                # have them too); once it is down to 1 the gradients overflow unamplified, which is a failure.
                scale = self.scaler.get_scale()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                if self.scaler.get_scale() < scale:
                    if scale > 1:
                        return self._abandon_step(SkippedStep(
                            f"its fp16 gradients overflowed, so the loss scale was lowered to {_number(self.scaler.get_scale())}",
                            counts_toward_limit=False,
                        ))
                    return self._abandon_step(SkippedStep(f"its gradients overflowed fp16 even at a loss scale of {_number(scale)}"))
            elif not math.isfinite(float(norm)):
                return self._abandon_step(SkippedStep(f"the gradient norm was {float(norm)}"))
            else:
                self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return total / settings.grad_accum, None

    def _abandon_step(self, skipped: SkippedStep) -> tuple[float, SkippedStep]:
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the schedule follows the step count, updated or not
            self.lr_scheduler.step()
        return float("nan"), skipped


def train(
    base: BaseModel,
    dataset: ImageCaptionDataset,
    lora_settings: lora_lib.LoRASettings,
    settings: TrainSettings,
    **options: Any,
) -> TrainResult:
    """Train a LoRA; see ``Trainer`` for the options (device, progress, should_stop, checkpoint_dir, resume_from, init_lora)."""
    return Trainer(base, dataset, lora_settings, settings, **options).run()
