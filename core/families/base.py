"""The model-family interface: everything the engine needs to know about one kind of base model.

The training loop, the caches, checkpoints and export call these methods and never ask
which family they hold. A family says how to recognise its files, load them offline,
turn captions into what its denoiser is conditioned on, call the denoiser, what it is
trained to predict (its ``Objective``), how kohya names its LoRA modules and what
metadata the file carries, and how a preview is sampled.

The text encoders are a tuple of ``TextEncoderSlot``: SD1.x and SD2.x have one, SDXL
two; a family with a frozen-only encoder (Flux's T5) simply gives it no LoRA prefix.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import torch

if TYPE_CHECKING:
    from ..base_model import BaseModel
    from ..model_loading import CheckpointFile

TextConditioning = dict[str, torch.Tensor]  # e.g. {"hidden": (B, 77, D)} or SDXL's {"hidden", "pooled"}


@dataclass(frozen=True)
class TextEncoderSlot:
    """One text encoder of a family: where BaseModel keeps it and its tokenizer, and its LoRA key prefix."""

    attribute: str  # BaseModel attribute of the encoder: "text_encoder" or "text_encoder_2"
    tokenizer: str  # BaseModel attribute of its tokenizer
    kohya_prefix: str  # "lora_te_", "lora_te1_", "lora_te2_"
    label: str  # for messages: "text encoder", "CLIP-L text encoder", ...
    pad_token: str = "<|endoftext|>"  # SD2's and SDXL's OpenCLIP towers pad with "!" (token 0)


@dataclass(frozen=True)
class Prediction:
    """The training target a base model was made for, and why we think so (shown in the run summary)."""

    kind: str  # a diffusers prediction_type: "epsilon" or "v_prediction"
    reason: str


class ModelFamily:
    """One family of base models. Subclasses fill in the class attributes and methods."""

    name: str = ""  # stored in checkpoints and BaseModel.family: "sd1", "sd2", "sdxl"
    label: str = ""  # "SD1.x", "SD2.x", "SDXL"
    default_bucket: bool = False  # aspect-ratio buckets when the user leaves the choice to us
    # Cards with less memory than this need gradient checkpointing for a step at the family's size, batch 1
    # (the node turns it on there); None leaves the choice to the user.
    checkpointing_below_bytes: int | None = None
    text_encoders: tuple[TextEncoderSlot, ...] = ()
    denoiser_prefix: str = "lora_unet_"

    # ------------------------------------------------------------------ recognising files

    def claims_keys(self, keys: set[str]) -> bool:
        """Whether a single file with these tensor names belongs to this family."""
        raise NotImplementedError

    def refusal(self, file: "CheckpointFile") -> str | None:
        """Why a file this family claims cannot be trained (a refiner, an inpainting model), or None."""
        return None

    def claims_folder(self, folder: Path, index: dict[str, Any]) -> bool:
        """Whether a diffusers folder with this model_index.json belongs to this family."""
        raise NotImplementedError

    def training_resolution(self, base: "BaseModel") -> int:
        """The square side the family was trained at, used when the user leaves the resolution to us."""
        return 512

    # ------------------------------------------------------------------ loading

    def load_single_file(self, file: "CheckpointFile", tokenizer_dir, prediction: str | None, dtype: torch.dtype) -> "BaseModel":
        raise NotImplementedError

    def load_folder(self, folder: Path, tokenizer_dir, prediction: str | None, dtype: torch.dtype) -> "BaseModel":
        raise NotImplementedError

    def dtype_for_key(self, dtype: torch.dtype) -> Callable[[str], torch.dtype | None]:
        """The dtype each single-file tensor is read in; None skips it (EMA copies, unused towers)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ conditioning and prediction

    def encode_text(self, encoders: Sequence[torch.nn.Module], tokenizers: Sequence[Any], captions: list[str], device) -> TextConditioning:
        """Everything the denoiser is conditioned on that comes from the captions, batched."""
        raise NotImplementedError

    def predict(self, denoiser, noisy: torch.Tensor, timesteps: torch.Tensor, text: TextConditioning, size_ids: torch.Tensor) -> torch.Tensor:
        """The denoiser's output. ``size_ids`` holds per image (original h, w, crop top, left, target h, w) in px."""
        raise NotImplementedError

    def encode_images(self, vae, pixels: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
        """Latents the denoiser trains on: a draw of the VAE posterior (from ``rng``), scaled."""
        distribution = vae.encode(pixels).latent_dist
        mean, std = distribution.mean.float(), distribution.std.float()
        noise = torch.randn(mean.shape, generator=rng).to(mean.device)
        return (mean + std * noise) * vae.config.scaling_factor

    def objective(self, base: "BaseModel", prediction_type: str):
        """What the denoiser learns: noise and timestep draws, noisy input, target and loss weights."""
        from ..objectives import DiffusionObjective

        return DiffusionObjective(base.noise_scheduler, prediction_type)

    # ------------------------------------------------------------------ the LoRA file

    def denoiser_naming(self, denoiser) -> Callable[[str], str] | None:
        """How kohya names the denoiser's modules, from their diffusers paths; None keeps the diffusers path
        (SD1.x/SD2.x). SDXL files use the original LDM paths (``input_blocks.4.1...``)."""
        return None

    def metadata(self, prediction_type: str) -> dict[str, str]:
        """``ss_base_model_version``, ``ss_v2`` and ``modelspec.architecture`` (without the adapter suffix)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ previews

    def preview_pipeline(self, denoiser, base: "BaseModel", text_encoders: Sequence[torch.nn.Module], scheduler):
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.label
