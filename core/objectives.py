"""What the denoiser learns to predict: the draws of a training step and the target they imply.

``DiffusionObjective`` is DDPM's (SD1.x, SD2.x, SDXL): integer timesteps, noise added by the
scheduler, ε or v as the target, min-SNR weights. A flow-matching family (Flux) brings an
objective of its own with the same methods; the training loop knows only these.
"""
from __future__ import annotations

import torch

from .losses import min_snr_weights, training_target


class DiffusionObjective:
    def __init__(self, scheduler, prediction_type: str):
        self.scheduler, self.prediction_type = scheduler, prediction_type

    @property
    def steps(self) -> int:
        return self.scheduler.config.num_train_timesteps

    def draw_timesteps(self, count: int, rng: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.steps, (count,), generator=rng)

    def eval_timesteps(self, draws: int) -> torch.Tensor:
        """Fixed timesteps spread over the schedule (the middle of each of ``draws`` equal parts)."""
        return torch.tensor([int((draw + 0.5) / draws * self.steps) for draw in range(draws)])

    def noisy(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.scheduler.add_noise(latents, noise, timesteps)

    def target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return training_target(self.scheduler, latents, noise, timesteps, self.prediction_type)

    def loss_weights(self, timesteps: torch.Tensor, min_snr_gamma: float) -> torch.Tensor | None:
        return min_snr_weights(self.scheduler, timesteps, min_snr_gamma, self.prediction_type) if min_snr_gamma else None
