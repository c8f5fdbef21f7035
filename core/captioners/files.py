"""Writing captions out for review: ``<folder>/<entry name>.txt``, optionally with the images beside them,
so the folder loads back with the Folder Dataset node (sidecar layout) after the captions were edited.

Never into the dataset's own folder unless asked, never outside the folder named, every file written
atomically (temp file + rename).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ..dataset import ImageCaptionDataset, natural_key
from ..errors import OutputPathError


def write_caption_files(
    dataset: ImageCaptionDataset,
    folder: str | os.PathLike,
    extension: str = ".txt",
    allow_source_folder: bool = False,
    with_images: bool = False,
) -> list[Path]:
    """Write each caption as ``<folder>/<entry name with extension>``; returns the caption files written.

    Refuses a folder inside the dataset's own source folder unless ``allow_source_folder`` (the user's
    folder is never written silently) and any name that would leave ``folder``. ``with_images`` also
    puts each image next to its caption (a copy of the file, or a PNG for images without one).
    """
    target = caption_folder(dataset, folder, allow_source_folder)
    extension = extension if extension.startswith(".") else "." + extension
    planned = []
    for entry in dataset.entries:
        path = (target / entry.name).with_suffix(extension)
        if not path.resolve().is_relative_to(target):
            raise OutputPathError(f"Entry {entry.name} would write outside {target}; caption files stay inside the folder named.")
        planned.append((path, entry))
    written = []
    for path, entry in sorted(planned, key=lambda item: natural_key(item[0])):
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, lambda handle: handle.write((entry.caption + "\n").encode("utf-8")))
        if with_images:
            _place_image(entry, path)
        written.append(path)
    return written


def caption_folder(dataset: ImageCaptionDataset, folder, allow_source_folder: bool = False) -> Path:
    """The folder captions may be written to, resolved; refuses the dataset's own folder unless allowed (check before long work)."""
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
    return target


def _write_atomically(path: Path, write) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".caption-", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _place_image(entry, caption_path: Path) -> None:
    """The entry's image next to its caption: its own file copied (skipped when already there), else a PNG."""
    source = getattr(entry.open_image, "path", None)
    if source is not None and Path(source).is_file():
        image_path = caption_path.with_suffix(Path(source).suffix)
        if image_path.exists() and (os.path.samefile(image_path, source) or _same_file_content_size(image_path, source)):
            return
        _write_atomically(image_path, lambda handle: _copy_into(source, handle))
        return
    _write_atomically(caption_path.with_suffix(".png"), lambda handle: entry.open_image().save(handle, format="PNG"))


def _copy_into(source, handle) -> None:
    with open(source, "rb") as original:
        shutil.copyfileobj(original, handle)


def _same_file_content_size(a, b) -> bool:
    """Copied before (same size and not older): a re-run does not copy every image again."""
    first, second = os.stat(a), os.stat(b)
    return first.st_size == second.st_size and first.st_mtime_ns >= second.st_mtime_ns
