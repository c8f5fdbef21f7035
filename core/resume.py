"""Continuing training: a run's resumable checkpoints, and starting from an existing LoRA file.

A checkpoint keeps the exact adapter tensors, the optimizer, schedule and loss-scale
state and the loss history, so a resumed run finishes with the LoRA an uninterrupted
one would have. A checkpoint or LoRA file from another run, family or adapter type is
refused with a sentence saying what differs.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import checkpoints
from . import lora as lora_lib
from .errors import SettingsError
from .families import check_lora_family
from .progress import ProgressCallback, ProgressEvent
from .trainable import TrainableModels


@dataclass
class RunHistory:
    """What a run has done so far, carried through checkpoints."""

    losses: list[float] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    skipped_steps: list[int] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)
    checkpoint_bytes: int = 0
    validation: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out loss)
    best_checkpoint: str | None = None

    @property
    def best_validation(self) -> tuple[int, float] | None:
        """The lowest validation loss and its step (the earliest of equal ones)."""
        return min(self.validation, key=lambda point: (point[1], point[0])) if self.validation else None


def continuation_paths(resume_from, init_lora) -> tuple[Path | None, Path | None]:
    """(checkpoint to resume, LoRA file to start from), refused in one sentence when both are given or the file is missing."""
    resume = Path(resume_from) if resume_from else None
    start = Path(init_lora) if init_lora else None
    if start is not None and resume is not None:
        raise SettingsError("Give either a checkpoint to resume or a LoRA file to start from, not both.")
    if start is not None and not start.is_file():
        raise SettingsError(f"The LoRA file to start from, {start}, does not exist.")
    return resume, start


def run_state(trainer) -> dict[str, Any]:
    """What a resume must match: settings, adapters, dataset, base model, family and training target."""
    return {
        "settings": asdict(trainer.settings),
        "lora": asdict(trainer.lora_settings),
        "dataset_hash": trainer.dataset.content_hash,
        "base_hash": trainer.base.source_hash,
        "base_source": os.path.basename(trainer.base.source),
        "family": trainer.family.name,
        "global_micro_batch": trainer.plan.global_batch,  # batch size x processes: what a step's draws are defined on
        "world_size": trainer.group.world_size,
        "prediction_type": trainer.prediction_type,
    }


class TrainingCheckpoints:
    """Writes a run's checkpoints into one folder and reads them (or a LoRA file) back into the run."""

    def __init__(self, folder: Path | None, models: TrainableModels, state: dict[str, Any], keep_last: int, total_steps: int, progress: ProgressCallback):
        self.folder, self.models, self.state = folder, models, state
        self.keep_last, self.total_steps, self.progress = keep_last, total_steps, progress

    def save(self, step: int, optimizer, lr_scheduler, scaler, history: RunHistory, lora: lora_lib.LoRAWeights) -> Path:
        assert self.folder is not None
        training_state = {
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {},
            "loss_history": torch.tensor(history.losses, dtype=torch.float64),
            "lr_history": torch.tensor(history.learning_rates, dtype=torch.float64),
            "skipped_steps": torch.tensor(history.skipped_steps, dtype=torch.int64),
            "validation_steps": torch.tensor([step for step, _ in history.validation], dtype=torch.int64),
            "validation_losses": torch.tensor([loss for _, loss in history.validation], dtype=torch.float64),
            # The exact adapter tensors (lora.safetensors is the user's file; DoRA's dora_scale in it is converted).
            "adapters": self.models.adapter_states(),
        }
        final = checkpoints.write_checkpoint(self.folder, step, lora, training_state, self.state)
        history.checkpoints.append(str(final))
        protected = {Path(path) for path in (history.best_checkpoint, str(final) if self._is_best(step, history) else None) if path}
        removed = checkpoints.prune_checkpoints(self.folder, self.keep_last, protected) if self.keep_last else []
        history.checkpoints = [c for c in history.checkpoints if Path(c) not in removed]
        kept = checkpoints.find_checkpoints(self.folder)
        history.checkpoint_bytes = sum(checkpoints.folder_bytes(path) for path in kept)
        message = f"saved {final.name}; {len(kept)} checkpoint(s) use {history.checkpoint_bytes / 2**20:.1f} MB"
        if removed:
            message += f" (removed {', '.join(p.name for p in removed)})"
        self.progress(ProgressEvent("save", step, self.total_steps, message=message))
        return final

    @staticmethod
    def _is_best(step: int, history: RunHistory) -> bool:
        best = history.best_validation
        return best is not None and best[0] == step

    def restore(self, folder: Path, optimizer, scaler, history: RunHistory) -> int:
        """Load a checkpoint into the run; returns its step."""
        state, weights, training_state = checkpoints.read_checkpoint(folder)
        checkpoints.check_compatible(state, self.state, folder)
        adapters = training_state.get("adapters")
        if adapters is not None:
            self.models.load_adapter_states(adapters)
        else:  # checkpoints written before the exact adapter state was kept
            for model, naming in self.models.namings():
                lora_lib.load_kohya_into(model, weights.tensors, naming)
        optimizer.load_state_dict(training_state["optimizer"])
        if scaler is not None and training_state["scaler"]:
            scaler.load_state_dict(training_state["scaler"])
        history.losses = training_state["loss_history"].tolist()
        history.learning_rates = training_state["lr_history"].tolist()
        history.skipped_steps = training_state.get("skipped_steps", torch.zeros(0, dtype=torch.int64)).tolist()
        steps, losses = (training_state.get(key, torch.zeros(0)).tolist() for key in ("validation_steps", "validation_losses"))
        history.validation = [(int(step), float(loss)) for step, loss in zip(steps, losses)]
        best = history.best_validation
        kept = self.folder / f"checkpoint-{best[0]:06d}" if best and self.folder else None
        history.best_checkpoint = str(kept) if kept is not None and (kept / "state.json").is_file() else None
        return int(state["step"])

    def start_from_lora(self, path: Path, lora_settings: lora_lib.LoRASettings) -> int:
        """Start from an existing LoRA file (weights only); returns the step count in its metadata."""
        try:
            weights = lora_lib.read_lora_file(path)
        except Exception as error:
            raise SettingsError(f"{path.name} could not be read as a safetensors LoRA ({error.__class__.__name__}).") from None
        check_lora_family(weights.tensors, weights.metadata, self.models.family, path.name)
        self._check_init_lora(path, weights, lora_settings)
        for model, naming in self.models.namings():
            lora_lib.load_kohya_into(model, weights.tensors, naming)
        try:
            steps_done = int(weights.metadata.get("ss_steps", "0"))
        except ValueError:
            steps_done = 0
        if steps_done >= self.total_steps:
            raise SettingsError(
                f"{path.name} has already been trained for {steps_done} steps; set the total steps above {steps_done} to continue it."
            )
        return steps_done

    def _check_init_lora(self, path: Path, weights: lora_lib.LoRAWeights, lora_settings: lora_lib.LoRASettings) -> None:
        unet = self.models.namings()[0]
        unet_stems = lora_lib.file_module_stems(weights.tensors, unet[1].prefix)
        text_prefixes = [slot.kohya_prefix for slot in self.models.slots]
        te_stems = set().union(*(lora_lib.file_module_stems(weights.tensors, prefix) for prefix in text_prefixes))
        if not unet_stems and not te_stems:
            raise SettingsError(
                f"{path.name} holds no kohya-format {self.models.family.label} LoRA weights "
                f"({unet[1].prefix}*/{'/'.join(text_prefixes)}* keys with .lora_down/.lora_up, or LyCORIS .hada_*/.lokr_*)."
            )
        kinds = lora_lib.file_adapter_types(weights.tensors)
        if kinds != {lora_settings.adapter}:
            raise SettingsError(
                f"{path.name} holds {' and '.join(sorted(kinds))} adapters but this run trains {lora_settings.adapter}; "
                f"set the adapter type to {sorted(kinds)[0]} to continue it."
            )
        ours = {stem for name, _ in lora_lib.lora_layers(self.models.unet) for stem in unet[1].stems(name)}
        outside = sorted(unet_stems - ours)
        if outside:
            raise SettingsError(
                f"{path.name} adapts {len(outside)} UNet layers that this run's targets do not include (e.g. {outside[0]}); "
                "choose the targets it was trained with (attention, kohya, kohya+conv or a pattern)."
            )
        if te_stems and not self.models.trains_text:
            raise SettingsError(f"{path.name} also adapts the text encoder; turn text-encoder training on to continue it.")
        has_dora = any(k.endswith(".dora_scale") for k in weights.tensors)
        if has_dora and not lora_settings.use_dora:
            raise SettingsError(f"{path.name} is a DoRA (it has dora_scale keys); turn DoRA on to continue it.")
