"""The Captioner node: keep, file names, trigger word only, BLIP, the WD14 tagger and Florence-2.

Saved workflows hold the node's widget values by position, so the widgets of its first version
(method, trigger_word, blip_model, overwrite) keep their places and every newer one is appended as an
optional input. When ComfyUI runs the node (it passes the hidden ``unique_id``) the result carries a
sample of the captions for the node's text preview (web/js/caption_preview.js); called from Python
without one it returns the plain ``(dataset,)`` tuple, as every other node does.
"""
from __future__ import annotations

import os

from ..core.errors import DatasetError

from . import types as T
from .comfy_bridge import BLIP_MODELS, FLORENCE2_MODELS, WD14_MODELS, api
from .nodes import CATEGORY, _dataset_folder

METHODS = ["keep", "from file name", "trigger word only", "BLIP", "WD14 tagger", "Florence-2"]
CORE_METHODS = {"keep": "keep", "from file name": "filename", "BLIP": "blip", "WD14 tagger": "wd14_tagger", "Florence-2": "florence2"}
DEFAULT_TAGGER = "wd-eva02-large-tagger-v3"
DEFAULT_FLORENCE2 = "florence-community/Florence-2-base"
PREVIEW_CAPTIONS = 8
PREVIEW_CHARACTERS = 300


def _optional_inputs() -> dict:
    """The optional widgets, in the order saved workflows store them (append new ones at the end)."""
    from ..core.captioners import FLORENCE2_TASKS, MODES

    return {
        "blip_model": ("STRING", {"default": "", "tooltip": "For BLIP: a folder under ComfyUI/models/blip, a full folder path, or a hub id already in the Hugging Face cache (e.g. Salesforce/blip-image-captioning-base)."}),
        "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace existing captions too, not only empty ones (the same as mode replace)."}),
        "mode": (["auto", *MODES], {"default": "auto", "tooltip": "Which images get a caption and how it meets one they have. fill: only images without a caption; replace: every image; append / prepend: the new tags after / before the existing caption, tags it already has left out. auto: replace for file names, fill for the models (as before modes existed)."}),
        "wd14_model": ("STRING", {"default": DEFAULT_TAGGER, "tooltip": "For the WD14 tagger: a folder under ComfyUI/models/wd14_tagger holding model.onnx and selected_tags.csv (e.g. wd-eva02-large-tagger-v3 from huggingface.co/SmilingWolf), <name>.onnx + <name>.csv there, a full path, or a hub id such as SmilingWolf/wd-eva02-large-tagger-v3."}),
        "general_threshold": ("FLOAT", {"default": 0.35, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "WD14: a general tag is kept when the tagger is at least this sure of it."}),
        "character_threshold": ("FLOAT", {"default": 0.85, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "WD14: a character tag is kept when the tagger is at least this sure of it (characters come first)."}),
        "max_tags": ("INT", {"default": 0, "min": 0, "max": 1000, "tooltip": "WD14: keep only the N most confident character and general tags; 0 keeps all above the thresholds."}),
        "exclude_tags": ("STRING", {"default": "", "multiline": True, "tooltip": "WD14: tags never to write, comma-separated or one a line (e.g. 'simple background, white background'); underscores and spaces count the same."}),
        "underscores_to_spaces": ("BOOLEAN", {"default": True, "tooltip": "WD14: long_hair becomes long hair; kaomoji such as ^_^ stay as they are."}),
        "escape_parentheses": ("BOOLEAN", {"default": True, "tooltip": "WD14: star_(symbol) becomes star \\(symbol\\), so prompts do not read the parentheses as emphasis."}),
        "rating_tag": ("BOOLEAN", {"default": False, "tooltip": "WD14: add the most likely rating (general, sensitive, questionable, explicit) as the last tag."}),
        "florence2_model": ("STRING", {"default": DEFAULT_FLORENCE2, "tooltip": "For Florence-2: a folder under ComfyUI/models/florence2, a full path, or a hub id of a converted checkpoint (florence-community/Florence-2-base or -large; downloaded once into the Hugging Face cache)."}),
        "florence2_task": (list(FLORENCE2_TASKS), {"default": "<DETAILED_CAPTION>", "tooltip": "Florence-2: a short caption, a detailed one (a few sentences) or a paragraph."}),
        "prefix": ("STRING", {"default": "", "tooltip": "Text put at the start of every caption, after the trigger word (added once)."}),
        "suffix": ("STRING", {"default": "", "tooltip": "Text put at the end of every caption (added once)."}),
        "batch_size": ("INT", {"default": 8, "min": 1, "max": 256, "tooltip": "Images per model run (BLIP, WD14, Florence-2); lower it if the GPU runs out of memory."}),
        "write_captions_to": ("STRING", {"default": "", "tooltip": "Optional: a folder (absolute, or relative to ComfyUI's input folder) to write every caption as a .txt file with a copy of its image, to review and edit by hand and load back with Folder Dataset. Files there are replaced when this node runs again. Never the dataset's own folder."}),
    }


def optional_defaults() -> dict:
    return {name: declared[1]["default"] for name, declared in _optional_inputs().items()}


class Captioner:
    DESCRIPTION = (
        "Caption a dataset: keep its captions, take them from the image file names, use only the trigger word, or write them "
        "with a model — BLIP or Florence-2 (sentences) or the WD14 tagger (booru tags, for anime and illustration). Models run "
        "offline from ComfyUI/models and only where needed: captions are cached per image, model and settings. Modes fill, "
        "replace, append or prepend; the trigger word goes first. A sample of the captions is shown on the node, and they can "
        "be written as .txt files to a folder of your choice for review."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = (T.DATASET,)
    RETURN_NAMES = ("dataset",)
    OUTPUT_TOOLTIPS = ("The same images with the new captions.",)
    FUNCTION = "caption"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "dataset": (T.DATASET, {"tooltip": "Images with captions from FolderDataset or HFDataset."}),
                "method": (METHODS, {"default": "keep", "tooltip": "keep: existing captions; from file name: 'red_fox-01.png' becomes 'red fox'; trigger word only: every caption is just the trigger word; BLIP / Florence-2: a model writes sentences; WD14 tagger: booru-style tags."}),
                "trigger_word": ("STRING", {"default": "", "tooltip": "A rare word that will call up the LoRA's subject (e.g. 'sks style'); put at the start of each caption. Empty: none."}),
            },
            "optional": _optional_inputs(),
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def caption(self, dataset, method, trigger_word, blip_model="", overwrite=False, unique_id=None, **widgets):
        defaults = optional_defaults()
        unknown = sorted(set(widgets) - set(defaults))
        if unknown:
            raise DatasetError(f"Captioner got {', '.join(unknown)}, which this version of the LoRA Trainer does not know; recreate the node.")
        options = {**defaults, **widgets, "blip_model": blip_model, "overwrite": overwrite}
        trigger = " ".join((trigger_word or "").split())
        if method not in METHODS:
            raise DatasetError(f"Caption method must be one of {', '.join(METHODS)}, got {method!r}.")
        if method == "trigger word only":
            if not trigger:
                raise DatasetError("The 'trigger word only' method needs a trigger word.")
            result = dataset.with_captions([trigger] * len(dataset.entries), f"captions: trigger {trigger!r} only")
        else:
            result = _run_method(dataset, method, trigger, options, unique_id)
        written = _write_for_review(result, options["write_captions_to"])
        if unique_id is None:
            return (result,)
        return {"ui": {"text": [preview_text(result, dataset, written)]}, "result": (result,)}


def _run_method(dataset, method: str, trigger: str, options: dict, unique_id):
    from ..core.captioners import caption_dataset

    core_method = CORE_METHODS[method]
    mode = options["mode"]
    if mode == "auto":
        mode = "replace" if core_method == "filename" else "fill"
    model, settings, search_dirs = _model_choice(core_method, options)
    bridge = api()
    needs_model = core_method in ("blip", "wd14_tagger", "florence2")
    bar = bridge.progress_bar(len(dataset.entries), str(unique_id) if unique_id is not None else None) if needs_model else None
    try:
        return caption_dataset(
            dataset, core_method, trigger=trigger, prefix=options["prefix"], suffix=options["suffix"], model=model, mode=mode,
            overwrite=bool(options["overwrite"]), settings=settings, batch_size=int(options["batch_size"]),
            device=str(bridge.torch_device()) if needs_model else None, search_dirs=search_dirs,
            progress=(lambda event: bar.update_absolute(event.step, event.total)) if bar is not None else None,
        )
    finally:
        if needs_model:
            bridge.empty_cache()  # the captioning model is gone once this returns; give its memory back


def _model_choice(core_method: str, options: dict):
    """(model name, settings, folders searched) for the model methods; (None, None, []) for the others."""
    from ..core.captioners import Florence2Settings, TaggerSettings, parse_tag_text

    if core_method == "blip":
        return (options["blip_model"] or "").strip() or None, None, model_search_dirs(BLIP_MODELS)
    if core_method == "wd14_tagger":
        settings = TaggerSettings(
            general_threshold=float(options["general_threshold"]), character_threshold=float(options["character_threshold"]),
            max_tags=int(options["max_tags"]), exclude=parse_tag_text(options["exclude_tags"]),
            underscores_to_spaces=bool(options["underscores_to_spaces"]), escape_parentheses=bool(options["escape_parentheses"]),
            rating=bool(options["rating_tag"]),
        )
        return (options["wd14_model"] or "").strip(), settings, model_search_dirs(WD14_MODELS)
    if core_method == "florence2":
        settings = Florence2Settings(task=options["florence2_task"])
        return (options["florence2_model"] or "").strip(), settings, model_search_dirs(FLORENCE2_MODELS)
    return None, None, []


def model_search_dirs(kind: str) -> list[str]:
    """ComfyUI's folders for a kind of captioning model; models/<kind> beside models/checkpoints when it has none registered."""
    bridge = api()
    folders = bridge.folder_paths(kind)
    if not folders:
        roots = bridge.folder_paths("checkpoints")
        folders = [os.path.join(os.path.dirname(roots[0]), kind)] if roots else []
    return folders


def _write_for_review(dataset, folder: str) -> str:
    """Write the captions (with the images) where the user asked; returns that folder, or "" when not asked."""
    folder = (folder or "").strip()
    if not folder:
        return ""
    from ..core.captioners import write_caption_files

    target = _dataset_folder(folder)
    write_caption_files(dataset, target, with_images=True)
    return target


def preview_text(result, original, written: str = "") -> str:
    """What the node shows: what was done, where the files went, and the first captions."""
    lines = []
    if result is not original and result.notes:
        lines.append(result.notes[-1])
    if written:
        lines.append(f"wrote {len(result.entries)} caption files (with the images) to {written}")
    for entry in result.entries[:PREVIEW_CAPTIONS]:
        caption = entry.caption if len(entry.caption) <= PREVIEW_CHARACTERS else entry.caption[: PREVIEW_CHARACTERS - 3] + "..."
        lines.append(f"{entry.name}: {caption or '(no caption)'}")
    if len(result.entries) > PREVIEW_CAPTIONS:
        lines.append(f"... and {len(result.entries) - PREVIEW_CAPTIONS} more")
    return "\n".join(lines)


NODES = {"Captioner": (Captioner, "Captioner")}
