"""Training settings: every option of a run, with its default and its one-sentence check."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from . import buckets as buckets_lib
from .augment import CaptionAugmentation
from .errors import SettingsError
from .losses import LOSSES, PREDICTIONS
from .optim import LR_SCHEDULERS, check_optimizer, warmup_step_count

CROP_MODES = ("center", "random")


@dataclass(frozen=True)
class TrainSettings:
    steps: int = 1000
    learning_rate: float = 1e-4
    batch_size: int = 1
    grad_accum: int = 1
    resolution: int | None = 512  # None: the base model's own size (SD1.x 512, SD2.x 768-v 768, SDXL 1024)
    seed: int = 0
    lr_scheduler: str = "cosine"
    warmup_steps: float = 0  # steps, or a fraction of the run when below 1.0
    max_grad_norm: float = 1.0
    # --- optimization depth: optimizer, losses, failure handling, previews (core/optim.py, core/losses.py)
    optimizer: str = "adamw"
    text_encoder_learning_rate: float | None = None  # None means the UNet's learning rate
    text_encoder_2_learning_rate: float | None = None  # SDXL's OpenCLIP bigG; None means the text-encoder rate
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
    compile: bool = False  # torch.compile the UNet step (core/compiling.py)
    crop: str = "center"
    random_flip: bool = True
    # Data options (see core/augment.py and core/buckets.py); defaults change nothing.
    caption_dropout: float = 0.0
    shuffle_tags: bool = False
    keep_tokens: int = 0
    tag_dropout: float = 0.0
    bucket: bool | None = False  # None: the model family's choice (on for SDXL)
    max_area: int = 0  # bucket area limit in px; 0 = resolution squared
    no_upscale: bool = False
    save_every: int = 0
    # Validation (core/validation.py): held-out images evaluated at fixed noises and timesteps during the run.
    validation_split: float = 0.0  # a fraction below 1, or a count of images; 0 turns validation off
    validation_every: int = 0  # steps between validations; 0 means twenty over the run
    keep_best: bool = False  # keep the checkpoint of the best validation loss
    cache_latents: bool = True
    cache_text: bool = True
    output_name: str = "lora"

    @property
    def caption_augmentation(self) -> CaptionAugmentation:
        return CaptionAugmentation(self.caption_dropout, self.shuffle_tags, self.keep_tokens, self.tag_dropout)

    def for_base(self, base) -> "TrainSettings":
        """These settings with what was left to the model family filled in: resolution and bucket None."""
        family = base.model_family
        resolution = self.resolution or family.training_resolution(base)
        bucket = family.default_bucket if self.bucket is None else self.bucket
        return replace(self, resolution=resolution, bucket=bucket)

    def text_encoder_rates(self) -> tuple[float, float]:
        """Learning rates of the first and second text encoder (each defaults to the one before it)."""
        first = self.text_encoder_learning_rate if self.text_encoder_learning_rate is not None else self.learning_rate
        return first, self.text_encoder_2_learning_rate if self.text_encoder_2_learning_rate is not None else first

    @property
    def bucket_area(self) -> int:
        return self.max_area or (self.resolution or 0) ** 2

    def _validate_data(self) -> None:
        self.caption_augmentation.validate()
        if not isinstance(self.max_area, int) or self.max_area < 0:
            raise SettingsError(f"Bucket max area must be 0 (resolution squared) or a pixel count, got {self.max_area}.")
        if self.max_area and not buckets_lib.BUCKET_STEP ** 2 <= self.max_area <= 4096 * 4096:
            raise SettingsError(f"Bucket max area {self.max_area} px is outside 64x64 to 4096x4096.")
        if (self.no_upscale or self.max_area) and self.bucket is False:
            raise SettingsError("No-upscale and max area apply to aspect-ratio buckets; turn bucketing on.")

    def validate(self, dataset_size: int | None = None) -> None:
        checks = [
            (isinstance(self.steps, int) and self.steps >= 1, f"Training steps must be at least 1, got {self.steps}."),
            (math.isfinite(self.learning_rate) and self.learning_rate > 0, f"Learning rate must be a positive number, got {self.learning_rate}."),
            (isinstance(self.batch_size, int) and self.batch_size >= 1, f"Batch size must be at least 1, got {self.batch_size}."),
            (isinstance(self.grad_accum, int) and self.grad_accum >= 1, f"Gradient accumulation must be at least 1, got {self.grad_accum}."),
            (self.resolution is None or (self.resolution >= 64 and self.resolution % 64 == 0),
             f"Resolution must be a multiple of 64 and at least 64, got {self.resolution}."),
            (self.resolution is None or self.resolution <= 4096, f"Resolution {self.resolution} is over 4096 px; SD1.x is trained at 512, SDXL at 1024."),
            (self.lr_scheduler in LR_SCHEDULERS, f"LR scheduler must be one of {', '.join(LR_SCHEDULERS)}, got {self.lr_scheduler!r}."),
            (0 <= self.warmup_steps and (self.warmup_steps < 1 or float(self.warmup_steps).is_integer()),
             f"Warm-up must be a whole number of steps or a fraction below 1.0, got {self.warmup_steps}."),
            (warmup_step_count(self.warmup_steps, self.steps) <= self.steps or self.lr_scheduler == "constant",
             f"Warm-up ({self.warmup_steps} steps) is longer than the run ({self.steps} steps)."),
            (self.text_encoder_learning_rate is None or (math.isfinite(self.text_encoder_learning_rate) and self.text_encoder_learning_rate > 0),
             f"Text-encoder learning rate must be a positive number, got {self.text_encoder_learning_rate}."),
            (self.text_encoder_2_learning_rate is None or (math.isfinite(self.text_encoder_2_learning_rate) and self.text_encoder_2_learning_rate > 0),
             f"The second text encoder's learning rate must be a positive number, got {self.text_encoder_2_learning_rate}."),
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
            (self.validation_split >= 0 and (self.validation_split < 1 or float(self.validation_split).is_integer()),
             f"The validation split must be a fraction below 1 or a whole number of images, got {self.validation_split}."),
            (isinstance(self.validation_every, int) and self.validation_every >= 0, f"The validation interval cannot be negative, got {self.validation_every}."),
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
