"""Captioning, as it was imported before it became the ``core.captioners`` package (kept for callers and tests)."""
from .captioners import (
    BLIP_WEIGHT_FILES,
    CAPTION_METHODS,
    MODES,
    BlipCaptioner,
    add_tags,
    caption_dataset,
    caption_from_file_name,
    resolve_model_folder,
    write_caption_files,
)

__all__ = ["BLIP_WEIGHT_FILES", "CAPTION_METHODS", "MODES", "BlipCaptioner", "add_tags", "caption_dataset", "caption_from_file_name",
           "resolve_model_folder", "write_caption_files"]
