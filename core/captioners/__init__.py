"""Captioning: keep, trigger word / prefix / suffix, captions from file names, and three models —
BLIP (sentences), the WD14 tagger (booru tags, ONNX) and Florence-2 (sentences) — with modes (fill,
replace, append, prepend), an in-memory caption cache, and caption files written out for review.

One module per captioner; ``runner.caption_dataset`` ties them together. Nothing here imports torch,
transformers or onnxruntime until a model is loaded.
"""
from .blip import BLIP_WEIGHT_FILES, BlipCaptioner, BlipSettings
from .cache import CAPTION_CACHE, CaptionCache, image_fingerprint
from .files import caption_folder, write_caption_files
from .florence2 import TASKS as FLORENCE2_TASKS, Florence2Captioner, Florence2Settings
from .runner import CAPTION_METHODS, MODEL_KINDS, caption_dataset, caption_with_model
from .sources import ModelSource, resolve_model_folder
from .text import MODES, add_tags, caption_from_file_name, merge_caption, tag_key
from .wd14 import TaggerSettings, WD14Tagger, parse_tag_text, select_tags, tagger_input

__all__ = [
    "BLIP_WEIGHT_FILES", "BlipCaptioner", "BlipSettings", "CAPTION_CACHE", "CAPTION_METHODS", "CaptionCache", "FLORENCE2_TASKS", "caption_folder",
    "Florence2Captioner", "Florence2Settings", "MODEL_KINDS", "MODES", "ModelSource", "TaggerSettings", "WD14Tagger", "add_tags",
    "caption_dataset", "caption_from_file_name", "caption_with_model", "image_fingerprint", "merge_caption", "parse_tag_text",
    "resolve_model_folder", "select_tags", "tag_key", "tagger_input", "write_caption_files",
]
