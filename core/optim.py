"""Optimizer, learning-rate schedule and gradient scaler for a run."""
from __future__ import annotations

import torch

LR_SCHEDULERS = ("constant", "constant_with_warmup", "cosine", "linear")


def make_optimizer(parameters, settings, device: torch.device, dtype: torch.dtype):
    """AdamW (fused on CUDA) with diffusers' schedule; a GradScaler only for fp16."""
    from diffusers.optimization import get_scheduler

    optimizer = torch.optim.AdamW(
        parameters, lr=settings.learning_rate, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8,
        fused=True if device.type == "cuda" else None,
    )
    lr_scheduler = get_scheduler(
        settings.lr_scheduler, optimizer=optimizer,
        num_warmup_steps=settings.warmup_steps, num_training_steps=settings.steps,
    )
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
    return optimizer, lr_scheduler, scaler
