"""The advanced training settings, in one table: the CLI's flags and the Training Options node come from it.

Each row names a ``TrainSettings`` field; its type and default are the dataclass's own, so a setting
added to core appears with the same default on the command line and in the graph by adding one row.
``help`` is both the flag's help and the widget's tooltip.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .losses import LOSSES, PREDICTIONS
from .optim import OPTIMIZERS
from .train_settings import CROP_MODES, TrainSettings


@dataclass(frozen=True)
class Setting:
    field: str  # the TrainSettings field
    flag: str  # the CLI flag
    group: str  # the CLI's argument group
    help: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None  # widget step of a FLOAT
    unset: Any = None  # the widget value that stands for None (an optional number left to a default)

    @property
    def default(self) -> Any:
        return TRAIN_DEFAULTS[self.field]

    @property
    def kind(self) -> str:
        """bool, int, float, str, or lines (a tuple of strings: one a line in the graph, a repeated flag on the CLI)."""
        return _field_kinds()[self.field]


OPTIMIZER, LOSS, PREVIEWS, CAPTIONS, BUCKETS, VALIDATION, SPEED = (
    "optimizer and schedule", "loss", "previews", "images and captions", "aspect-ratio buckets", "validation", "speed",
)

ADVANCED_SETTINGS: tuple[Setting, ...] = (
    Setting("optimizer", "--optimizer", OPTIMIZER, "adamw (fused on CUDA), adamw8bit (needs bitsandbytes), adafactor, prodigy (needs prodigyopt; use a learning rate of 1)", choices=OPTIMIZERS),
    Setting("text_encoder_learning_rate", "--te-lr", OPTIMIZER, "text-encoder learning rate (unset: the UNet's); turns text-encoder training on on the CLI", minimum=0.0, maximum=1.0, step=1e-6, unset=0.0),
    Setting("text_encoder_2_learning_rate", "--te2-lr", OPTIMIZER, "SDXL's second text encoder (OpenCLIP bigG) learning rate (unset: the first text encoder's)", minimum=0.0, maximum=1.0, step=1e-6, unset=0.0),
    Setting("lr_cycles", "--lr-cycles", OPTIMIZER, "hard restarts of cosine_with_restarts", minimum=1, maximum=1000),
    Setting("grad_accum", "--grad-accum", OPTIMIZER, "micro-batches per optimizer step (the effective batch is batch size x this)", minimum=1, maximum=1024),
    Setting("max_grad_norm", "--max-grad-norm", OPTIMIZER, "gradient clipping norm; 0 turns clipping off", minimum=0.0, maximum=1000.0, step=0.1),
    Setting("max_bad_steps", "--max-bad-steps", OPTIMIZER, "non-finite losses in a row before training stops", minimum=1, maximum=10000),
    Setting("keep_last", "--keep-last", OPTIMIZER, "keep only the newest K checkpoints (0 keeps all; the best one is always kept with keep best)", minimum=0, maximum=10000),
    Setting("prediction", "--prediction", LOSS, "training target: auto (the base model's), epsilon or v", choices=PREDICTIONS),
    Setting("loss", "--loss", LOSS, "mse, or huber (kohya's pseudo-Huber: r² for small residuals, linear for large ones)", choices=LOSSES),
    Setting("huber_c", "--huber-c", LOSS, "the Huber loss's parameter c", minimum=1e-4, maximum=10.0, step=0.01),
    Setting("min_snr_gamma", "--min-snr-gamma", LOSS, "min-SNR-gamma loss weighting; 5 is usual, 0 turns it off", minimum=0.0, maximum=100.0, step=0.5),
    Setting("noise_offset", "--noise-offset", LOSS, "noise offset (0.05-0.1 usual; 0 turns it off): lets the LoRA change mean brightness", minimum=0.0, maximum=1.0, step=0.01),
    Setting("crop", "--crop", CAPTIONS, "center, or random crops (taken on the cached latent grid)", choices=CROP_MODES),
    Setting("caption_dropout", "--caption-dropout", CAPTIONS, "probability that a caption is replaced by the empty one", minimum=0.0, maximum=0.99, step=0.01),
    Setting("shuffle_tags", "--shuffle-tags", CAPTIONS, "shuffle comma-separated tags each time a caption is used"),
    Setting("keep_tokens", "--keep-tokens", CAPTIONS, "leading tags that stay in place when shuffling (the trigger word counts)", minimum=0, maximum=255),
    Setting("tag_dropout", "--tag-dropout", CAPTIONS, "probability that each tag after the kept ones is dropped", minimum=0.0, maximum=0.99, step=0.01),
    Setting("max_area", "--max-area", BUCKETS, "bucket area limit in px (0: the resolution squared)", minimum=0, maximum=4096 * 4096),
    Setting("no_upscale", "--no-upscale", BUCKETS, "never enlarge an image to fit a bucket"),
    Setting("sample_every", "--sample-every", PREVIEWS, "preview images every N steps (0: none), saved under the checkpoint folder", minimum=0, maximum=1_000_000),
    Setting("sample_prompts", "--sample-prompt", PREVIEWS, "prompts for previews (the CLI flag may repeat; in the graph one prompt a line)"),
    Setting("sample_seed", "--sample-seed", PREVIEWS, "seed of the previews", minimum=0, maximum=2**31 - 1),
    Setting("sample_steps", "--sample-steps", PREVIEWS, "denoising steps per preview (Euler)", minimum=1, maximum=200),
    Setting("sample_size", "--sample-size", PREVIEWS, "preview size in px (0: the training resolution)", minimum=0, maximum=4096),
    Setting("sample_guidance", "--sample-guidance", PREVIEWS, "classifier-free guidance of previews", minimum=0.0, maximum=30.0, step=0.5),
    Setting("validation_split", "--validation-split", VALIDATION, "images held out for validation: a fraction below 1 (0.1 = 10 %) or a count; 0 turns validation off", minimum=0.0, maximum=100000.0, step=0.01),
    Setting("validation_every", "--validation-every", VALIDATION, "validation loss every N steps (0: twenty times over the run)", minimum=0, maximum=1_000_000),
    Setting("keep_best", "--keep-best", VALIDATION, "keep the checkpoint of the best validation loss (never pruned by keep last)"),
    Setting("compile", "--compile", SPEED, "torch.compile the UNet step after a one-off compile before the first step (minutes; needs a C++ "
            "compiler, and Triton on CUDA). Measured slower per step on CPUs; may pay on a GPU: see docs/performance.md"),
)
TRAIN_DEFAULTS = {field.name: field.default for field in dataclasses.fields(TrainSettings)}


def _kind(annotation) -> str:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if annotation is bool or bool in args:
        return "bool"
    if annotation is int or (int in args and float not in args):
        return "int"
    if annotation is float or float in args:
        return "float"
    if typing.get_origin(annotation) is tuple:
        return "lines"
    return "str"


@lru_cache(maxsize=1)
def _field_kinds() -> dict[str, str]:
    return {name: _kind(annotation) for name, annotation in typing.get_type_hints(TrainSettings).items()}


def setting_named(field: str) -> Setting:
    return next(setting for setting in ADVANCED_SETTINGS if setting.field == field)


def from_widget(setting: Setting, value: Any) -> Any:
    """A widget value as the TrainSettings value: lines split, the ``unset`` value as None, numbers typed."""
    if setting.kind == "lines":
        return tuple(line.strip() for line in str(value or "").splitlines() if line.strip())
    if setting.unset is not None and value == setting.unset:
        return None
    return {"bool": bool, "int": int, "float": float, "str": str}[setting.kind](value)
