"""The LoRA training loop, the same for every model family.

What makes it fast and small compared with the diffusers example script:
every image goes through the VAE once (latents cached, both flips when
flipping is on), every caption through the text encoders once while they are
frozen, and only the denoiser with its adapters stays on the accelerator during
the loop. Randomness is derived from (seed, step), so a run resumed from a
checkpoint continues exactly as the uninterrupted run would have.

The loop knows a family only through ``core.families.ModelFamily``: the data order
is ``core.batching``, the caches ``core.caches``, the trained modules
``core.trainable``, checkpoints ``core.resume`` and the file ``core.export``.
"""
from __future__ import annotations

import gc
import math
import os
import statistics
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from . import checkpoints
from . import lora as lora_lib
from .base_model import BaseModel
from .batching import BatchIndices, BatchPlan
from .caches import MAX_TEXT_VARIANTS, CaptionConditioning, ImageLatents, fill_caches
from .compiling import compile_before_first_step, compile_errors, compiled_graphs
from .cpu_kernels import ALL_KERNELS, CpuKernelChoice
from .dataset import ImageCaptionDataset
from .distributed import SINGLE, ProcessGroup, is_peer_failure, peer_lost_message
from .devices import autocast_for, keep_freed_memory_for_reuse, resolve_precision, seed_device_generator, torch_dtype, usable_device
from .errors import SettingsError, TrainerError
from .export import export_lora
from .locking import FolderLock
from .losses import add_noise_offset, denoising_loss, resolve_prediction_type
from .optim import SkippedStep, apply_gradients, make_optimizer
from .progress import ProgressCallback, ProgressEvent, StopCheck, never_stop, no_progress, optional
from .resume import RunHistory, TrainingCheckpoints, continuation_paths, run_state
from .seeding import generator, mix_seed
from .timing import PhaseTimer
from .train_settings import CROP_MODES, TrainSettings
from .trainable import TrainableModels
from .validation import Validation, split_for_validation

__all__ = [
    "BatchIndices", "CROP_MODES", "MAX_TEXT_VARIANTS", "STEP_PHASES", "SkippedStep", "TrainResult", "TrainSettings", "Trainer",
    "generator", "mix_seed", "train",
]

EVAL_IMAGES = 4
EVAL_DRAWS = 2
EVAL_SEED = 20240611
# The phases of a training step, each timed on its own; vae and text_encoder take time only when that model runs
# every step (latents or text not cached, or the text encoder trained).
STEP_PHASES = ("data", "vae", "text_encoder", "forward", "backward", "optimizer")


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
    model_family: str = "sd1"
    prediction_type: str = "epsilon"
    prediction_reason: str = ""
    resolution: int = 0
    world_size: int = 1
    global_batch_size: int = 1  # batch size x processes x gradient accumulation
    validation_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out loss)
    best_validation: tuple[int, float] | None = None
    best_checkpoint: str | None = None  # with keep best: the checkpoint of the lowest validation loss
    compiled_graphs: int | None = None  # with compile: the UNet graphs compiled (more than one: recompiles)

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
            "model_family": self.model_family,
            "prediction_type": self.prediction_type,
            "prediction_reason": self.prediction_reason,
            "resolution": self.resolution,
            "world_size": self.world_size,
            "global_batch_size": self.global_batch_size,
            "validation_losses": [[step, loss] for step, loss in self.validation_losses],
            "best_validation_step": self.best_validation[0] if self.best_validation else None,
            "best_validation_loss": self.best_validation[1] if self.best_validation else None,
            "best_checkpoint": self.best_checkpoint,
            "compiled_graphs": self.compiled_graphs,
        }


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
        cpu_kernels: CpuKernelChoice = ALL_KERNELS,
        validation_dataset: ImageCaptionDataset | None = None,
        group: ProcessGroup = SINGLE,
    ):
        """``group`` is the process group of a data-parallel run (``core.distributed``): this process trains its
        slice of every global batch, and only the main one reports progress and writes files.
        ``validation_dataset`` is measured during the run instead of a held-out part (``validation_split``).
        ``release_frozen_models`` frees the VAE, text encoders and base UNet weights once they are no
        longer needed (after caching; the base afterwards is unusable): for one-shot runs like the CLI.
        ``cpu_kernels`` chooses which of ``core.cpu_kernels`` a CPU run uses (all; fewer only to measure them)."""
        settings, dataset, held_out = checked_inputs(base, dataset, lora_settings, settings, validation_dataset, group)
        self.group = group
        self.base, self.dataset, self.lora_settings, self.settings = base, dataset, lora_settings, settings
        self.family = base.model_family
        self.device = usable_device(device)
        self.precision = resolve_precision(settings.precision, self.device)
        self.dtype = torch_dtype(self.precision)
        self.progress = optional(progress) if group.is_main else no_progress
        self.should_stop = should_stop or never_stop
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        if settings.save_every and not self.checkpoint_dir:
            raise SettingsError("Saving every N steps needs a checkpoint folder.")
        if settings.keep_best and (held_out is None or not self.checkpoint_dir):
            raise SettingsError("Keeping the best checkpoint needs validation (a validation split or dataset) and a checkpoint folder.")
        if self.device.type == "cpu":
            keep_freed_memory_for_reuse()
        self.resume_from, self.init_lora = continuation_paths(resume_from, init_lora)
        self.prediction_type = resolve_prediction_type(settings.prediction, base.noise_scheduler)
        self.objective = self.family.objective(base, self.prediction_type)
        self.timer = PhaseTimer(self.device)
        self.plan = BatchPlan(dataset, settings, group.world_size, group.rank)
        self.models = TrainableModels(
            base, lora_settings, settings, self.device, self.dtype, release_frozen_models, cpu_kernels, group,
        )
        self.images = ImageLatents(self.plan, self._encode_images, base.vae_scale_factor, self.device, self.timer)
        self.captions = CaptionConditioning(self.plan, self._encode_text, self.device, self.timer, self.models.trains_text)
        self.validation = None if held_out is None else Validation(
            held_out, settings, self._encode_images, self._encode_text, base.vae_scale_factor, self.device, self.timer, self.models.trains_text,
        )
        self.history = RunHistory()
        self.saver = TrainingCheckpoints(self.checkpoint_dir, self.models, run_state(self), settings.keep_last, settings.steps, self.progress)
        self.started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")

    @property
    def unet(self):
        return self.models.unet

    @property
    def text_encoder(self):
        """The (first) text encoder as the run uses it: the trained copy, or the frozen base one."""
        return self.models.text_encoders[0]

    # ------------------------------------------------------------------ encoding

    def _autocast(self):
        return autocast_for(self.device, self.dtype)

    def _encode_images(self, pixels: torch.Tensor, seed: int) -> torch.Tensor:
        vae = self.base.vae
        pixels = pixels.to(self.device, next(vae.parameters()).dtype)
        # bf16 keeps fp32's range, so the VAE cannot overflow in it and encodes about twice as fast (as in the diffusers
        # script and kohya's default); fp16 can overflow in the SD and SDXL VAEs, so they encode in fp32.
        with self._autocast() if self.dtype == torch.bfloat16 else nullcontext():
            return self.family.encode_images(vae, pixels, generator(self.settings.seed, seed, 31))

    def _encode_text(self, encoders, captions: list[str]):
        with self._autocast():
            return self.family.encode_text(encoders, self.base.tokenizers, captions, self.device)

    # ------------------------------------------------------------------ loss and evaluation

    def batch_loss(self, unet, latents: torch.Tensor, text, size_ids: torch.Tensor, rng: torch.Generator, timesteps=None,
                   plain: bool = False, part: slice = slice(None)) -> torch.Tensor:
        """Loss of one batch in the objective's space; ``plain`` (the eval loss) ignores offset, weighting and Huber.
        With several processes ``latents`` are this process's ``part`` of the global batch, and the noise, timesteps
        and offsets are drawn for the global batch and sliced, as one process would draw them."""
        settings, objective = self.settings, self.objective
        draws = self.plan.global_batch if part != slice(None) else latents.shape[0]
        noise = torch.randn((draws, *latents.shape[1:]), generator=rng)[part].to(self.device)
        if timesteps is None:
            timesteps = objective.draw_timesteps(draws, rng)[part]
        if not plain:
            # Drawn after noise and timesteps, so a run without offset keeps the same random stream.
            noise = add_noise_offset(noise, settings.noise_offset, rng, draws, part)
        timesteps = timesteps.to(self.device)
        noisy = objective.noisy(latents, noise, timesteps)
        target = objective.target(latents, noise, timesteps)
        with self._autocast():
            prediction = self.family.predict(unet, noisy.to(self.dtype), timesteps, text, size_ids)
        if plain:
            return denoising_loss(prediction, target)
        weights = objective.loss_weights(timesteps, settings.min_snr_gamma)
        return denoising_loss(prediction, target, settings.loss, weights, settings.huber_c)

    def evaluate(self) -> float:
        """Loss at fixed noises and timesteps on the first training images: comparable across runs."""
        return self._fixed_loss(self.images, self.captions, min(EVAL_IMAGES, len(self.dataset)))

    @torch.no_grad()
    def _fixed_loss(self, images: ImageLatents, captions: CaptionConditioning, count: int) -> float:
        """Mean plain loss over the first ``count`` images of a cache, at the same noises and timesteps every time."""
        rng = generator(EVAL_SEED)
        size = self.settings.resolution // self.base.vae_scale_factor
        timesteps = self.objective.eval_timesteps(EVAL_DRAWS)
        losses = []
        for index in range(count):
            latent, size_ids = images.eval_item(index, size)
            text = captions.batch([index], self.models.text_encoders)
            # All draws of an image in one batch: one pass instead of EVAL_DRAWS (the loss is their mean either way).
            texts = {key: value.expand(EVAL_DRAWS, *value.shape[1:]) for key, value in text.items()}
            latents, sizes = latent.expand(EVAL_DRAWS, -1, -1, -1), size_ids.expand(EVAL_DRAWS, -1)
            losses.append(float(self.batch_loss(self.models.unet, latents, texts, sizes, rng, timesteps=timesteps, plain=True)))
        return sum(losses) / len(losses)

    def _validate(self, step: int) -> None:
        """The held-out loss now (in eval mode: no adapter dropout)."""
        self.models.train_mode(False)
        try:
            with self.timer("validation"):
                loss = self._fixed_loss(self.validation.images, self.validation.captions, self.validation.count)
        finally:
            self.models.train_mode(True)
        save_best = self.save_checkpoint if self.checkpoint_dir is not None else None
        self.progress(self.validation.record(step, loss, self.history, save_best, self.settings.steps))

    # ------------------------------------------------------------------ checkpoints, previews

    def save_checkpoint(self, step: int) -> Path:
        """Write a checkpoint (the main process; the others only name it: one writer)."""
        if not self.group.is_main:
            return self.checkpoint_dir / f"checkpoint-{step:06d}"
        return self.saver.save(step, self.optimizer, self.lr_scheduler, self.scaler, self.history, export_lora(self, step))

    def _starting_step(self) -> int:
        if self.resume_from is not None:
            return self.saver.restore(checkpoints.resolve_resume_path(self.resume_from), self.optimizer, self.scaler, self.history)
        if self.init_lora is not None:
            return self.saver.start_from_lora(self.init_lora, self.lora_settings)
        return 0

    def _fast_forward_schedule(self, step: int) -> None:
        """Put the LR schedule at ``step`` of *this* run's settings (total steps may have changed)."""
        if step <= 0:
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()" does not apply here
            self.lr_scheduler.last_epoch = step - 1
            self.lr_scheduler.step()

    def _sample(self, step: int) -> None:
        """Preview images with the current adapters; saved under the checkpoint folder, newest to the callback."""
        from .sampling import save_previews, training_previews

        with self.timer("sample"):
            images = training_previews(self.family, self.models, self.settings, self.device, self.dtype)
        if self.checkpoint_dir is not None:
            self.history.samples += [str(p) for p in save_previews(images, self.checkpoint_dir / "samples", step)]
        self.progress(ProgressEvent("sample", step, self.settings.steps, preview=images[-1], message=f"preview at step {step}"))

    def _restore_base(self) -> None:
        self.models.restore()
        for cache in (self.images, self.captions, *((self.validation.images, self.validation.captions) if self.validation else ())):
            cache.clear()

    # ------------------------------------------------------------------ the run

    def run(self) -> TrainResult:
        """Train. A checkpoint folder is locked for the whole run: one training per folder at a time."""
        writes = self.checkpoint_dir is not None and self.group.is_main
        with FolderLock(self.checkpoint_dir) if writes else nullcontext():
            if writes:
                checkpoints.remove_unfinished(self.checkpoint_dir)
            try:
                return self._run()
            except torch.OutOfMemoryError:
                pass
            except RuntimeError as error:
                if self.group.active and is_peer_failure(error):  # e.g. raised by DDP's gradient exchange in backward
                    raise TrainerError(peer_lost_message(error)) from None
                if "can't allocate memory" not in str(error):
                    raise
        # Raised outside the except block so the failed step's tensors (held by the traceback) are freed first.
        raise out_of_memory_advice(self.settings, self.device)

    def _run(self) -> TrainResult:
        self.history = RunHistory()
        self._counted_skips = 0
        rng_state = torch.random.get_rng_state()
        self._run_start = time.perf_counter()
        self.graphs_before_run = compiled_graphs() if self.settings.compile else 0
        try:
            caches = [(self.images, self.captions)] + ([(self.validation.images, self.validation.captions)] if self.validation else [])
            # Caching first: the VAE and text encoders leave the device before the UNet's training copy arrives, so the
            # two never share it (SDXL's caching at 1024 px would otherwise peak above an 8 GB card's memory).
            fill_caches(caches, self.models, self.progress, self.should_stop, self.group)
            self.models.inject()
            groups = self.models.parameter_groups()
            parameters = [p for group in groups for p in group["params"]]
            self.optimizer, self.lr_scheduler, self.scaler = make_optimizer(groups, self.settings, self.device, self.dtype)
            start_step = self._starting_step()
            self._fast_forward_schedule(start_step)
            with compile_errors() if self.settings.compile else nullcontext():
                if self.settings.compile and start_step < self.settings.steps:
                    compile_before_first_step(self, start_step)
                step, interrupted, step_times, first_step_at = self._loop(start_step, parameters)
            eval_before, eval_after, lora = self._finish(step, start_step, interrupted)
        finally:
            self._restore_base()
            torch.random.set_rng_state(rng_state)
        return run_result(self, lora, step, start_step, interrupted, step_times, first_step_at, eval_before, eval_after)

    def _loop(self, start_step: int, parameters: list[torch.nn.Parameter]) -> tuple[int, bool, list[float], float | None]:
        """Train from ``start_step`` to the end (or a cancel); returns (step, interrupted, step seconds, time to first step)."""
        settings, history = self.settings, self.history
        interrupted, step, first_step_at = False, start_step, None
        step_times: list[float] = []
        bad_in_row = 0
        smoothed = history.losses[-1] if history.losses else None
        self.models.train_mode(True)
        while step < settings.steps:
            if self.group.any(self.should_stop()):  # a cancel anywhere stops every process at the same step
                interrupted = True
                break
            step_start = time.perf_counter()
            loss_value, skipped = self._train_step(step, parameters)
            step += 1
            if first_step_at is None:
                first_step_at = time.perf_counter() - self._run_start
            step_times.append(time.perf_counter() - step_start)
            if skipped:
                bad_in_row += skipped.counts_toward_limit
                self._skip_step(step, skipped, bad_in_row)
            else:
                bad_in_row = 0
                history.losses.append(loss_value)
                history.learning_rates.append(self.lr_scheduler.get_last_lr()[0])
                smoothed = loss_value if smoothed is None else 0.9 * smoothed + 0.1 * loss_value
                recent = step_times[-20:]
                per_step = sum(recent) / len(recent)
                self.progress(ProgressEvent(
                    "train", step, settings.steps, loss=loss_value, smoothed_loss=smoothed,
                    lr=history.learning_rates[-1], seconds_per_step=per_step, eta_seconds=per_step * (settings.steps - step),
                ))
            if self.validation is not None and self.validation.due(step, settings.steps):
                self._validate(step)
            if settings.save_every and step % settings.save_every == 0 and step < settings.steps:
                self.save_checkpoint(step)
            if settings.sample_every and step % settings.sample_every == 0 and self.group.is_main:
                self._sample(step)
        self.models.train_mode(False)
        return step, interrupted, step_times, first_step_at

    def _finish(self, step: int, start_step: int, interrupted: bool) -> tuple[float | None, float | None, lora_lib.LoRAWeights]:
        """The final checkpoint, the eval losses before and after (not for a cancelled run), and the LoRA."""
        if self.checkpoint_dir is not None and (interrupted or step == self.settings.steps) and step > start_step:
            self.save_checkpoint(step)
        # A cancelled run ends at once; its checkpoint is what matters. The base model's loss is measured
        # here rather than before the first step (the frozen base gives the same number either way), so
        # training starts sooner: 8 forward passes are 5-9 s of a full-size model on a CPU.
        eval_before = eval_after = None
        if not interrupted:
            with self.timer("eval"):
                with self.models.adapters_disabled():
                    eval_before = self.evaluate()
                eval_after = self.evaluate()
        return eval_before, eval_after, export_lora(self, step)

    def _skip_step(self, step: int, skipped: SkippedStep, bad_in_row: int) -> None:
        """A step whose loss or gradient was not finite made no update; too many in a row end the run."""
        settings = self.settings
        problem = skipped.reason
        self.history.skipped_steps.append(step)
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
            indices = self.plan.batch_indices(step, micro)
            with self.timer("data"):
                latents, size_ids = self.images.batch(indices, rng)
                text = self.captions.batch(indices, self.models.forward_text_encoders)
            last = micro == settings.grad_accum - 1
            with self.group.no_sync(self.models.wrapped(), last), self.timer("forward"):
                loss = self.batch_loss(self.models.forward_unet, latents, text, size_ids, rng, part=indices.part)
            value = self.group.mean(float(loss.detach()))  # every process decides on the same number
            if not math.isfinite(value):
                return self._abandon_step(SkippedStep(f"the loss was {value}"))
            with self.timer("backward"):
                scaled = loss / settings.grad_accum
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            total += value
        with self.timer("optimizer"):
            skipped = apply_gradients(self.optimizer, self.scaler, parameters, settings.max_grad_norm)
            if skipped is not None:
                return self._abandon_step(skipped)
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return total / settings.grad_accum, None

    def _abandon_step(self, skipped: SkippedStep) -> tuple[float, SkippedStep]:
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the schedule follows the step count, updated or not
            self.lr_scheduler.step()
        return float("nan"), skipped


def checked_inputs(base, dataset, lora_settings, settings: TrainSettings, validation_dataset, group: ProcessGroup):
    """(settings with the family's defaults, the images to train on, the held-out ones), or one sentence on what is wrong."""
    lora_settings.validate()
    settings.validate(dataset.num_samples)
    settings = settings.for_base(base)
    if len(dataset) == 0:
        raise SettingsError("The dataset is empty.")
    dataset, held_out = split_for_validation(dataset, settings, validation_dataset)
    settings.validate(dataset.num_samples)
    if group.active:
        global_batch = settings.batch_size * group.world_size
        if global_batch > dataset.num_samples:
            raise SettingsError(
                f"The global batch of {global_batch} images ({group.world_size} processes x batch size {settings.batch_size}) is larger "
                f"than the dataset ({dataset.num_samples} images with repeats); lower the batch size, use fewer processes or add repeats."
            )
        if not (settings.cache_latents and settings.cache_text):
            raise SettingsError("Several processes train from the caches; leave --no-cache out.")
    return settings, dataset, held_out


def run_result(trainer: Trainer, lora, step: int, start_step: int, interrupted: bool, step_times: list[float],
               first_step_at: float | None, eval_before: float | None, eval_after: float | None) -> TrainResult:
    history, settings = trainer.history, trainer.settings
    # Sampling time is not training time: leave the first step (and with it any warm-up) out of the per-step figure.
    steady = step_times[1:] if len(step_times) > 1 else step_times
    return TrainResult(
        lora=lora, steps=step, loss_history=history.losses, lr_history=history.learning_rates,
        seconds_per_step=statistics.median(steady) if steady else None, seconds_to_first_step=first_step_at,
        eval_loss_before=eval_before, eval_loss_after=eval_after, interrupted=interrupted, resumed_from_step=start_step,
        checkpoint_dir=str(trainer.checkpoint_dir) if trainer.checkpoint_dir else None, checkpoints=history.checkpoints,
        phase_seconds=trainer.timer.seconds, skipped_steps=history.skipped_steps, samples=history.samples,
        checkpoint_bytes=history.checkpoint_bytes, model_family=trainer.family.name, prediction_type=trainer.prediction_type,
        prediction_reason=trainer.base.prediction_reason if settings.prediction == "auto" else f"the prediction setting ({settings.prediction})",
        resolution=settings.resolution, world_size=trainer.group.world_size,
        global_batch_size=trainer.plan.global_batch * settings.grad_accum, validation_losses=history.validation,
        best_validation=history.best_validation, best_checkpoint=history.best_checkpoint,
        compiled_graphs=compiled_graphs() - trainer.graphs_before_run if settings.compile else None,
    )


def out_of_memory_advice(settings: TrainSettings, device: torch.device) -> TrainerError:
    """What to change after running out of memory, once the failed step's memory is freed."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return TrainerError(
        f"Out of memory while training at {settings.resolution} px with batch size {settings.batch_size}; "
        "use batch size 1, turn on gradient checkpointing, or lower the resolution."
    )


def train(
    base: BaseModel,
    dataset: ImageCaptionDataset,
    lora_settings: lora_lib.LoRASettings,
    settings: TrainSettings,
    **options: Any,
) -> TrainResult:
    """Train a LoRA; see ``Trainer`` for the options (device, progress, should_stop, checkpoint_dir, resume_from, init_lora)."""
    return Trainer(base, dataset, lora_settings, settings, **options).run()
