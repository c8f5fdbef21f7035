"""BLIP captions with transformers' ``BlipForConditionalGeneration`` (no remote code), from a local folder
(e.g. ``ComfyUI/models/blip/<name>``) or a hub id through the Hugging Face cache (``HF_HUB_OFFLINE`` honoured)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import DatasetError
from .generative import GenerativeCaptioner
from .sources import ModelSource, cached_hub_file, read_config, resolve_model_folder, wrong_kind_hint

BLIP_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")


@dataclass(frozen=True)
class BlipSettings:
    max_new_tokens: int = 40


def locate(model: str, search_dirs: Sequence = ()) -> ModelSource:
    model = (model or "").strip()
    if not model:
        raise DatasetError("BLIP captioning needs a model: a folder (e.g. ComfyUI/models/blip/<name>) or a hub id such as Salesforce/blip-image-captioning-base.")
    folder = resolve_model_folder(model, search_dirs)
    if folder is not None:
        config = read_config(folder)
        if config is None or config.get("model_type") != "blip":
            hint = wrong_kind_hint(folder)
            if hint:
                raise DatasetError(f"BLIP folder {folder} holds {hint}, not BLIP.")
        return ModelSource(model, folder=folder)
    config = cached_hub_file(model, "config.json")
    return ModelSource(model, hub_id=model, folder=config.parent if config is not None else None)


class BlipCaptioner(GenerativeCaptioner):
    """A loaded BLIP captioning model and its processor, on one device."""

    @classmethod
    def load(cls, model: str | os.PathLike | None, device: Any = None, search_dirs: Sequence[str | os.PathLike] = ()) -> "BlipCaptioner":
        import torch
        from transformers import BlipForConditionalGeneration, BlipProcessor

        from ..devices import usable_device

        if model is None or not str(model).strip():
            raise DatasetError("BLIP captioning needs a model: a folder (e.g. ComfyUI/models/blip/<name>) or a hub id such as Salesforce/blip-image-captioning-base.")
        folder = resolve_model_folder(str(model), search_dirs)
        device = usable_device(device)
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        source = str(folder) if folder is not None else str(model)
        try:
            processor = BlipProcessor.from_pretrained(source, local_files_only=folder is not None)
            blip = BlipForConditionalGeneration.from_pretrained(source, local_files_only=folder is not None, dtype=dtype)
        except OSError as error:
            if folder is not None:
                raise DatasetError(f"BLIP folder {folder} could not be loaded ({str(error).splitlines()[0][:200]}); it needs config.json, the weights and the processor files.") from None
            raise DatasetError(
                f"BLIP model {model} is neither a folder nor in the local Hugging Face cache (HF_HUB_OFFLINE may be set); "
                "download it once or put it under ComfyUI/models/blip."
            ) from None
        identity = locate(str(model), search_dirs).identity() or ""  # a hub id is in the cache once loaded
        return cls(model=blip.to(device).eval(), processor=processor, device=device, name=Path(source).name or source, identity=identity)

    @classmethod
    def from_source(cls, source: ModelSource, device: Any = None) -> "BlipCaptioner":
        return cls.load(source.folder if source.hub_id is None else source.hub_id, device=device)

    def caption(self, images: list, max_new_tokens: int = 40) -> list[str]:
        return self.generate_captions(self.processor(images=images, return_tensors="pt"), max_new_tokens=max_new_tokens)

    def run(self, images: list, settings: BlipSettings) -> list[str]:
        return self.caption(images, max_new_tokens=settings.max_new_tokens)
