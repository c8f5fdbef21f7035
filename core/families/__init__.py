"""Model families: SD1.x, SD2.x and SDXL behind one interface (``base.ModelFamily``).

``detect_file`` and ``detect_folder`` choose the family of a checkpoint; ``lora_file_family``
tells which family a LoRA file was made for, so one made for another family is refused
by name instead of loading as noise.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError, SettingsError
from .base import ModelFamily, Prediction, TextConditioning, TextEncoderSlot
from .sdxl import SDXL
from .stable_diffusion import SD1, SD2

FAMILIES: tuple[ModelFamily, ...] = (SDXL(), SD2(), SD1())  # the order they are tried in: most specific first
# Width of the text the UNet's cross-attention reads, in the full-size models of each family.
CONTEXT_WIDTHS = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
SDXL_UNET_LDM_KEY = re.compile(r"^lora_unet_(input_blocks|middle_block|output_blocks)_")

__all__ = [
    "FAMILIES", "ModelFamily", "Prediction", "TextConditioning", "TextEncoderSlot", "check_lora_family", "detect_file",
    "detect_folder", "family_named", "lora_file_family",
]


def family_named(name: str) -> ModelFamily:
    for family in FAMILIES:
        if family.name == name:
            return family
    raise SettingsError(f"Unknown model family {name!r}; known: {', '.join(f.name for f in FAMILIES)}.")


def detect_file(file) -> ModelFamily:
    """The family of a single-file checkpoint whose tensors are Stable Diffusion's; refuses variants it cannot train."""
    keys = set(file.keys)
    for family in FAMILIES:
        if family.claims_keys(keys):
            problem = family.refusal(file)
            if problem:
                raise ModelLoadError(f"{file.path.name} is {problem}.")
            return family
    raise ModelLoadError(f"{file.path.name} has a Stable Diffusion UNet but no text encoder this trainer knows (SD1.x CLIP-L, SD2.x OpenCLIP-H or SDXL's two); use a full checkpoint.")


def detect_folder(folder: Path, index: dict[str, Any]) -> ModelFamily:
    unet_class = index.get("unet", [None, None])[1] if isinstance(index.get("unet"), list) else None
    if unet_class not in (None, "UNet2DConditionModel"):
        name = index.get("_class_name", "an unknown pipeline")
        raise ModelLoadError(f"Diffusers folder {folder.name} holds {name}, not an SD1.x, SD2.x or SDXL model.")
    for family in FAMILIES:
        if family.claims_folder(folder, index):
            return family
    raise ModelLoadError(f"Diffusers folder {folder.name} holds {index.get('_class_name', 'an unknown pipeline')}, not an SD1.x, SD2.x or SDXL model.")


def lora_file_family(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> ModelFamily | None:
    """The family a LoRA file was made for: from its kohya metadata, else its key names, else the width of
    its cross-attention inputs in a full-size model; None when nothing tells."""
    version = str(metadata.get("ss_base_model_version", ""))
    if version.startswith("sdxl"):
        return family_named("sdxl")
    if version.startswith("sd_v2") or str(metadata.get("ss_v2", "")) == "True":
        return family_named("sd2")
    if version.startswith("sd_v1"):
        return family_named("sd1")
    if any(k.startswith(("lora_te1_", "lora_te2_")) or SDXL_UNET_LDM_KEY.match(k) for k in tensors):
        return family_named("sdxl")
    for stem in sorted({k.rsplit(".", 2 if k.endswith(".weight") else 1)[0] for k in tensors if k.startswith("lora_unet_") and "attn2_to_k" in k}):
        width = _input_width(tensors, stem)
        if width is not None:
            name = CONTEXT_WIDTHS.get(width)
            return family_named(name) if name else None
    return None


def _input_width(tensors: dict[str, torch.Tensor], stem: str) -> int | None:
    """The input width of one adapted Linear: lora_down's or hada_w1_b's columns; a LoKr's is the product
    of its two factors' (each whole, or the second matrix of its low-rank pair)."""
    for key in ("lora_down.weight", "hada_w1_b"):
        if f"{stem}.{key}" in tensors:
            return int(tensors[f"{stem}.{key}"].shape[1])
    factors = [tensors.get(f"{stem}.lokr_w{n}", tensors.get(f"{stem}.lokr_w{n}_b")) for n in (1, 2)]
    if all(factor is not None and factor.ndim == 2 for factor in factors):
        return int(factors[0].shape[1]) * int(factors[1].shape[1])
    return None


def check_lora_family(tensors: dict[str, torch.Tensor], metadata: dict[str, str], family: ModelFamily, what: str) -> None:
    """Refuse, in one sentence, a LoRA made for another family than ``family``."""
    made_for = lora_file_family(tensors, metadata)
    if made_for is not None and made_for.name != family.name:
        raise SettingsError(
            f"{what} is an {made_for.label} LoRA but the base model is {family.label}; "
            f"a LoRA only works on the family it was trained for, so use an {made_for.label} base or an {family.label} LoRA."
        )
