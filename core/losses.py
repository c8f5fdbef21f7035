"""The denoising objective, in noise space (comparable to kohya's and diffusers' losses)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def training_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """ε for epsilon-prediction models, v for v-prediction ones (from the scheduler config)."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise


def denoising_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(prediction.float(), target.float())
