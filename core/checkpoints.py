"""Resumable training checkpoints: ``checkpoint-NNNNNN/`` folders.

Each holds ``lora.safetensors`` (a normal kohya LoRA, loadable on its own),
``training_state.pt`` (optimizer, LR schedule, loss history; tensors and
plain containers only, read back with ``weights_only=True``) and
``state.json`` (step and the run's settings, to refuse a mismatched resume).
A checkpoint is written to a hidden staging folder and renamed into place,
so a crash never leaves a half-written checkpoint under the final name.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from . import lora as lora_lib
from .errors import TrainerError

CHECKPOINT_PATTERN = re.compile(r"checkpoint-(\d+)$")
# Settings that change what a step means, or what the optimizer state is; a resume must keep them.
# Learning rates, schedule, total steps, loss weighting and save/sample intervals may change.
RESUME_INVARIANTS = (
    "resolution", "grad_accum", "seed", "crop", "random_flip", "optimizer",
    "bucket", "max_area", "no_upscale", "caption_dropout", "shuffle_tags", "keep_tokens", "tag_dropout",
)
# Values a checkpoint written before a setting existed implicitly had.
DEFAULTS_BEFORE = {"optimizer": "adamw", "conv_rank": None, "conv_alpha": None, "use_dora": False, "adapter": "lora"}


def find_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = [(int(m[1]), p) for p in folder.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name)) and (p / "state.json").is_file()]
    return [path for _, path in sorted(found)]


def resolve_resume_path(path: str | os.PathLike) -> Path:
    target = Path(path)
    if (target / "state.json").is_file():
        return target
    checkpoints = find_checkpoints(target)
    if not checkpoints:
        raise TrainerError(f"No checkpoint to resume from in {target} (expected checkpoint-N folders with state.json).")
    return checkpoints[-1]


def read_run_state(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise TrainerError(f"Checkpoint {folder} is unreadable ({error.__class__.__name__}); resume from an earlier one.") from None


def check_compatible(saved: dict[str, Any], current: dict[str, Any], folder: Path) -> None:
    """Refuse a resume whose adapters, data, base or step meaning differ from this run's."""
    saved_family, current_family = saved.get("family", "sd1"), current.get("family", "sd1")
    if saved_family != current_family:
        from .families import family_named

        was, now = family_named(saved_family).label, family_named(current_family).label
        raise TrainerError(
            f"Cannot resume from {folder}: its LoRA was trained on an {was} base and this base model is {now}; "
            f"use the {was} base it was trained on, or another checkpoint folder for this {now} run."
        )
    saved_batch = saved.get("global_micro_batch", saved.get("settings", {}).get("batch_size"))
    if saved_batch != current.get("global_micro_batch"):
        raise TrainerError(
            f"Cannot resume from {folder}: it was trained with a global batch of {saved_batch} images a micro-step "
            f"({saved.get('world_size', 1)} process(es) x batch size {saved.get('settings', {}).get('batch_size')}) and this run's is "
            f"{current.get('global_micro_batch')} ({current.get('world_size', 1)} x {current['settings']['batch_size']}); "
            "keep processes x batch size the same (the data order is defined on it)."
        )
    differences = []
    saved_lora, current_lora = saved.get("lora", {}), current["lora"]
    differences += [
        f"LoRA {k} {saved_lora.get(k, DEFAULTS_BEFORE.get(k))!r} vs {current_lora[k]!r}"
        for k in current_lora if saved_lora.get(k, DEFAULTS_BEFORE.get(k)) != current_lora[k]
    ]
    if saved.get("dataset_hash") != current["dataset_hash"]:
        differences.append("the dataset (its images or captions changed)")
    if saved.get("base_hash") != current["base_hash"]:
        differences.append(f"the base model ({saved.get('base_source')} vs {current['base_source']})")
    if saved.get("prediction_type", current.get("prediction_type")) != current.get("prediction_type"):
        differences.append(f"the prediction target ({saved.get('prediction_type')} vs {current.get('prediction_type')})")
    saved_settings = saved.get("settings", {})
    differences += [
        f"{key} {saved_settings.get(key, DEFAULTS_BEFORE.get(key))!r} vs {current['settings'][key]!r}"
        for key in RESUME_INVARIANTS if saved_settings.get(key, DEFAULTS_BEFORE.get(key)) != current["settings"][key]
    ]
    if differences:
        raise TrainerError(
            f"Cannot resume from {folder}: it belongs to a different run ({'; '.join(differences[:4])}); "
            "use another checkpoint folder or the original settings."
        )


def write_checkpoint(folder: Path, step: int, weights: lora_lib.LoRAWeights, training_state: dict[str, Any], run_state: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"checkpoint-{step:06d}"
    staging = folder / f".checkpoint-{step:06d}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir()
        lora_lib.save_lora_file(weights, staging / "lora.safetensors")
        torch.save(training_state, staging / "training_state.pt")
        state = {**run_state, "step": step, "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        (staging / "state.json").write_text(json.dumps(state, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise TrainerError(f"Could not write checkpoint {final}: {error.strerror or error}; check free space and permissions.") from None
    return final


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def prune_checkpoints(folder: Path, keep_last: int, protected: set[Path] | frozenset = frozenset()) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints (and the ``protected`` ones); returns the removed folders."""
    existing = find_checkpoints(folder)
    removed = [path for path in existing[:-keep_last] if path not in protected] if keep_last > 0 else []
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def read_checkpoint(folder: Path) -> tuple[dict[str, Any], lora_lib.LoRAWeights, dict[str, Any]]:
    """Return (run state, LoRA weights, training state) of one checkpoint folder."""
    state = read_run_state(folder)
    try:
        weights = lora_lib.read_lora_file(folder / "lora.safetensors")
        training_state = torch.load(folder / "training_state.pt", map_location="cpu", weights_only=True)
    except Exception as error:
        raise TrainerError(f"Checkpoint {folder} is damaged ({error.__class__.__name__}); resume from an earlier one.") from None
    return state, weights, training_state


def remove_unfinished(folder: Path) -> None:
    """Delete staging folders and temp files a killed run left behind (never complete checkpoints)."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.is_dir() and path.name.startswith(".checkpoint-") and path.name.endswith(".partial"):
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_file() and path.name.startswith(".") and path.name.endswith(".tmp"):
            path.unlink(missing_ok=True)
