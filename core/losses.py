"""The denoising objective, in noise space (comparable to kohya's and diffusers' losses).

Options, each as kohya/diffusers define them:
- prediction target: ε or v (the base scheduler's own, unless overridden);
- min-SNR-γ weighting (Hang et al. 2023): weight min(SNR, γ)/SNR for ε,
  min(SNR, γ)/(SNR + 1) for v;
- noise offset: a per-image, per-channel constant added to the noise;
- pseudo-Huber instead of MSE: 2c(sqrt(r² + c²) - c), which equals r² for
  small residuals and grows like 2c|r| for large ones (kohya's ``huber``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import SettingsError

PREDICTIONS = ("auto", "epsilon", "v")
LOSSES = ("mse", "huber")
# kohya's default huber_c.
DEFAULT_HUBER_C = 0.1
_SCHEDULER_NAMES = {"epsilon": "epsilon", "v": "v_prediction"}


def resolve_prediction_type(setting: str, scheduler) -> str:
    """``auto`` means the base model's scheduler config; returns a diffusers prediction_type."""
    if setting not in PREDICTIONS:
        raise SettingsError(f"Prediction must be one of {', '.join(PREDICTIONS)}, got {setting!r}.")
    if setting == "auto":
        found = scheduler.config.prediction_type
        if found not in ("epsilon", "v_prediction"):
            raise SettingsError(f"The base model predicts {found!r}; only epsilon and v prediction can be trained.")
        return found
    return _SCHEDULER_NAMES[setting]


def training_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, prediction_type: str | None = None) -> torch.Tensor:
    """ε for epsilon-prediction, v for v-prediction (default: from the scheduler config)."""
    if (prediction_type or scheduler.config.prediction_type) == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise


def signal_to_noise(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """SNR(t) = ᾱ_t / (1 - ᾱ_t), in float64 on the CPU, then float32 on the timesteps' device."""
    alphas_cumprod = scheduler.alphas_cumprod.double()[timesteps.cpu().long()]
    return (alphas_cumprod / (1.0 - alphas_cumprod)).float().to(timesteps.device)


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    snr = signal_to_noise(scheduler, timesteps)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1.0) if prediction_type == "v_prediction" else clipped / snr


def add_noise_offset(noise: torch.Tensor, offset: float, rng: torch.Generator, draws: int | None = None, part: slice = slice(None)) -> torch.Tensor:
    """Shift each image's noise by offset·N(0,1) per channel, so the model learns to change mean brightness.
    ``draws`` shifts are drawn (the global batch of several processes) and ``part`` of them used."""
    if not offset:
        return noise
    shift = torch.randn(draws or noise.shape[0], noise.shape[1], 1, 1, generator=rng)[part].to(noise.device, noise.dtype)
    return noise + offset * shift


def denoising_loss(
    prediction: torch.Tensor,
    target: torch.Tensor,
    kind: str = "mse",
    weights: torch.Tensor | None = None,
    huber_c: float = DEFAULT_HUBER_C,
) -> torch.Tensor:
    """Mean loss over the batch; ``weights`` (one per image) scale each image's mean loss."""
    prediction, target = prediction.float(), target.float()
    if kind == "mse":
        if weights is None:
            return F.mse_loss(prediction, target)
        elementwise = (prediction - target) ** 2
    elif kind == "huber":
        elementwise = 2 * huber_c * (torch.sqrt((prediction - target) ** 2 + huber_c ** 2) - huber_c)
    else:
        raise SettingsError(f"Loss must be one of {', '.join(LOSSES)}, got {kind!r}.")
    per_image = elementwise.mean(dim=tuple(range(1, elementwise.ndim)))
    if weights is not None:
        per_image = per_image * weights.to(per_image.device, per_image.dtype)
    return per_image.mean()
