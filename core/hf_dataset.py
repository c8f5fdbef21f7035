"""Hugging Face datasets as training data: hub ids, save_to_disk folders, data-file folders.

Sources, tried in this order for ``load_hf_dataset(source)``:

1. a local folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``;
2. a local imagefolder (images + ``metadata.jsonl``/``metadata.csv``): indexed in place by
   ``core.dataset.load_folder_dataset`` (nothing is copied);
3. a local folder (or single file) of parquet / arrow / jsonl / json / csv files, read with
   ``datasets.load_dataset`` (converted once into the Hugging Face cache, never into the folder);
4. a hub id such as ``svjack/pokemon-blip-captions-en-zh``, through the standard cache
   (``HF_HOME`` / ``HF_DATASETS_CACHE``); with ``HF_HUB_OFFLINE=1`` only a cached copy is used.

``trust_remote_code`` is never passed: dataset scripts do not run. Images stay encoded in
the memory-mapped Arrow table and each entry decodes its own image when the trainer asks,
so a 50,000-row dataset costs its captions in memory, not its pixels.

Columns: the image column is the first ``Image`` feature (or a ``{bytes, path}`` struct);
the caption column is the first of ``core.dataset.CAPTION_COLUMNS`` (text, caption,
captions, en_text, prompt, description, tags, alt_text, sentence), compared without case.
Both can be named instead; a name that is not there gets an error listing the columns.
"""
from __future__ import annotations

import hashlib
import io
import os
import re
from pathlib import Path

from .dataset import (
    CAPTION_COLUMNS, METADATA_FILES, BytesOpener, Entry, ImageCaptionDataset, clean_caption, load_folder_dataset,
    open_rgb_image, oriented_size, pick_caption_column,
)
from .errors import DatasetError

DATA_FILE_SUFFIXES = (".parquet", ".arrow", ".jsonl", ".json", ".csv")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def load_hf_dataset(
    source: str | os.PathLike,
    split: str | None = None,
    image_column: str | None = None,
    caption_column: str | None = None,
    max_samples: int | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    allow_uncaptioned: bool = False,
) -> ImageCaptionDataset:
    """Index a Hugging Face dataset (see the module doc); images are decoded only when opened."""
    text = str(source).strip()
    if not text:
        raise DatasetError("The dataset name is empty; give a hub id like svjack/pokemon-blip-captions-en-zh or a local folder.")
    if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 0):
        raise DatasetError(f"Max samples must be 0 (all) or a positive number, got {max_samples}.")
    max_samples = max_samples or None
    path = Path(text).expanduser()
    if path.exists():
        if not os.access(path, os.R_OK):
            raise DatasetError(f"Dataset path {path} is not readable by this process; check its permissions.")
        if path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
            (table, split_name), kind = _load_saved(path, split), "hf save_to_disk"
        elif path.is_dir() and any((path / m).is_file() for m in METADATA_FILES):
            return _imagefolder(path, caption_column, max_samples, allow_uncaptioned)
        else:
            (table, split_name), kind = _load_files(path, split, cache_dir), "hf files"
        name = str(path)
    elif _looks_like_path(text) or not HUB_ID.match(text):
        raise DatasetError(f"Dataset {text} is neither an existing folder nor a Hugging Face hub id (owner/name).")
    else:
        (table, split_name), name, kind = _load_hub(text, split, cache_dir), text, "hf hub"
    layout = f"{kind}, split {split_name}" if split_name else kind
    return _from_table(table, name, layout, image_column, caption_column, max_samples, allow_uncaptioned)


def _looks_like_path(text: str) -> bool:
    return text.startswith((".", "/", "~", "\\")) or "\\" in text or bool(re.match(r"^[A-Za-z]:", text)) or text.count("/") > 1


def _choose_split(splits: dict, split: str | None, where: str):
    """(table, split name): the requested split, else train, else the only one."""
    names = list(splits)
    if split:
        if split not in splits:
            raise DatasetError(f"Split {split!r} is not in {where}; its splits are: {', '.join(names)}.")
        return splits[split], split
    if "train" in splits:
        return splits["train"], "train"
    if len(names) == 1:
        return splits[names[0]], names[0]
    raise DatasetError(f"{where} has splits {', '.join(names)} and none is called train; choose one.")


def _load_saved(path: Path, split: str | None):
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as error:
        raise DatasetError(f"{path} looks like a save_to_disk folder but could not be read ({error.__class__.__name__}: {error}).") from None
    if isinstance(loaded, datasets.DatasetDict):
        return _choose_split(loaded, split, str(path))
    if split and loaded.split is not None and str(loaded.split) != split:
        raise DatasetError(f"Split {split!r} is not in {path}; it holds the {loaded.split} split only.")
    return loaded, str(loaded.split) if loaded.split is not None else None


def _load_files(path: Path, split: str | None, cache_dir):
    import datasets

    if path.is_file():
        files = [path] if path.suffix.lower() in DATA_FILE_SUFFIXES else []
        if not files:
            raise DatasetError(f"Dataset path {path} is a file but not a data file ({', '.join(DATA_FILE_SUFFIXES)}); give the folder or a parquet/arrow/jsonl/csv file.")
    else:
        files = [p for p in path.rglob("*") if p.suffix.lower() in DATA_FILE_SUFFIXES and p.is_file() and not p.name.startswith(".")]
        if not files:
            raise DatasetError(
                f"Folder {path} holds no dataset files ({', '.join(DATA_FILE_SUFFIXES)}), no save_to_disk dataset and no metadata.jsonl; "
                "for images with .txt captions use the folder dataset instead."
            )
    kinds = {_builder_for(p.suffix.lower()) for p in files}
    if len(kinds) > 1:
        raise DatasetError(f"Folder {path} mixes dataset file types ({', '.join(sorted(kinds))}); keep one type.")
    try:
        if path.is_file():
            loaded = datasets.load_dataset(kinds.pop(), data_files=str(path), cache_dir=_cache(cache_dir))
        else:
            # The folder form lets datasets infer split names from file names (train-*.parquet, data/test.csv, ...).
            loaded = datasets.load_dataset(str(path), cache_dir=_cache(cache_dir))
    except DatasetError:
        raise
    except Exception as error:
        raise DatasetError(f"The data files in {path} could not be read ({error.__class__.__name__}: {_first_line(error)}).") from None
    return _choose_split(loaded, split, str(path))


def _builder_for(suffix: str) -> str:
    return {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json", ".json": "json", ".csv": "csv"}[suffix]


def _load_hub(dataset_id: str, split: str | None, cache_dir):
    import datasets
    from huggingface_hub import constants

    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_DATASETS_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    try:
        loaded = datasets.load_dataset(dataset_id, cache_dir=_cache(cache_dir))
    except Exception as error:
        message = _first_line(error)
        if offline:
            if os.environ.get("LORA_TRAINER_OFFLINE_REASON"):  # the CLI's --offline
                why, undo = os.environ["LORA_TRAINER_OFFLINE_REASON"], "run without --offline once"
            else:
                why, undo = "it is set in your environment", "unset HF_HUB_OFFLINE once"
            raise DatasetError(
                f"Dataset {dataset_id} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set ({why}); "
                f"{undo} with network access to download it, or give a local folder."
            ) from None
        if "doesn't exist" in message or "not found" in message.lower() or "404" in message:
            raise DatasetError(f"Dataset {dataset_id} was not found on the Hugging Face hub; check the id (owner/name).") from None
        raise DatasetError(f"Dataset {dataset_id} could not be loaded ({error.__class__.__name__}: {message}).") from None
    return _choose_split(loaded, split, dataset_id)


def _cache(cache_dir) -> str | None:
    return str(cache_dir) if cache_dir is not None else None


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0][:300]


def _imagefolder(path: Path, caption_column, max_samples, allow_uncaptioned) -> ImageCaptionDataset:
    dataset = load_folder_dataset(path, layout="imagefolder", caption_column=caption_column, allow_uncaptioned=allow_uncaptioned)
    if max_samples and max_samples < len(dataset):
        digest = hashlib.sha256(f"{dataset.content_hash}:{max_samples}".encode()).hexdigest()[:16]
        dataset = ImageCaptionDataset(
            entries=dataset.entries[:max_samples], source=dataset.source, layout=dataset.layout, content_hash=digest,
            notes=dataset.notes + [f"first {max_samples} rows"], caption_count=None,
        )
    return dataset


def _image_column(table, requested: str | None) -> str:
    import datasets

    features = table.features
    columns = list(features)
    if requested:
        if requested not in features:
            raise DatasetError(f"Image column {requested!r} is not in the dataset; its columns are: {', '.join(columns)}.")
        return requested
    for name, feature in features.items():
        if isinstance(feature, datasets.Image):
            return name
    for name, feature in features.items():
        if isinstance(feature, dict) and set(feature) == {"bytes", "path"}:
            return name
    raise DatasetError(f"The dataset has no image column (an Image feature); its columns are: {', '.join(columns)}; name the image column.")


def _from_table(table, name: str, layout: str, image_column, caption_column, max_samples, allow_uncaptioned) -> ImageCaptionDataset:
    import datasets

    image_name = _image_column(table, image_column)
    string_columns = [c for c in table.features if c != image_name]
    text_name = pick_caption_column(list(table.features), caption_column, "the dataset") if caption_column else pick_caption_column(
        [c for c in string_columns if _is_text(table.features[c])], None, "the dataset"
    )
    if caption_column and caption_column == image_name:
        raise DatasetError(f"Caption column {caption_column!r} is the image column; name a text column.")
    if text_name is None and not allow_uncaptioned:
        raise DatasetError(
            f"Dataset {name} has no caption column ({', '.join(CAPTION_COLUMNS)}); its columns are: "
            f"{', '.join(table.features)}; name the caption column or caption it with the Captioner."
        )
    total_rows = len(table)
    if max_samples and max_samples < total_rows:
        table = table.select(range(max_samples))
    if len(table) == 0:
        raise DatasetError(f"Dataset {name} has no rows.")
    # Keep images encoded: only the rows the trainer opens are decoded, one at a time.
    images = table.select_columns([image_name])
    if not isinstance(images.features[image_name], datasets.Image) or images.features[image_name].decode:
        try:
            images = images.cast_column(image_name, datasets.Image(decode=False))
        except Exception:
            raise DatasetError(f"Column {image_name!r} of {name} does not hold images; name the image column.") from None
    captions = [clean_caption(c) if c is not None else None for c in table[text_name]] if text_name else [None] * len(table)
    missing = [i for i, c in enumerate(captions) if not c]
    if missing and not allow_uncaptioned:
        raise DatasetError(
            f"{len(missing)} row(s) of {name} have an empty {text_name!r} caption (rows {', '.join(map(str, missing[:5]))}"
            f"{' ...' if len(missing) > 5 else ''}); caption them with the Captioner or pick another caption column."
        )
    group = name.rstrip("/\\").replace("\\", "/").split("/")[-1] or "dataset"
    width = max(6, len(str(len(table) - 1)))
    entries = [
        Entry(
            name=f"{index:0{width}d}", caption=caption or "", open_image=_RowImage(images, image_name, index, f"row {index} of {name}"),
            group=group,
        )
        for index, caption in enumerate(captions)
    ]
    digest = hashlib.sha256()
    digest.update(f"{table._fingerprint}|{image_name}|{text_name}|{len(table)}".encode())
    for caption in captions:
        digest.update(hashlib.sha256((caption or "").encode()).digest())
    notes = [f"captions from column {text_name!r}" if text_name else "no caption column", f"images from column {image_name!r}"]
    if len(table) < total_rows:
        notes.append(f"first {len(table)} of {total_rows} rows")
    if missing:
        notes.append(f"{len(missing)} image(s) have no caption")
    return ImageCaptionDataset(
        entries=entries, source=name, layout=layout, content_hash=digest.hexdigest()[:16], notes=notes,
        caption_count=len(entries) - len(missing),
    )


def _is_text(feature) -> bool:
    import datasets

    if isinstance(feature, datasets.Value):
        return feature.dtype in ("string", "large_string")
    list_types = tuple(getattr(datasets, name) for name in ("Sequence", "List", "LargeList") if isinstance(getattr(datasets, name, None), type))
    if isinstance(feature, list_types):  # COCO-style lists of captions: the first one is used
        inner = getattr(feature, "feature", None)
        return isinstance(inner, datasets.Value) and inner.dtype in ("string", "large_string")
    return False


class _RowImage:
    """Opens row ``index``'s image from the (memory-mapped) table when called."""

    def __init__(self, table, column: str, index: int, label: str):
        self.table, self.column, self.index, self.label = table, column, index, label

    def __call__(self):
        cell = self.table[self.index][self.column]
        if cell is None:
            raise DatasetError(f"The image in {self.label} is empty; remove that row.")
        if cell.get("bytes"):
            return BytesOpener(lambda: cell["bytes"], self.label)()
        if cell.get("path"):
            return open_rgb_image(cell["path"])
        raise DatasetError(f"The image in {self.label} has neither bytes nor a path; remove that row.")

    def size(self) -> tuple[int, int]:
        """(width, height) as displayed, from the header only (bucketing needs sizes, not pixels)."""
        from PIL import Image

        cell = self.table[self.index][self.column] or {}
        try:
            source = io.BytesIO(cell["bytes"]) if cell.get("bytes") else cell.get("path")
            with Image.open(source) as image:
                return oriented_size(image)
        except Exception:
            return self().size  # let the full open report what is wrong with it
