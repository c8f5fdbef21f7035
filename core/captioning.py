"""Captioning: keep, trigger word / prefix / suffix, caption from file name, BLIP.

Every function returns a new dataset (same images, new captions, new content hash);
nothing is written anywhere unless ``write_caption_files`` is called with a folder the
user named, and that refuses to write inside the dataset's own folder unless asked to.

BLIP runs with transformers' ``BlipForConditionalGeneration`` (no remote code), loaded
from a local folder (e.g. ``ComfyUI/models/blip/<name>``) or a hub id through the
Hugging Face cache (``HF_HUB_OFFLINE`` honoured). It captions only images without a
caption unless ``overwrite`` is set, in batches, reporting ``ProgressEvent("caption", ...)``.
"""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .augment import split_tags
from .dataset import ImageCaptionDataset, natural_key
from .errors import DatasetError, OutputPathError
from .progress import ProgressCallback, ProgressEvent, optional

CAPTION_METHODS = ("keep", "trigger", "filename", "blip")
BLIP_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")


def add_tags(caption: str, trigger: str = "", prefix: str = "", suffix: str = "") -> str:
    """``trigger, prefix, caption, suffix`` as comma-separated tags, each added once (idempotent)."""
    parts = [p for p in (caption.strip(),) if p]
    for text in (prefix, trigger):  # trigger ends up first
        text = text.strip().strip(",").strip()
        if text and split_tags(", ".join(parts))[: len(split_tags(text))] != split_tags(text):
            parts.insert(0, text)
    text = suffix.strip().strip(",").strip()
    if text and not ", ".join(parts).endswith(text):
        parts.append(text)
    return ", ".join(parts)


def caption_from_file_name(name: str) -> str:
    """``red_cat-01.png`` -> ``red cat``: separators to spaces, bare numbers dropped."""
    stem = Path(name).stem
    words = [w for w in re.split(r"[\s_\-.]+", stem) if w and not w.isdigit()]
    return " ".join(words)


def caption_dataset(
    dataset: ImageCaptionDataset,
    method: str = "keep",
    *,
    trigger: str = "",
    prefix: str = "",
    suffix: str = "",
    model: "str | os.PathLike | BlipCaptioner | None" = None,
    overwrite: bool = False,
    batch_size: int = 8,
    max_new_tokens: int = 40,
    device: Any = None,
    search_dirs: Sequence[str | os.PathLike] = (),
    progress: ProgressCallback | None = None,
) -> ImageCaptionDataset:
    """Caption a dataset; trigger/prefix/suffix are added after the method ran, to every caption."""
    if method not in CAPTION_METHODS:
        raise DatasetError(f"Caption method must be one of {', '.join(CAPTION_METHODS)}, got {method!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DatasetError(f"Caption batch size must be at least 1, got {batch_size}.")
    captions = [entry.caption for entry in dataset.entries]
    todo = [i for i, caption in enumerate(captions) if overwrite or not caption]
    note = ""
    if method == "filename":
        for i in todo:
            captions[i] = caption_from_file_name(dataset.entries[i].name)
        note = f"{len(todo)} caption(s) from file names"
    elif method == "blip" and todo:
        captioner = model if isinstance(model, BlipCaptioner) else BlipCaptioner.load(model, device=device, search_dirs=search_dirs)
        report = optional(progress)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            images = [dataset.entries[i].open_image() for i in chunk]
            for i, caption in zip(chunk, captioner.caption(images, max_new_tokens=max_new_tokens)):
                captions[i] = caption
            report(ProgressEvent("caption", start + len(chunk), len(todo), message=f"captioning with {captioner.name}"))
        note = f"{len(todo)} caption(s) by {captioner.name}"
    elif method == "blip":
        note = "BLIP skipped: every image already has a caption (set overwrite to redo them)"
    if trigger or prefix or suffix:
        captions = [add_tags(c, trigger, prefix, suffix) for c in captions]
        note = "; ".join(n for n in (note, f"trigger {trigger!r} added" if trigger else "") if n)
    if captions == [entry.caption for entry in dataset.entries] and not note:
        return dataset  # nothing changed: same dataset, same hash (caches stay valid)
    return dataset.with_captions(captions, note)


@dataclass
class BlipCaptioner:
    """A loaded BLIP captioning model and its processor, on one device."""

    model: Any
    processor: Any
    device: Any
    name: str

    @classmethod
    def load(cls, model: str | os.PathLike | None, device: Any = None, search_dirs: Sequence[str | os.PathLike] = ()) -> "BlipCaptioner":
        import torch
        from transformers import BlipForConditionalGeneration, BlipProcessor

        from .devices import usable_device

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
        return cls(model=blip.to(device).eval(), processor=processor, device=device, name=Path(source).name or source)

    def caption(self, images: list, max_new_tokens: int = 40) -> list[str]:
        import torch

        inputs = self.processor(images=images, return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.no_grad():
            output = self.model.generate(**inputs, max_new_tokens=max_new_tokens)
        return [" ".join(text.split()) for text in self.processor.batch_decode(output, skip_special_tokens=True)]


def resolve_model_folder(model: str, search_dirs: Sequence[str | os.PathLike] = ()) -> Path | None:
    """A local model folder: the path itself, or ``<search dir>/<model>``; None means a hub id."""
    candidates = [Path(model).expanduser()] + [Path(d) / model for d in search_dirs]
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    if model.startswith((".", "/", "~", "\\")) or re.match(r"^[A-Za-z]:", model) or model.count("/") > 1:
        raise DatasetError(f"BLIP model folder {model} does not exist.")
    return None


def write_caption_files(
    dataset: ImageCaptionDataset,
    folder: str | os.PathLike,
    extension: str = ".txt",
    allow_source_folder: bool = False,
) -> list[Path]:
    """Write each caption as ``<folder>/<entry name with extension>``; returns the files written.

    Refuses a folder inside the dataset's own source folder unless ``allow_source_folder``
    (the user's folder is never written silently) and any name that would leave ``folder``.
    """
    if not str(folder).strip():
        raise OutputPathError("The caption output folder is empty; name a folder to write the .txt files into.")
    target = Path(folder).expanduser().resolve()
    source = Path(dataset.source).expanduser()
    if source.is_dir() and not allow_source_folder:
        source = source.resolve()
        if target == source or target.is_relative_to(source):
            raise OutputPathError(
                f"Caption folder {target} is inside the dataset folder {source}; choose another folder "
                "(writing next to the images must be asked for explicitly)."
            )
    extension = extension if extension.startswith(".") else "." + extension
    planned = []
    for entry in dataset.entries:
        path = (target / entry.name).with_suffix(extension)
        if not path.resolve().is_relative_to(target):
            raise OutputPathError(f"Entry {entry.name} would write outside {target}; caption files stay inside the folder named.")
        planned.append((path, entry.caption))
    written = []
    for path, caption in sorted(planned, key=lambda item: natural_key(item[0])):
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".caption-", suffix=".tmp")
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(caption + "\n")
        os.replace(temporary, path)
        written.append(path)
    return written
