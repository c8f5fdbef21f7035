"""Captioned image datasets: what the trainer reads, from wherever it came.

A dataset is a list of entries (a name, a caption, a repeat count and a way
to open the image) plus a summary for people and a content hash for caches
and LoRA metadata. Sources never write into the user's folders.
"""
from __future__ import annotations

import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import DatasetError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_IMAGE_PIXELS = 64 * 1024 * 1024  # a 8192x8192 photo; larger is a decompression bomb or a mistake
MAX_CAPTION_BYTES = 64 * 1024
LAYOUTS = ("auto", "image-text", "sidecar")
_LIST_LIMIT = 5


@dataclass(frozen=True)
class Entry:
    name: str
    caption: str
    open_image: Callable[[], "object"] = field(repr=False, compare=False)
    repeats: int = 1


@dataclass(eq=False)
class ImageCaptionDataset:
    entries: list[Entry]
    source: str
    layout: str
    content_hash: str
    notes: list[str] = field(default_factory=list)

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

    def summary(self) -> str:
        sample = self.entries[0].caption if self.entries else ""
        sample = sample if len(sample) <= 60 else sample[:57] + "..."
        repeats = f", {self.num_samples} with repeats" if self.num_samples != len(self) else ""
        return f"{len(self)} images{repeats} from {self.source} ({self.layout}); e.g. \"{sample}\""

    def __repr__(self) -> str:
        return f"Dataset({self.summary()})"


# --------------------------------------------------------------------------- images


def open_rgb_image(path: str | os.PathLike):
    """Open an image as RGB with EXIF orientation applied and alpha composited on white."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            check_image_size(image.size, Path(path).name)
            image.load()
            image = ImageOps.exif_transpose(image)
            return to_rgb(image)
    except DatasetError:
        raise
    except Exception as error:
        raise DatasetError(f"Image {path} could not be read ({error.__class__.__name__}: {error}); remove or re-save it.") from None


def check_image_size(size: tuple[int, int], name: str) -> None:
    width, height = size
    if width * height > MAX_IMAGE_PIXELS:
        raise DatasetError(f"Image {name} is {width}x{height} pixels, over the {MAX_IMAGE_PIXELS // 2**20} Mpx limit; downscale it first.")
    if min(width, height) < 8:
        raise DatasetError(f"Image {name} is only {width}x{height} pixels; training images must be at least 8 px on each side.")


def to_rgb(image):
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda value: value * (1 / 256)).convert("L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
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
    return " ".join(text.split())


# --------------------------------------------------------------------------- folders


def _name_list(paths: list[Path], root: Path) -> str:
    shown = ", ".join(str(p.relative_to(root)) for p in paths[:_LIST_LIMIT])
    more = f" and {len(paths) - _LIST_LIMIT} more" if len(paths) > _LIST_LIMIT else ""
    return shown + more


def _images_in(folder: Path, recursive: bool) -> list[Path]:
    walker = folder.rglob("*") if recursive else folder.iterdir()
    found = [
        path for path in walker
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    ]
    return sorted(found, key=natural_key)


def natural_key(path: Path):
    """Sort 2.png before 10.png, as people number their files."""
    import re

    return [int(token) if token.isdigit() else token.lower() for token in re.split(r"(\d+)", str(path))]


def detect_layout(root: Path) -> str:
    if (root / "image").is_dir() and (root / "text").is_dir():
        return "image-text"
    return "sidecar"


def _check_headers(images: list[Path], root: Path) -> None:
    from PIL import Image

    broken = []
    for path in images:
        try:
            with Image.open(path) as image:
                check_image_size(image.size, str(path.relative_to(root)))
        except DatasetError:
            raise
        except Exception:
            broken.append(path)
    if broken:
        raise DatasetError(f"{len(broken)} file(s) in {root} are not readable images: {_name_list(broken, root)}; remove or re-save them.")


def hash_entries(parts: list[tuple[str, bytes, str]]) -> str:
    digest = hashlib.sha256()
    for name, content, caption in parts:
        digest.update(name.encode())
        digest.update(hashlib.sha256(content).digest())
        digest.update(caption.encode())
    return digest.hexdigest()[:16]


def load_folder_dataset(path: str | os.PathLike, layout: str = "auto", repeats: int = 1, caption_extension: str = ".txt") -> ImageCaptionDataset:
    """Index a folder of captioned images without modifying it.

    Layouts: ``image-text`` (``image/<stem>.png`` + ``text/<stem>.txt``, the
    old SimpleLoRA node's) and ``sidecar`` (``a.png`` + ``a.txt`` side by
    side, searched recursively).
    """
    root = Path(path).expanduser()
    if not str(path).strip():
        raise DatasetError("The dataset folder path is empty; give the folder that holds your images.")
    if not root.exists():
        raise DatasetError(f"Dataset folder {root} does not exist.")
    if not root.is_dir():
        raise DatasetError(f"Dataset path {root} is a file, not a folder; give the folder that holds the images.")
    if layout not in LAYOUTS:
        raise DatasetError(f"Layout must be one of {', '.join(LAYOUTS)}, got {layout!r}.")
    if repeats < 1:
        raise DatasetError(f"Repeats must be at least 1, got {repeats}.")
    if not os.access(root, os.R_OK | os.X_OK):
        raise DatasetError(f"Dataset folder {root} is not readable by this process; check its permissions.")
    chosen = detect_layout(root) if layout == "auto" else layout
    if chosen == "image-text":
        image_dir, text_dir = root / "image", root / "text"
        if not image_dir.is_dir() or not text_dir.is_dir():
            raise DatasetError(f"Dataset folder {root} has no image/ and text/ subfolders, which the image-text layout needs.")
        images = _images_in(image_dir, recursive=False)
        caption_for = {image: text_dir / (image.stem + caption_extension) for image in images}
        orphans = sorted(
            (p for p in text_dir.iterdir() if p.suffix == caption_extension and p.stem not in {i.stem for i in images}),
            key=natural_key,
        )
    else:
        images = _images_in(root, recursive=True)
        caption_for = {image: image.with_suffix(caption_extension) for image in images}
        image_stems = {image.with_suffix("") for image in images}
        orphans = sorted(
            (p for p in root.rglob("*" + caption_extension) if p.with_suffix("") not in image_stems and not p.name.startswith(".")),
            key=natural_key,
        )
    if not images:
        raise DatasetError(
            f"Dataset folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS)}) in the {chosen} layout."
        )
    missing = [caption_for[image] for image in images if not caption_for[image].is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} image(s) in {root} have no caption file: {_name_list(missing, root)} is missing.")
    if orphans:
        raise DatasetError(f"{len(orphans)} caption file(s) in {root} have no image: {_name_list(orphans, root)}.")
    _check_headers(images, root)
    entries, hash_parts = [], []
    for image in images:
        caption = read_caption(caption_for[image])
        name = str(image.relative_to(root))
        entries.append(Entry(name=name, caption=caption, open_image=_Opener(image), repeats=repeats))
        hash_parts.append((name, image.read_bytes(), caption))
    empty = [e.name for e in entries if not e.caption]
    notes = [f"{len(empty)} caption(s) are empty"] if empty else []
    return ImageCaptionDataset(entries=entries, source=str(root), layout=chosen, content_hash=hash_entries(hash_parts), notes=notes)


@dataclass(frozen=True)
class _Opener:
    path: Path

    def __call__(self):
        return open_rgb_image(self.path)
