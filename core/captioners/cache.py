"""The caption cache: what a captioning model made of an image, kept in memory for this process.

A key is (image content, model files, the settings that shape the model's output), so re-queueing a
graph, adding an image to a dataset or changing only the trigger word, mode, prefix or thresholds
does not run the model again over the images it has already seen. It lives in memory only (inside
ComfyUI it lasts as long as the server): nothing is written to disk, nothing to clean up.

What is stored is the model's raw output: a caption for BLIP and Florence-2, the per-tag scores for
the WD14 tagger (so a new threshold is answered from the cache too).
"""
from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Hashable

MAX_ENTRIES = 50_000
MAX_BYTES = 512 * 1024 * 1024  # tagger scores are ~40 KiB an image for the 10k-tag v3 models


def _size_of(value: Any) -> int:
    return int(getattr(value, "nbytes", 0)) or len(str(value)) + 64


class CaptionCache:
    """A least-recently-used map, bounded by entry count and by bytes; safe to share between threads."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES):
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        with self._lock:
            if key not in self._items:
                return None
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            if key in self._items:
                self._bytes -= _size_of(self._items.pop(key))
            self._items[key] = value
            self._bytes += _size_of(value)
            while self._items and (len(self._items) > self.max_entries or self._bytes > self.max_bytes):
                _, dropped = self._items.popitem(last=False)
                self._bytes -= _size_of(dropped)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)


CAPTION_CACHE = CaptionCache()


def image_fingerprint(entry) -> str:
    """A hash of an entry's image content: the file's bytes when it has a file, else the decoded pixels."""
    digest = hashlib.sha256()
    path = getattr(entry.open_image, "path", None)
    if path is not None and Path(path).is_file():
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        return "file:" + digest.hexdigest()
    image = entry.open_image()
    digest.update(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return "pixels:" + digest.hexdigest()


def files_fingerprint(paths: list[Path]) -> str:
    """Names, sizes and modification times of a model's files: a changed or replaced model gets a new key
    without hashing gigabytes of weights."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        stat = os.stat(path)
        digest.update(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def folder_fingerprint(folder: Path) -> str:
    """``files_fingerprint`` of every file directly in a model folder."""
    return files_fingerprint([p for p in Path(folder).iterdir() if p.is_file()])
