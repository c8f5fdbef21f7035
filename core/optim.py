"""Optimizer, learning-rate schedule and gradient scaler for a run.

The optimizers are the ones kohya and OneTrainer users reach for first:
AdamW (fused on CUDA and CPU), AdamW 8-bit (bitsandbytes), Adafactor (transformers)
and Prodigy (prodigyopt). The optional ones are imported only when chosen,
and a missing package is a one-sentence SettingsError, never an ImportError.
Schedules come from diffusers' ``get_scheduler``.
"""
from __future__ import annotations

import importlib.util
import math
import warnings
from dataclasses import dataclass

import torch

from .errors import SettingsError

LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
OPTIMIZERS = ("adamw", "adamw8bit", "adafactor", "prodigy")
# Which pip package each optional optimizer needs (import name, pip name).
OPTIONAL_PACKAGES = {"adamw8bit": ("bitsandbytes", "bitsandbytes"), "prodigy": ("prodigyopt", "prodigyopt")}
# diffusers' polynomial schedule decays towards this; it must stay below every learning rate.
POLYNOMIAL_LR_END = 1e-7
WEIGHT_DECAY = 1e-2


def optimizer_available(name: str) -> bool:
    package = OPTIONAL_PACKAGES.get(name)
    return package is None or importlib.util.find_spec(package[0]) is not None


def check_optimizer(name: str) -> None:
    """Refuse an unknown optimizer or one whose package is not installed, in one sentence."""
    if name not in OPTIMIZERS:
        raise SettingsError(f"Optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}.")
    if not optimizer_available(name):
        module, pip_name = OPTIONAL_PACKAGES[name]
        raise SettingsError(
            f"The {name} optimizer needs the {module} package, which is not installed; "
            f"run `pip install {pip_name}` in this Python environment or choose adamw."
        )


def warmup_step_count(warmup: float, total_steps: int) -> int:
    """Warm-up given in steps (>= 1) or as a fraction of the run (< 1.0)."""
    if warmup <= 0:
        return 0
    if warmup < 1.0:
        return int(math.ceil(warmup * total_steps))
    return int(warmup)


def optimizer_class_name(name: str) -> str:
    """What kohya writes in ``ss_optimizer`` for each choice."""
    return {
        "adamw": "torch.optim.AdamW",
        "adamw8bit": "bitsandbytes.optim.AdamW8bit",
        "adafactor": "transformers.optimization.Adafactor",
        "prodigy": "prodigyopt.Prodigy",
    }[name]


def build_optimizer(name: str, groups: list[dict], device: torch.device) -> torch.optim.Optimizer:
    """One optimizer over parameter groups that each carry their own ``lr``.

    The first group's rate is also the optimizer's default ``lr``: diffusers'
    polynomial schedule reads ``optimizer.defaults["lr"]`` as the peak.
    """
    check_optimizer(name)
    lr = groups[0]["lr"]
    if name == "adamw":
        options = dict(lr=lr, betas=(0.9, 0.999), weight_decay=WEIGHT_DECAY, eps=1e-8)
        if device.type in ("cuda", "cpu"):
            try:
                # One kernel for all adapters instead of ~10 small ops per tensor: the tiny model's optimizer phase 3.3 -> 1.4 ms a step.
                return torch.optim.AdamW(groups, fused=True, **options)
            except RuntimeError:  # torch before 2.4 has no fused CPU AdamW
                pass
        return torch.optim.AdamW(groups, **options)
    if name == "adamw8bit":
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit(groups, lr=lr, betas=(0.9, 0.999), weight_decay=WEIGHT_DECAY, eps=1e-8)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        # An explicit learning rate (kohya's recommended setting): the schedule stays ours, not Adafactor's.
        return Adafactor(groups, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False, weight_decay=0.0)
    from prodigyopt import Prodigy

    if any(group["lr"] < 0.1 for group in groups):
        warnings.warn(
            "Prodigy finds its own step size and treats the learning rate as a multiplier; 1.0 is the intended value, "
            "so a small learning rate makes it train very slowly.", UserWarning, stacklevel=3,
        )

    # Prodigy estimates the step size itself; lr is a multiplier (1.0 is its intended value).
    return Prodigy(groups, lr=lr, weight_decay=WEIGHT_DECAY, safeguard_warmup=True, use_bias_correction=True)


def make_optimizer(parameter_groups, settings, device: torch.device, dtype: torch.dtype):
    """Optimizer, diffusers schedule and (for fp16 only) a GradScaler.

    ``parameter_groups`` is a list of ``{"params": [...], "lr": float}``; a
    plain list of parameters is one group at ``settings.learning_rate``.
    """
    from diffusers.optimization import get_scheduler

    groups = list(parameter_groups)
    if groups and not isinstance(groups[0], dict):
        groups = [{"params": groups, "lr": settings.learning_rate}]
    groups = [group for group in groups if group["params"]]
    optimizer = build_optimizer(getattr(settings, "optimizer", "adamw"), groups, device)
    if settings.lr_scheduler == "polynomial" and min(g["lr"] for g in groups) <= POLYNOMIAL_LR_END:
        raise SettingsError(f"The polynomial schedule decays to {POLYNOMIAL_LR_END:g}, so every learning rate must be above it.")
    lr_scheduler = get_scheduler(
        settings.lr_scheduler, optimizer=optimizer,
        num_warmup_steps=warmup_step_count(settings.warmup_steps, settings.steps), num_training_steps=settings.steps,
        num_cycles=getattr(settings, "lr_cycles", 1),
    )
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return optimizer, lr_scheduler, scaler


@dataclass(frozen=True)
class SkippedStep:
    """Why a step made no update. fp16 loss-scale calibration skips (the scale still above 1) are normal
    and do not count toward ``max_bad_steps``; everything else does."""

    reason: str
    counts_toward_limit: bool = True


def _number(value: float) -> str:
    """A loss scale as people read it: 65536 rather than 6.5536e+04, 0.25 below one."""
    return f"{value:.0f}" if value >= 1 else f"{value:g}"


def apply_gradients(optimizer, scaler, parameters: list[torch.nn.Parameter], max_grad_norm: float) -> SkippedStep | None:
    """Unscale (fp16), clip and take the optimizer step; returns why no update was made, or None."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    if max_grad_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
    if scaler is None:
        if not math.isfinite(float(norm)):
            return SkippedStep(f"the gradient norm was {float(norm)}")
        optimizer.step()
        return None
    # fp16: the scaler skips steps with inf/nan gradients itself and halves its scale, the only
    # time update() lowers it. Such skips calibrate the scale (kohya and the diffusers script
    # have them too); once it is down to 1 the gradients overflow unamplified, which is a failure.
    scale = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    if scaler.get_scale() >= scale:
        return None
    if scale > 1:
        return SkippedStep(
            f"its fp16 gradients overflowed, so the loss scale was lowered to {_number(scaler.get_scale())}", counts_toward_limit=False,
        )
    return SkippedStep(f"its gradients overflowed fp16 even at a loss scale of {_number(scale)}")
