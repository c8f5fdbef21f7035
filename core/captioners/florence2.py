"""Florence-2 captions with transformers' own ``Florence2ForConditionalGeneration`` (no remote code).

The model is a folder (``ComfyUI/models/florence2/<name>``) or a hub id of a converted checkpoint such as
``florence-community/Florence-2-base`` / ``-large``; the original ``microsoft/Florence-2-*`` repositories
need remote code and are refused in one sentence. bf16 (fp16 where bf16 is missing) on a GPU, fp32 on
the CPU; images are captioned in batches with one task prompt each.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..errors import DatasetError, SettingsError
from .generative import GenerativeCaptioner
from .sources import ModelSource, cached_hub_file, find_folder, looks_like_hub_id, looks_like_path, read_config, read_json, wrong_kind_hint

TASKS = ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>")
EXAMPLE_REPO = "florence-community/Florence-2-base"


@dataclass(frozen=True)
class Florence2Settings:
    task: str = "<DETAILED_CAPTION>"
    max_new_tokens: int = 256
    num_beams: int = 3

    def __post_init__(self):
        if self.task not in TASKS:
            raise SettingsError(f"The Florence-2 task must be one of {', '.join(TASKS)}, got {self.task!r}.")
        if self.max_new_tokens < 1 or self.num_beams < 1:
            raise SettingsError("Florence-2's max new tokens and beams must be at least 1.")


def check_config(config: dict | None, where: str, folder: Path | None = None) -> None:
    """A Florence-2 that transformers runs natively, or one sentence saying what it is instead."""
    if config is None:
        hint = wrong_kind_hint(folder) if folder is not None else ""
        if hint:
            raise DatasetError(f"{where} holds {hint}, not Florence-2.")
        raise DatasetError(f"{where} has no config.json; put config.json, model.safetensors and the processor files of {EXAMPLE_REPO} (or -large) there.")
    if config.get("model_type") != "florence2":
        raise DatasetError(f"{where} holds a {config.get('model_type') or 'different'} model, not Florence-2; use e.g. {EXAMPLE_REPO}.")
    if config.get("auto_map"):
        raise DatasetError(
            f"{where} is the original remote-code Florence-2, which would need trust_remote_code; use the converted "
            f"{EXAMPLE_REPO} or florence-community/Florence-2-large, which transformers runs natively."
        )


def locate(model: str, search_dirs: Sequence = ()) -> ModelSource:
    model = (model or "").strip()
    if not model:
        raise DatasetError(f"Florence-2 captioning needs a model: a folder under ComfyUI/models/florence2 or a hub id such as {EXAMPLE_REPO}.")
    folder = find_folder(model, search_dirs)
    if folder is not None:
        check_config(read_config(folder), f"Florence-2 folder {folder}", folder)
        return ModelSource(model, folder=folder)
    if looks_like_hub_id(model):
        config = cached_hub_file(model, "config.json")
        return ModelSource(model, hub_id=model, folder=config.parent if config is not None else None)
    files = f"the files of {EXAMPLE_REPO} (config.json, model.safetensors, tokenizer and processor files)"
    if looks_like_path(model):
        raise DatasetError(f"Florence-2 folder {model} does not exist; put {files} there.")
    where = Path(search_dirs[0]) if search_dirs else Path("ComfyUI/models/florence2")
    raise DatasetError(
        f"Florence-2 model {model!r} was not found: put {files} into {where / Path(model).name}, or name a hub id such as {EXAMPLE_REPO}."
    )


def _dtype(device):
    import torch

    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class Florence2Captioner(GenerativeCaptioner):
    """A loaded Florence-2 model and its processor, on one device."""

    @classmethod
    def load(cls, source: ModelSource, device: Any = None) -> "Florence2Captioner":
        import transformers

        from ..devices import usable_device

        if not hasattr(transformers, "Florence2ForConditionalGeneration"):
            raise DatasetError(
                f"Florence-2 needs a transformers that has it built in (Florence2ForConditionalGeneration); this one is "
                f"{transformers.__version__}: run `pip install -U transformers` in this Python environment."
            )
        from transformers import AutoProcessor, Florence2ForConditionalGeneration

        local = source.folder is not None and source.hub_id is None
        where = str(source.folder) if local else source.hub_id
        if not local:
            check_config(_hub_config(source.hub_id), f"Hub model {source.hub_id}")
        device = usable_device(device)
        try:
            processor = AutoProcessor.from_pretrained(where, local_files_only=local)
            model = Florence2ForConditionalGeneration.from_pretrained(where, local_files_only=local, dtype=_dtype(device))
        except (OSError, ValueError) as error:
            raise DatasetError(f"Florence-2 model {where} could not be loaded ({str(error).splitlines()[0][:200]}); it needs config.json, the weights and the processor files.") from None
        loaded = locate(source.requested) if not local else source  # a hub id is in the cache now
        return cls(model.to(device).eval(), processor, device, source.name, loaded.identity() or "")

    def run(self, images: list, settings: Florence2Settings) -> list[str]:
        inputs = self.processor(text=[settings.task] * len(images), images=images, return_tensors="pt")
        return self.generate_captions(inputs, max_new_tokens=settings.max_new_tokens, num_beams=settings.num_beams, do_sample=False)


def _hub_config(hub_id: str) -> dict | None:
    """A hub model's config.json (fetched into the cache unless offline), to refuse a wrong model before its weights."""
    from huggingface_hub import hf_hub_download

    try:
        return read_json(Path(hf_hub_download(hub_id, "config.json")))
    except Exception:
        raise DatasetError(
            f"Florence-2 model {hub_id} is neither a folder nor in the local Hugging Face cache (HF_HUB_OFFLINE may be set); "
            "download it once or put it under ComfyUI/models/florence2."
        ) from None
