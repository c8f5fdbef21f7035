"""A minimal but real Hugging Face dataset source for the HFDataset node.

Reads a ``save_to_disk`` folder, a parquet file or folder of parquet files,
or a hub id through the standard HF cache (``HF_HUB_OFFLINE=1`` keeps it to
what is cached). Images are kept as their encoded bytes and decoded only when
the trainer asks, so nothing is written anywhere. Remote code is never run:
no ``trust_remote_code`` is passed, and current ``datasets`` runs no scripts.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.dataset import Entry, ImageCaptionDataset, check_image_size, hash_entries, to_rgb
from ..core.errors import DatasetError

CAPTION_NAMES = ("text", "caption", "captions", "en_text", "prompt", "description", "title", "label_text")


def _open_source(source: str, split: str):
    import datasets

    text = source.strip()
    if not text:
        raise DatasetError("The dataset field is empty; give a hub id such as svjack/pokemon-blip-captions-en-zh or a local folder.")
    path = Path(text).expanduser()
    try:
        if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise DatasetError(f"Dataset {path} has no split {split!r}; it has {', '.join(loaded)}.")
                loaded = loaded[split]
            return loaded
        if path.is_file() and path.suffix == ".parquet" or path.is_dir() and any(path.rglob("*.parquet")):
            files = [str(path)] if path.is_file() else sorted(str(p) for p in path.rglob("*.parquet"))
            return datasets.load_dataset("parquet", data_files=files, split="train")
        if path.exists():
            raise DatasetError(f"{path} is neither a save_to_disk folder nor parquet data; for image+caption folders use the Folder Dataset node.")
        return datasets.load_dataset(text, split=split)
    except DatasetError:
        raise
    except Exception as error:  # datasets raises many kinds; the user needs one sentence
        message = str(error).splitlines()[0][:200] if str(error) else error.__class__.__name__
        raise DatasetError(f"Dataset {text!r} (split {split!r}) could not be loaded: {message}.") from None


def _pick_columns(dataset, image_column: str, caption_column: str) -> tuple[str, str]:
    import datasets

    features = dataset.features
    names = list(features)
    if image_column == "auto":
        images = [name for name, feature in features.items() if isinstance(feature, datasets.Image)]
        if not images:
            raise DatasetError(f"No image column found among {', '.join(names)}; name it in the image column field.")
        image_column = images[0]
    elif image_column not in features:
        raise DatasetError(f"Image column {image_column!r} is not in the dataset; columns are {', '.join(names)}.")
    if caption_column == "auto":
        strings = [name for name, feature in features.items() if getattr(feature, "dtype", None) in ("string", "large_string")]
        preferred = [name for name in CAPTION_NAMES if name in strings]
        if not preferred and not strings:
            raise DatasetError(f"No text column found among {', '.join(names)}; name the caption column.")
        caption_column = (preferred or strings)[0]
    elif caption_column not in features:
        raise DatasetError(f"Caption column {caption_column!r} is not in the dataset; columns are {', '.join(names)}.")
    return image_column, caption_column


@dataclass(frozen=True)
class _BytesOpener:
    data: bytes
    name: str

    def __call__(self):
        from PIL import Image

        try:
            with Image.open(io.BytesIO(self.data)) as image:
                check_image_size(image.size, self.name)
                image.load()
                return to_rgb(image)
        except DatasetError:
            raise
        except Exception as error:
            raise DatasetError(f"Image {self.name} could not be decoded ({error.__class__.__name__}).") from None


def _image_bytes(value: Any, name: str) -> bytes:
    if isinstance(value, dict) and value.get("bytes"):
        return value["bytes"]
    if isinstance(value, dict) and value.get("path") and Path(value["path"]).is_file():
        return Path(value["path"]).read_bytes()
    raise DatasetError(f"Row {name} has no image data.")


def load_hf_dataset(source: str, split: str = "train", image_column: str = "auto", caption_column: str = "auto", max_samples: int = 0) -> ImageCaptionDataset:
    import datasets

    dataset = _open_source(source, split)
    image_column, caption_column = _pick_columns(dataset, image_column, caption_column)
    if max_samples and max_samples < len(dataset):
        dataset = dataset.select(range(max_samples))
    if len(dataset) == 0:
        raise DatasetError(f"Dataset {source!r} split {split!r} has no rows.")
    # Keep encoded bytes: decoding every image up front would hold them all in memory as pixels.
    dataset = dataset.cast_column(image_column, datasets.Image(decode=False)).select_columns([image_column, caption_column])
    entries, hash_parts = [], []
    for index, row in enumerate(dataset):
        name = f"row {index}"
        data = _image_bytes(row[image_column], name)
        caption = " ".join(str(row[caption_column] or "").split())
        entries.append(Entry(name=name, caption=caption, open_image=_BytesOpener(data, name)))
        hash_parts.append((name, data, caption))
    empty = sum(1 for entry in entries if not entry.caption)
    return ImageCaptionDataset(
        entries=entries,
        source=source.strip(),
        layout=f"hf:{image_column}+{caption_column}",
        content_hash=hash_entries(hash_parts),
        notes=[f"{empty} caption(s) are empty"] if empty else [],
    )
