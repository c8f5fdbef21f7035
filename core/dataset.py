"""Captioned image datasets: what the trainer reads, from wherever it came.

A dataset is a list of entries (a name, a caption, a repeat count and a way
to open the image) plus a summary for people and a content hash for caches
and LoRA metadata. Sources never write into the user's folders.

Folder layouts (``load_folder_dataset``):

- ``image-text``: ``image/<stem>.png`` + ``text/<stem>.txt`` (the old SimpleLoRA node's);
- ``sidecar``: ``a.png`` + ``a.txt`` side by side, searched recursively;
- ``kohya``: ``10_mychar/a.png`` (+ ``a.txt``): the number before the first ``_`` is the
  folder's repeat count; an image without a caption file gets the folder's name
  (``mychar``) as caption, as kohya's trainer does;
- ``imagefolder``: ``metadata.jsonl`` or ``metadata.csv`` with a ``file_name`` column and
  a caption column (the Hugging Face ``imagefolder`` convention).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable

from .errors import DatasetError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_IMAGE_PIXELS = 64 * 1024 * 1024  # a 8192x8192 photo; larger is a decompression bomb or a mistake
MAX_CAPTION_BYTES = 64 * 1024
LAYOUTS = ("auto", "image-text", "sidecar", "kohya", "imagefolder")
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
# Caption columns tried in this order when none is given (HF datasets and imagefolder metadata).
CAPTION_COLUMNS = ("text", "caption", "captions", "en_text", "prompt", "description", "tags", "alt_text", "sentence")
KOHYA_FOLDER = re.compile(r"^(\d+)_(.+)$")
DEFAULT_RESOLUTION = 512  # SD1.x's training size; smaller images are reported in the notes
_LIST_LIMIT = 5


@dataclass(frozen=True)
class Entry:
    name: str
    caption: str
    open_image: Callable[[], "object"] = field(repr=False, compare=False)
    repeats: int = 1
    # (width, height) after EXIF orientation, when the source knows it without decoding.
    size: tuple[int, int] | None = field(default=None, compare=False)
    # The sub-folder (kohya ``10_name``) or source this entry came from, for ss_dataset_dirs.
    group: str = ""


@dataclass(eq=False)
class ImageCaptionDataset:
    entries: list[Entry]
    source: str
    layout: str
    content_hash: str
    notes: list[str] = field(default_factory=list)
    caption_count: int | None = None  # captions found in the source (None: every entry had one)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def num_samples(self) -> int:
        """Images per epoch, repeats included."""
        return sum(entry.repeats for entry in self.entries)

    def tag_frequency(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for entry in self.entries:
            counts.update(tag.strip() for tag in entry.caption.split(",") if tag.strip())
        return dict(counts.most_common(200))

    def groups(self) -> dict[str, list[Entry]]:
        """Entries by group (kohya folder, or the whole source), in first-seen order."""
        grouped: dict[str, list[Entry]] = {}
        default = os.path.basename(self.source.rstrip("/\\")) or "dataset"
        for entry in self.entries:
            grouped.setdefault(entry.group or default, []).append(entry)
        return grouped

    def dataset_dirs(self) -> dict[str, dict[str, int]]:
        """kohya's ``ss_dataset_dirs``: per folder, its repeat count and image count."""
        return {
            name: {"n_repeats": entries[0].repeats, "img_count": len(entries)}
            for name, entries in self.groups().items()
        }

    def tag_frequency_by_dir(self) -> dict[str, dict[str, int]]:
        """kohya's ``ss_tag_frequency``: per folder, how often each comma-separated tag occurs."""
        result = {}
        for name, entries in self.groups().items():
            counts: Counter[str] = Counter()
            for entry in entries:
                counts.update(tag.strip() for tag in entry.caption.split(",") if tag.strip())
            result[name] = dict(counts.most_common(200))
        return result

    def small_images(self, resolution: int) -> list[Entry]:
        """Entries whose known size is below the training resolution on the short side."""
        return [e for e in self.entries if e.size is not None and min(e.size) < resolution]

    def with_captions(self, captions: list[str], note: str = "") -> "ImageCaptionDataset":
        """A copy with new captions (same images); the hash changes with the captions."""
        if len(captions) != len(self.entries):
            raise ValueError("one caption per entry")
        entries = [replace(entry, caption=caption) for entry, caption in zip(self.entries, captions)]
        digest = hashlib.sha256(self.content_hash.encode())
        for caption in captions:
            digest.update(hashlib.sha256(caption.encode()).digest())
        notes = [n for n in self.notes if not n.endswith("have no caption")]
        uncaptioned = sum(1 for c in captions if not c)
        if uncaptioned:
            notes.append(f"{uncaptioned} image(s) have no caption")
        if note:
            notes.append(note)
        return ImageCaptionDataset(
            entries=entries, source=self.source, layout=self.layout,
            content_hash=digest.hexdigest()[:16], notes=notes, caption_count=len(captions) - uncaptioned,
        )

    def subset(self, indices: list[int], note: str) -> "ImageCaptionDataset":
        """The entries at ``indices`` (in that order) as a dataset of their own; the hash names the subset."""
        digest = hashlib.sha256(self.content_hash.encode())
        digest.update(",".join(map(str, indices)).encode())
        entries = [self.entries[i] for i in indices]
        captioned = sum(1 for e in entries if e.caption)
        return ImageCaptionDataset(
            entries=entries, source=self.source, layout=self.layout, content_hash=digest.hexdigest()[:16],
            notes=[*self.notes, note], caption_count=None if captioned == len(entries) else captioned,
        )

    def summary(self) -> str:
        sample = next((e.caption for e in self.entries if e.caption), "")
        sample = sample if len(sample) <= 60 else sample[:57] + "..."
        repeats = f", {self.num_samples} with repeats" if self.num_samples != len(self) else ""
        captions = len(self) if self.caption_count is None else self.caption_count
        groups = self.groups()
        folders = f" in {len(groups)} folders" if self.layout == "kohya" else ""
        text = (
            f"{len(self)} images{repeats}{folders}, {captions} captions, from {self.source} ({self.layout}); "
            f"e.g. \"{sample}\""
        )
        if self.notes:
            text += "; " + "; ".join(self.notes)
        return text

    def __repr__(self) -> str:
        return f"Dataset({self.summary()})"


# --------------------------------------------------------------------------- images


def open_rgb_image(path_or_file):
    """Open an image (a path or a binary file) as RGB, EXIF orientation applied, alpha composited on white."""
    from PIL import Image, ImageOps

    name = Path(path_or_file).name if isinstance(path_or_file, (str, os.PathLike)) else getattr(path_or_file, "name", "image")
    try:
        with Image.open(path_or_file) as image:
            check_image_size(image.size, name)
            image.load()
            image = ImageOps.exif_transpose(image)
            return to_rgb(image)
    except DatasetError:
        raise
    except Image.DecompressionBombError:
        raise DatasetError(too_large_message(name)) from None
    except Exception as error:
        raise DatasetError(f"Image {name} could not be read ({error.__class__.__name__}: {error}); remove or re-save it.") from None


def oriented_size(image) -> tuple[int, int]:
    """(width, height) as displayed: EXIF orientations 5-8 swap the sides."""
    width, height = image.size
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block does not make the pixels unusable
        orientation = 1
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def too_large_message(name: str, size: tuple[int, int] | None = None) -> str:
    dimensions = f"{size[0]}x{size[1]} pixels" if size else "larger than PIL will decode safely"
    return f"Image {name} is {dimensions}, over the {MAX_IMAGE_PIXELS // 2**20} Mpx limit (a decompression-bomb guard); downscale it first."


def check_image_size(size: tuple[int, int], name: str) -> None:
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise DatasetError(too_large_message(name, size))
    if min(width, height) < 8:
        raise DatasetError(f"Image {name} is only {width}x{height} pixels; training images must be at least 8 px on each side.")


def to_rgb(image):
    """RGB from any PIL mode: 16/32-bit grey scaled to 8 bits, palettes and alpha composited on white, CMYK converted."""
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        import numpy as np

        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array * (255.0 / top), 0, 255).round().astype(np.uint8), "L")
    elif image.mode == "F":
        image = image.convert("L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def read_caption(path: Path) -> str:
    raw = path.read_bytes()[: MAX_CAPTION_BYTES + 1]
    if len(raw) > MAX_CAPTION_BYTES:
        raise DatasetError(f"Caption {path} is over {MAX_CAPTION_BYTES // 1024} KiB; captions are short texts.")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DatasetError(f"Caption {path} is not UTF-8 text; re-save it as UTF-8.") from None
    return clean_caption(text)


def clean_caption(text) -> str:
    """One line, single spaces; a list of captions (COCO-style) gives its first one."""
    if isinstance(text, (list, tuple)):
        text = text[0] if text else ""
    return " ".join(str(text).split()) if text is not None else ""


def pick_caption_column(columns: Iterable[str], requested: str | None, where: str) -> str | None:
    """The requested column (checked), or the first of CAPTION_COLUMNS present; None if none is."""
    columns = list(columns)
    if requested:
        if requested not in columns:
            raise DatasetError(
                f"Caption column {requested!r} is not in {where}; its columns are: {', '.join(columns)}."
            )
        return requested
    lowered = {c.lower(): c for c in columns}
    return next((lowered[name] for name in CAPTION_COLUMNS if name in lowered), None)


# --------------------------------------------------------------------------- folders


def _name_list(paths: list, root: Path) -> str:
    names = [str(p.relative_to(root)) if isinstance(p, Path) else str(p) for p in paths]
    shown = ", ".join(names[:_LIST_LIMIT])
    more = f" and {len(names) - _LIST_LIMIT} more" if len(names) > _LIST_LIMIT else ""
    return shown + more


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    walker = folder.rglob("*") if recursive else folder.iterdir()
    found = [
        path for path in walker
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file() and not _hidden(path, folder)
    ]
    return sorted(found, key=natural_key)


def natural_key(path: Path):
    """Sort 2.png before 10.png, as people number their files."""
    return [int(token) if token.isdigit() else token.lower() for token in re.split(r"(\d+)", str(path))]


def _kohya_folders(root: Path) -> list[Path]:
    return sorted(
        (p for p in root.iterdir() if p.is_dir() and KOHYA_FOLDER.match(p.name) and not p.name.startswith(".")),
        key=natural_key,
    )


def detect_layout(root: Path) -> str:
    """image-text if image/ and text/ exist; imagefolder if a metadata file does; kohya if N_name folders do; else sidecar."""
    if (root / "image").is_dir() and (root / "text").is_dir():
        return "image-text"
    if any((root / name).is_file() for name in METADATA_FILES):
        return "imagefolder"
    if _kohya_folders(root):
        return "kohya"
    return "sidecar"


def _check_headers(images: list[Path], root: Path) -> dict[Path, tuple[int, int]]:
    """Open every header (not the pixels): sizes for buckets and notes, broken files named together."""
    from PIL import Image

    broken, sizes = [], {}
    for path in images:
        try:
            with Image.open(path) as image:
                check_image_size(image.size, str(path.relative_to(root)))
                sizes[path] = oriented_size(image)
        except DatasetError:
            raise
        except Image.DecompressionBombError:
            raise DatasetError(too_large_message(str(path.relative_to(root)))) from None
        except PermissionError:
            raise DatasetError(f"Image {path} is not readable by this process; check its permissions.") from None
        except Exception:
            broken.append(path)
    if broken:
        raise DatasetError(f"{len(broken)} file(s) in {root} are not readable images: {_name_list(broken, root)}; remove or re-save them.")
    return sizes


def hash_entries(parts: list[tuple[str, bytes, str]]) -> str:
    digest = hashlib.sha256()
    for name, content, caption in parts:
        digest.update(name.encode())
        digest.update(hashlib.sha256(content).digest())
        digest.update(caption.encode())
    return digest.hexdigest()[:16]


def _file_digest(path: Path) -> bytes:
    """sha256 of a file, read in chunks so a large image is never held whole just to hash it."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.digest()


def _normalise_extension(extension: str) -> str:
    extension = extension.strip()
    if not extension:
        raise DatasetError("The caption extension is empty; use .txt or .caption.")
    extension = extension if extension.startswith(".") else "." + extension
    if "/" in extension or "\\" in extension or extension in (".", ".."):
        raise DatasetError(f"Caption extension {extension!r} is not a file extension; use .txt or .caption.")
    if extension.lower() in IMAGE_EXTENSIONS:
        raise DatasetError(f"Caption extension {extension!r} is an image extension; use .txt or .caption.")
    return extension


def _check_root(path) -> Path:
    if not str(path).strip():
        raise DatasetError("The dataset folder path is empty; give the folder that holds your images.")
    root = Path(path).expanduser()
    if not root.exists():
        raise DatasetError(f"Dataset folder {root} does not exist.")
    if not root.is_dir():
        raise DatasetError(f"Dataset path {root} is a file, not a folder; give the folder that holds the images.")
    if not os.access(root, os.R_OK | os.X_OK):
        raise DatasetError(f"Dataset folder {root} is not readable by this process; check its permissions.")
    return root


@dataclass
class _Found:
    """What a layout scan found: images, their captions (None = no caption) and per-image repeats/group."""

    images: list[Path]
    captions: dict[Path, str | None]
    caption_files: dict[Path, Path] = field(default_factory=dict)
    repeats: dict[Path, int] = field(default_factory=dict)
    groups: dict[Path, str] = field(default_factory=dict)
    orphans: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _scan_sidecar(folder: Path, extension: str, root: Path) -> _Found:
    images = _images_in(folder, recursive=True)
    caption_files = {image: image.with_suffix(extension) for image in images}
    stems = {image.with_suffix("") for image in images}
    orphans = sorted(
        (p for p in folder.rglob("*" + extension) if p.is_file() and p.with_suffix("") not in stems and not _hidden(p, root)),
        key=natural_key,
    )
    return _Found(images=images, captions={}, caption_files=caption_files, orphans=orphans)


def _scan_image_text(root: Path, extension: str) -> _Found:
    image_dir, text_dir = root / "image", root / "text"
    if not image_dir.is_dir() or not text_dir.is_dir():
        raise DatasetError(f"Dataset folder {root} has no image/ and text/ subfolders, which the image-text layout needs.")
    images = _images_in(image_dir, recursive=False)
    stems = {image.stem for image in images}
    caption_files = {image: text_dir / (image.stem + extension) for image in images}
    orphans = sorted((p for p in text_dir.iterdir() if p.suffix == extension and p.stem not in stems), key=natural_key)
    return _Found(images=images, captions={}, caption_files=caption_files, orphans=orphans)


def _scan_kohya(root: Path, extension: str) -> _Found:
    folders = _kohya_folders(root)
    if not folders:
        raise DatasetError(f"Dataset folder {root} has no kohya folders named like 10_mychar (repeats_name).")
    found = _Found(images=[], captions={})
    defaulted = 0
    for folder in folders:
        count, name = KOHYA_FOLDER.match(folder.name).groups()
        repeats = int(count)
        if repeats < 1:
            raise DatasetError(f"Folder {folder.name} in {root} asks for {repeats} repeats; the number before _ must be at least 1.")
        part = _scan_sidecar(folder, extension, root)
        class_caption = " ".join(name.replace("_", " ").split())
        for image in part.images:
            found.images.append(image)
            found.repeats[image] = repeats
            found.groups[image] = folder.name
            if part.caption_files[image].is_file():
                found.caption_files[image] = part.caption_files[image]
            else:
                found.captions[image] = class_caption  # kohya's DreamBooth convention: the folder name is the caption
                defaulted += 1
        found.orphans += part.orphans
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    others = [p.name for p in root.iterdir() if p.is_dir() and p not in folders and not p.name.startswith(".")]
    if defaulted:
        found.notes.append(f"{defaulted} image(s) without a {extension} file are captioned with their folder's name")
    if loose:
        found.notes.append(f"{len(loose)} image(s) directly in {root.name} are ignored (kohya reads only N_name folders)")
    if others:
        found.notes.append(f"folders {', '.join(sorted(others)[:_LIST_LIMIT])} are ignored (not named N_name)")
    return found


def _read_metadata(path: Path) -> list[dict]:
    try:
        if path.suffix == ".jsonl":
            rows = []
            with open(path, encoding="utf-8-sig") as handle:
                for number, line in enumerate(handle, 1):
                    if line.strip():
                        try:
                            row = json.loads(line)
                        except json.JSONDecodeError as error:
                            raise DatasetError(f"{path.name} line {number} is not valid JSON ({error.msg}); fix that line.") from None
                        if not isinstance(row, dict):
                            raise DatasetError(f"{path.name} line {number} is not a JSON object; each line must be {{\"file_name\": ..., \"text\": ...}}.")
                        rows.append(row)
            return rows
        with open(path, encoding="utf-8-sig", newline="") as handle:
            return list(csv.DictReader(handle))
    except UnicodeDecodeError:
        raise DatasetError(f"{path} is not UTF-8 text; re-save it as UTF-8.") from None
    except PermissionError:
        raise DatasetError(f"{path} is not readable by this process; check its permissions.") from None


def _scan_imagefolder(root: Path, caption_column: str | None) -> _Found:
    present = [root / name for name in METADATA_FILES if (root / name).is_file()]
    if not present:
        raise DatasetError(f"Dataset folder {root} has no metadata.jsonl or metadata.csv, which the imagefolder layout needs.")
    if len(present) > 1:
        raise DatasetError(f"Dataset folder {root} has both metadata.jsonl and metadata.csv; keep one.")
    metadata = present[0]
    rows = _read_metadata(metadata)
    if not rows:
        raise DatasetError(f"{metadata} lists no images; add a line per image with file_name and a caption.")
    columns = list(dict.fromkeys(key for row in rows for key in row))
    if "file_name" not in columns:
        raise DatasetError(f"{metadata.name} has no file_name column; its columns are: {', '.join(columns)}.")
    column = pick_caption_column(columns, caption_column, metadata.name)
    if column is None:
        raise DatasetError(
            f"{metadata.name} has no caption column ({', '.join(CAPTION_COLUMNS)}); its columns are: {', '.join(columns)}; "
            "name the caption column."
        )
    found = _Found(images=[], captions={})
    missing, escaping, seen = [], [], set()
    resolved_root = root.resolve()
    for row in rows:
        name = str(row.get("file_name") or "").strip()
        image = (root / name)
        if not name or not image.resolve().is_relative_to(resolved_root):
            escaping.append(name or "(empty file_name)")
            continue
        if not image.is_file():
            missing.append(name)
            continue
        if image in seen:
            continue
        seen.add(image)
        found.images.append(image)
        caption = row.get(column)
        found.captions[image] = clean_caption(caption) if caption not in (None, "") else None
    if escaping:
        raise DatasetError(f"{metadata.name} names files outside {root}: {_name_list(escaping, root)}; file_name must be a path inside the folder.")
    if missing:
        raise DatasetError(f"{metadata.name} lists {len(missing)} image(s) that do not exist: {_name_list(missing, root)}.")
    listed = set(found.images)
    unlisted = [p for p in _images_in(root, recursive=True) if p not in listed]
    if unlisted:
        found.notes.append(f"{len(unlisted)} image(s) not listed in {metadata.name} are ignored")
    found.notes.append(f"captions from column {column!r}")
    return found


def load_folder_dataset(
    path: str | os.PathLike,
    layout: str = "auto",
    repeats: int = 1,
    caption_extension: str = ".txt",
    *,
    caption_column: str | None = None,
    allow_uncaptioned: bool = False,
    resolution: int = DEFAULT_RESOLUTION,
) -> ImageCaptionDataset:
    """Index a folder of captioned images without modifying it (see the module doc for layouts).

    ``repeats`` multiplies every image's repeat count (kohya folders bring their own).
    ``allow_uncaptioned`` turns a missing caption into an empty one (for a Captioner to fill)
    instead of an error. Images whose short side is under ``resolution`` are reported in
    the notes, since they will be upscaled.
    """
    root = _check_root(path)
    if layout not in LAYOUTS:
        raise DatasetError(f"Layout must be one of {', '.join(LAYOUTS)}, got {layout!r}.")
    if not isinstance(repeats, int) or repeats < 1:
        raise DatasetError(f"Repeats must be at least 1, got {repeats}.")
    extension = _normalise_extension(caption_extension)
    chosen = detect_layout(root) if layout == "auto" else layout
    try:
        if chosen == "image-text":
            found = _scan_image_text(root, extension)
        elif chosen == "kohya":
            found = _scan_kohya(root, extension)
        elif chosen == "imagefolder":
            found = _scan_imagefolder(root, caption_column)
        else:
            found = _scan_sidecar(root, extension, root)
    except PermissionError as error:
        raise DatasetError(f"Part of {root} is not readable by this process ({error.filename}); check its permissions.") from None
    if not found.images:
        raise DatasetError(f"Dataset folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS)}) in the {chosen} layout.")
    for image in found.images:
        if image not in found.captions:
            caption_file = found.caption_files.get(image)
            found.captions[image] = read_caption(caption_file) if caption_file is not None and caption_file.is_file() else None
    missing = [image for image in found.images if found.captions[image] is None]
    if missing and not allow_uncaptioned:
        shown = [found.caption_files.get(image, image) for image in missing]
        raise DatasetError(
            f"{len(missing)} image(s) in {root} have no caption: {_name_list(shown, root)} is missing; "
            "add the caption files or caption them with the Captioner."
        )
    if found.orphans:
        raise DatasetError(f"{len(found.orphans)} caption file(s) in {root} have no image: {_name_list(found.orphans, root)}.")
    sizes = _check_headers(found.images, root)
    entries, digest = [], hashlib.sha256()
    for image in found.images:
        caption = found.captions[image] or ""
        name = image.relative_to(root).as_posix()
        entries.append(Entry(
            name=name, caption=caption, open_image=_Opener(image), repeats=found.repeats.get(image, 1) * repeats,
            size=sizes[image], group=found.groups.get(image, ""),
        ))
        digest.update(name.encode())
        digest.update(_file_digest(image))
        digest.update(caption.encode())
        digest.update(str(entries[-1].repeats).encode() if chosen == "kohya" else b"")
    notes = list(found.notes)
    if missing:
        notes.append(f"{len(missing)} image(s) have no caption")
    empty = sum(1 for image in found.images if found.captions[image] == "")
    if empty:
        notes.append(f"{empty} caption(s) are empty")
    small = [e for e in entries if min(e.size) < resolution]
    if small:
        notes.append(f"{len(small)} image(s) are smaller than {resolution} px on the short side and will be upscaled (e.g. {small[0].name}, {small[0].size[0]}x{small[0].size[1]})")
    return ImageCaptionDataset(
        entries=entries, source=str(root), layout=chosen, content_hash=digest.hexdigest()[:16], notes=notes,
        caption_count=len(entries) - len(missing),
    )


@dataclass(frozen=True)
class _Opener:
    path: Path

    def __call__(self):
        return open_rgb_image(self.path)


@dataclass(frozen=True)
class BytesOpener:
    """Opens an image held as encoded bytes (e.g. a row of an Arrow table) only when asked."""

    fetch: Callable[[], bytes]
    name: str

    def __call__(self):
        data = self.fetch()
        handle = io.BytesIO(data)
        handle.name = self.name
        return open_rgb_image(handle)


def image_size(entry: Entry) -> tuple[int, int]:
    """The entry's (width, height) as displayed: known from indexing, or read from the image."""
    if entry.size is not None:
        return entry.size
    header_size = getattr(entry.open_image, "size", None)
    return header_size() if callable(header_size) else entry.open_image().size
