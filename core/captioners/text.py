"""Caption text: trigger word / prefix / suffix, captions from file names, and how a new caption
meets an existing one (the modes).

Captions are comma-separated tags or sentences. Tags compare by a loose key (case, underscores,
prompt escapes and spacing ignored), so ``long_hair`` from a tagger and ``long hair`` typed by hand
count as the same tag when captions are merged.
"""
from __future__ import annotations

import re
from pathlib import Path


# fill: caption only images without one; replace: every image; append / prepend: the new tags
# after / before the existing caption, leaving out tags it already has.
MODES = ("fill", "replace", "append", "prepend")


def split_tags(caption: str) -> list[str]:
    """Comma-separated tags, trimmed (as ``core.augment.split_tags``, which imports torch; the tagger path does not need it)."""
    return [tag.strip() for tag in caption.split(",") if tag.strip()]


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


def tag_key(tag: str) -> str:
    """What makes two tags the same: ``Long_Hair``, ``long hair`` and ``long  hair`` all give ``long hair``;
    ``star_\\(symbol\\)`` and ``star (symbol)`` both give ``star (symbol)``."""
    text = tag.replace("\\(", "(").replace("\\)", ")").replace("_", " ")
    return " ".join(text.lower().split())


def unique_tags(tags: list[str], already: list[str] = ()) -> list[str]:
    """``tags`` in order without repeats and without any tag of ``already`` (compared by ``tag_key``)."""
    seen = {tag_key(tag) for tag in already}
    kept = []
    for tag in tags:
        key = tag_key(tag)
        if key and key not in seen:
            seen.add(key)
            kept.append(tag)
    return kept


def merge_caption(existing: str, new: str, mode: str) -> str:
    """The caption an image ends up with when the captioner wrote ``new`` for it."""
    if mode not in MODES:
        raise ValueError(f"unknown caption mode {mode!r}")
    if mode == "fill":
        return existing if existing.strip() else new
    if mode == "replace" or not existing.strip():
        return new
    old_tags = split_tags(existing)
    added = unique_tags(split_tags(new), already=old_tags)
    parts = old_tags + added if mode == "append" else added + old_tags
    return ", ".join(parts)
