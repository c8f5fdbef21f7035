"""BaseModel: a loaded base checkpoint, whatever its family."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any


@dataclass(eq=False)
class BaseModel:
    """The diffusers components of a base model, its family and where it came from.

    SD1.x and SD2.x fill ``text_encoder``/``tokenizer``; SDXL also ``text_encoder_2``/``tokenizer_2``.
    The family (``core.families``) says which slots it uses.
    """

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any
    family: str = "sd1"
    source: str = ""
    source_hash: str = ""
    extra: dict = field(default_factory=dict)
    text_encoder_2: Any = None
    tokenizer_2: Any = None
    prediction_reason: str = ""  # why the training target is what it is (single files do not say)

    @property
    def model_family(self):
        from .families import family_named

        return family_named(self.family)

    @property
    def text_encoders(self) -> list[Any]:
        return [getattr(self, slot.attribute) for slot in self.model_family.text_encoders]

    @property
    def tokenizers(self) -> list[Any]:
        return [getattr(self, slot.tokenizer) for slot in self.model_family.text_encoders]

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def __repr__(self) -> str:
        params = sum(p.numel() for p in self.unet.parameters()) / 1e6
        name = os.path.basename(self.source.rstrip("/\\")) or "in-memory model"
        return f"BaseModel({name}: {self.model_family.label}, UNet {params:.1f}M params, {self.prediction_type})"
