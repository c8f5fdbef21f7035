"""``caption_dataset``: every caption method, the modes, the cache and progress, in one place.

Every call returns a new dataset (same images, new captions, new content hash); nothing is written
anywhere. Model captioners (BLIP, the WD14 tagger, Florence-2) are loaded only when some image is
not in the caption cache, run in batches and reported as ``ProgressEvent("caption", ...)``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

from ..dataset import ImageCaptionDataset
from ..errors import DatasetError
from ..progress import ProgressCallback, ProgressEvent, optional
from . import blip, florence2, wd14
from .cache import CAPTION_CACHE, CaptionCache, image_fingerprint
from .sources import ModelSource
from .text import MODES, add_tags, caption_from_file_name, merge_caption


@dataclass(frozen=True)
class ModelKind:
    """What the runner needs to know about one captioning model family."""

    method: str
    label: str
    settings_type: type
    locate: Callable[[str, Sequence], ModelSource]  # finds the files, never loads or downloads
    load: Callable[[ModelSource, Any], Any]  # -> a captioner with .name, .identity and .run(images, settings)
    renderer: Callable[[ModelSource, Any, Any], Callable[[Any], str]]  # (source, captioner or None, settings) -> raw -> caption


def _text_renderer(source, captioner, settings):
    return lambda text: text


MODEL_KINDS = {
    "blip": ModelKind("blip", "BLIP", blip.BlipSettings, blip.locate, blip.BlipCaptioner.from_source, _text_renderer),
    "wd14_tagger": ModelKind("wd14_tagger", "WD14 tagger", wd14.TaggerSettings, wd14.locate, wd14.WD14Tagger.load, wd14.renderer),
    "florence2": ModelKind("florence2", "Florence-2", florence2.Florence2Settings, florence2.locate, florence2.Florence2Captioner.load, _text_renderer),
}
# The model methods are named after their folders in ComfyUI/models (blip, wd14_tagger, florence2).
CAPTION_METHODS = ("keep", "trigger", "filename", *MODEL_KINDS)


@dataclass
class CaptionRun:
    """What a model captioner did: new captions by entry index, how many came from the cache, its name."""

    captions: dict[int, str]
    cached: int
    name: str


def caption_dataset(
    dataset: ImageCaptionDataset,
    method: str = "keep",
    *,
    trigger: str = "",
    prefix: str = "",
    suffix: str = "",
    model: "str | os.PathLike | Any | None" = None,
    mode: str = "fill",
    overwrite: bool = False,
    settings: Any = None,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    device: Any = None,
    search_dirs: Sequence[str | os.PathLike] = (),
    progress: ProgressCallback | None = None,
    cache: CaptionCache | None = CAPTION_CACHE,
) -> ImageCaptionDataset:
    """Caption a dataset; trigger/prefix/suffix are added after the method ran, to every caption.

    ``mode`` says which images get a new caption and how it meets the old one (``MODES``);
    ``overwrite`` is the older switch for ``mode="replace"``. ``settings`` is the method's settings
    object (``TaggerSettings``, ``Florence2Settings``, ``BlipSettings``); ``max_new_tokens`` overrides
    the text models' own. ``cache`` None turns the caption cache off.
    """
    _check_arguments(method, mode, batch_size)
    mode = "replace" if overwrite and mode == "fill" else mode
    old = [entry.caption for entry in dataset.entries]
    todo = [i for i, caption in enumerate(old) if mode != "fill" or not caption]
    made: dict[int, str] = {}
    note = ""
    if method == "filename":
        made = {i: caption_from_file_name(dataset.entries[i].name) for i in todo}
        note = f"{len(todo)} caption(s) from file names"
    elif method in MODEL_KINDS and todo:
        kind = MODEL_KINDS[method]
        run = caption_with_model(dataset, todo, kind, model, _settings_for(kind, settings, max_new_tokens),
                                 batch_size=batch_size, device=device, search_dirs=search_dirs, progress=progress, cache=cache)
        made = run.captions
        note = f"{len(todo)} caption(s) by {run.name}" + (f" ({run.cached} from the cache)" if run.cached else "")
    elif method in MODEL_KINDS:
        note = f"{MODEL_KINDS[method].label} skipped: every image already has a caption (set overwrite or another mode to redo them)"
    captions = [merge_caption(old[i], made[i], mode) if i in made else old[i] for i in range(len(old))]
    if trigger or prefix or suffix:
        captions = [add_tags(c, trigger, prefix, suffix) for c in captions]
        note = "; ".join(n for n in (note, f"trigger {trigger!r} added" if trigger else "") if n)
    if captions == old and not note:
        return dataset  # nothing changed: same dataset, same hash (caches stay valid)
    return dataset.with_captions(captions, note)


def _check_arguments(method: str, mode: str, batch_size: int) -> None:
    if method not in CAPTION_METHODS:
        raise DatasetError(f"Caption method must be one of {', '.join(CAPTION_METHODS)}, got {method!r}.")
    if mode not in MODES:
        raise DatasetError(f"Caption mode must be one of {', '.join(MODES)}, got {mode!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DatasetError(f"Caption batch size must be at least 1, got {batch_size}.")


def _settings_for(kind: ModelKind, settings: Any, max_new_tokens: int | None) -> Any:
    if settings is None:
        settings = kind.settings_type()
    elif not isinstance(settings, kind.settings_type):
        raise DatasetError(f"{kind.label} takes {kind.settings_type.__name__}, got {type(settings).__name__}.")
    if max_new_tokens is not None and hasattr(settings, "max_new_tokens"):
        settings = replace(settings, max_new_tokens=max_new_tokens)
    return settings


def caption_with_model(dataset, todo: list[int], kind: ModelKind, model, settings, *, batch_size: int = 8, device: Any = None,
                       search_dirs: Sequence = (), progress: ProgressCallback | None = None,
                       cache: CaptionCache | None = CAPTION_CACHE) -> CaptionRun:
    """Raw model output for the ``todo`` entries, from the cache where it can, in batches of ``batch_size``."""
    loaded = None if model is None or isinstance(model, (str, os.PathLike)) else model  # an already loaded captioner
    source = None if loaded is not None else kind.locate(str(model or ""), search_dirs)
    identity = loaded.identity if loaded is not None else source.identity()
    output_key = repr(settings_for_output(kind, settings))
    entries, raw, cached = dataset.entries, {}, 0
    report = optional(progress)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        keys = {i: (image_fingerprint(entries[i]), identity, output_key) for i in chunk} if cache is not None and identity else {}
        for i, key in keys.items():
            if (hit := cache.get(key)) is not None:
                raw[i] = hit
                cached += 1
        missing = [i for i in chunk if i not in raw]
        if missing:
            if loaded is None:
                loaded = kind.load(source, device)
                identity = identity or loaded.identity
            for i, output in zip(missing, loaded.run([entries[i].open_image() for i in missing], settings)):
                raw[i] = output
                if cache is not None and identity:
                    cache.put(keys.get(i) or (image_fingerprint(entries[i]), identity, output_key), output)
        name = loaded.name if loaded is not None else source.name
        report(ProgressEvent("caption", start + len(chunk), len(todo), message=f"captioning with {name}"))
    render = kind.renderer(source, loaded, settings)
    return CaptionRun({i: render(raw[i]) for i in todo}, cached, loaded.name if loaded is not None else source.name)


def settings_for_output(kind: ModelKind, settings: Any) -> Any:
    """The part of the settings that shapes the model's raw output (the cache key): none of the tagger's,
    whose thresholds and formatting apply to cached scores."""
    return (kind.method,) if kind.method == "wd14_tagger" else (kind.method, settings)
