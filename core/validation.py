"""Validation while training: held-out images, their loss at fixed noises and timesteps every N steps.

The held-out images are never trained on. They are either a separate dataset or a part of the
training one chosen with the run's seed (a fraction below 1, or a count). Their latents and caption
conditionings are cached like the training ones, without flips or caption augmentation, so each
point of the validation curve measures the same thing and a resumed run continues the same curve.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from .batching import BatchPlan
from .caches import CaptionConditioning, ImageLatents
from .dataset import ImageCaptionDataset
from .errors import SettingsError
from .progress import ProgressEvent
from .seeding import generator
from .train_settings import TrainSettings

VALIDATION_POINTS = 20  # validations over a run when no interval is given
MAX_VALIDATION_IMAGES = 64  # a larger held-out set is evaluated on its first 64 images, to keep each point cheap
SPLIT_SEED = 0x5E1EC7


def split_for_validation(dataset: ImageCaptionDataset, settings: TrainSettings, separate: ImageCaptionDataset | None):
    """(the images to train on, the held-out images or None)."""
    if separate is not None:
        if settings.validation_split:
            raise SettingsError("Give either a validation split or a validation dataset, not both.")
        if len(separate) == 0:
            raise SettingsError("The validation dataset has no images.")
        return dataset, separate
    split = settings.validation_split
    if not split:
        return dataset, None
    total = len(dataset)
    held = int(split) if split >= 1 else max(1, round(split * total))
    if held >= total:
        raise SettingsError(
            f"A validation split of {split:g} holds out {held} of the {total} images and leaves none to train on; "
            "lower the split or add images."
        )
    order = torch.randperm(total, generator=generator(settings.seed, SPLIT_SEED)).tolist()
    held_out = sorted(order[:held])
    kept = sorted(order[held:])
    return (
        dataset.subset(kept, f"{held} image(s) held out for validation"),
        dataset.subset(held_out, f"held out for validation from {total} images"),
    )


class Validation:
    """The held-out images' caches and the validation curve of a run."""

    def __init__(self, dataset: ImageCaptionDataset, settings: TrainSettings, encode_images, encode_text, scale: int, device, timer, trains_text: bool):
        still = replace(settings, random_flip=False, caption_dropout=0.0, shuffle_tags=False, tag_dropout=0.0, crop="center")
        plan = BatchPlan(dataset, still)
        self.dataset = dataset
        self.images = ImageLatents(plan, encode_images, scale, device, timer)
        self.captions = CaptionConditioning(plan, encode_text, device, timer, trains_text)
        self.every = settings.validation_every or max(1, settings.steps // VALIDATION_POINTS)
        self.count = min(len(dataset), MAX_VALIDATION_IMAGES)
        self.keep_best = settings.keep_best

    def record(self, step: int, loss: float, history, save_checkpoint, total: int) -> ProgressEvent:
        """Add a point to the curve; with keep best, a checkpoint when it is the lowest so far. Returns the event to report."""
        history.validation.append((step, loss))
        best = history.best_validation == (step, loss)
        if best and self.keep_best and save_checkpoint is not None:
            history.best_checkpoint = str(save_checkpoint(step))
        message = f"validation loss {loss:.4f}" + (" (best so far)" if best else "")
        return ProgressEvent("validation", step, total, loss=loss, message=message)

    def due(self, step: int, total: int) -> bool:
        return step % self.every == 0 or step == total

    def summary(self) -> str:
        return f"{len(self.dataset)} image(s), every {self.every} steps"
