"""Where a captioning model's files are: a folder the user named, a folder under one of the model
folders searched (ComfyUI's ``models/<kind>``), or a Hugging Face hub id (its cache first).

Finding a model never loads it and never touches the network; downloading a hub id the user named
happens when the model is loaded (and not at all when ``HF_HUB_OFFLINE`` is set).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import DatasetError
from .cache import files_fingerprint, folder_fingerprint

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSource:
    """A captioning model found locally (``folder`` and/or its ``files``) or a hub id still to download."""

    requested: str
    folder: Path | None = None
    files: tuple[Path, ...] = ()
    hub_id: str | None = None

    @property
    def name(self) -> str:
        if self.hub_id:
            return self.hub_id.rsplit("/", 1)[-1]
        if self.folder is not None:
            return self.folder.name
        return Path(self.files[0]).stem if self.files else self.requested

    def identity(self) -> str | None:
        """The model files' fingerprint (for the caption cache); None while they are not on this machine."""
        if self.files:
            return files_fingerprint(list(self.files))
        if self.folder is not None:
            return folder_fingerprint(self.folder)
        return None


def looks_like_path(model: str) -> bool:
    return model.startswith((".", "/", "~", "\\")) or bool(re.match(r"^[A-Za-z]:", model)) or model.count("/") > 1


def looks_like_hub_id(model: str) -> bool:
    return bool(HUB_ID.match(model)) and not looks_like_path(model)


def find_folder(model: str, search_dirs: Sequence[str | os.PathLike] = ()) -> Path | None:
    """The folder ``model`` names: the path itself or ``<search dir>/<model>``; None when there is none."""
    for candidate in [Path(model).expanduser()] + [Path(d) / model for d in search_dirs]:
        if candidate.is_dir():
            return candidate
    return None


def resolve_model_folder(model: str, search_dirs: Sequence[str | os.PathLike] = (), label: str = "BLIP") -> Path | None:
    """A local model folder: the path itself, or ``<search dir>/<model>``; None means a hub id."""
    folder = find_folder(model, search_dirs)
    if folder is not None:
        return folder
    if looks_like_path(model):
        raise DatasetError(f"{label} model folder {model} does not exist.")
    return None


def cached_hub_file(hub_id: str, filename: str) -> Path | None:
    """A file of a hub repository from the local Hugging Face cache only (no network); None when absent."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(hub_id, filename)
    except Exception:  # a malformed id or an unreadable cache: treated as not cached
        return None
    return Path(found) if isinstance(found, str) else None


def read_json(path: Path) -> dict | None:
    """A JSON file as a dict; None when there is none or it is not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return None


def read_config(folder: Path) -> dict | None:
    """A transformers folder's config.json (None when there is none)."""
    return read_json(folder / "config.json")


def wrong_kind_hint(folder: Path) -> str:
    """What a model folder seems to hold instead, for "wrong kind of model" sentences ("" when unknown)."""
    if any(folder.glob("*.onnx")):
        return "a WD14 tagger (an .onnx model), so choose the WD14 tagger method"
    config = read_config(folder)
    if config is not None:
        return f"a {config.get('model_type') or 'transformers'} model"
    return ""
