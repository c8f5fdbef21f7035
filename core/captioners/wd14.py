"""The WD14 tagger: SmilingWolf's wd-*-tagger-v3 and wd-v1-4-* ONNX models, run with onnxruntime.

A tagger is ``model.onnx`` + ``selected_tags.csv`` (columns tag_id, name, category, count; category 9
is a rating, 4 a character, 0 a general tag), in a folder such as ``ComfyUI/models/wd14_tagger/<name>``,
or ``<name>.onnx`` + ``<name>.csv`` side by side (the layout of the WD14 Tagger node pack), or a hub
id. Input, as the model card says: the image padded to a square on white, resized to the model's
input size (448 for v3, read from the ONNX input shape), BGR, float32 0..255, NHWC. Output: one
sigmoid probability per tag.

Tags, as kohya's ``tag_images_by_wd14_tagger`` writes them: characters (above the character
threshold) first, then general tags (above the general threshold), each group by confidence; the
most likely rating last when asked for. Underscores become spaces except in kaomoji-like tags
(``^_^``), and parentheses are escaped for prompts (``star_(symbol)`` -> ``star \\(symbol\\)``).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import DatasetError, SettingsError
from .sources import ModelSource, cached_hub_file, find_folder, looks_like_hub_id, looks_like_path, read_config
from .text import tag_key

MODEL_FILE, TAGS_FILE = "model.onnx", "selected_tags.csv"
GENERAL, CHARACTER, RATING = 0, 4, 9
DEFAULT_SIZE = 448
EXAMPLE_REPO = "SmilingWolf/wd-eva02-large-tagger-v3"
# Tags whose underscores are part of the face they draw; any tag of three characters or fewer
# (o_o, ^_^, x_x) is kept as it is too.
KAOMOJI = frozenset({"0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9", ">_o", "@_@",
                     "^_^", "o_o", "u_u", "x_x", "|_|", "||_||"})


@dataclass(frozen=True)
class TagList:
    names: tuple[str, ...]
    categories: np.ndarray  # int, one per tag, in the model's output order


@dataclass(frozen=True)
class TaggerSettings:
    general_threshold: float = 0.35
    character_threshold: float = 0.85
    max_tags: int = 0  # 0: every tag above its threshold
    exclude: tuple[str, ...] = ()
    underscores_to_spaces: bool = True
    escape_parentheses: bool = True
    rating: bool = False

    def __post_init__(self):
        for name in ("general_threshold", "character_threshold"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise SettingsError(f"The tagger's {name.replace('_', ' ')} must be between 0 and 1, got {value}.")
        if self.max_tags < 0:
            raise SettingsError(f"Max tags must be 0 (no limit) or more, got {self.max_tags}.")


def parse_tag_text(text: str) -> tuple[str, ...]:
    """Tags typed as ``a, b`` or one a line."""
    return tuple(tag.strip() for tag in (text or "").replace("\n", ",").split(",") if tag.strip())


def read_tag_list(path: Path) -> TagList:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DatasetError(f"The tag list {path} could not be read ({error}).") from None
    if not rows or not {"name", "category"} <= set(rows[0]):
        raise DatasetError(f"{path} is not a WD14 tag list: it needs the columns tag_id, name, category, count of a selected_tags.csv.")
    try:
        categories = np.array([int(row["category"]) for row in rows])
    except (TypeError, ValueError):
        raise DatasetError(f"{path} has a category that is not a number; use the selected_tags.csv that came with the model.") from None
    return TagList(names=tuple(row["name"] for row in rows), categories=categories)


def format_tag(name: str, settings: TaggerSettings) -> str:
    if settings.underscores_to_spaces and len(name) > 3 and name not in KAOMOJI:
        name = name.replace("_", " ")
    if settings.escape_parentheses:
        name = name.replace("(", "\\(").replace(")", "\\)")
    return name


def select_tags(scores: np.ndarray, tags: TagList, settings: TaggerSettings) -> list[str]:
    """One image's tags from its per-tag probabilities (see the module text for the order)."""
    excluded = {tag_key(tag) for tag in settings.exclude}

    def above(category: int, threshold: float) -> list[int]:
        found = np.flatnonzero((tags.categories == category) & (scores >= threshold))
        ordered = found[np.argsort(-scores[found], kind="stable")]  # ties keep the list's order
        return [int(i) for i in ordered if tag_key(tags.names[i]) not in excluded]

    chosen = above(CHARACTER, settings.character_threshold) + above(GENERAL, settings.general_threshold)
    if settings.max_tags:
        chosen = chosen[: settings.max_tags]
    if settings.rating:
        ratings = np.flatnonzero(tags.categories == RATING)
        if len(ratings):
            best = int(ratings[np.argmax(scores[ratings])])
            if tag_key(tags.names[best]) not in excluded:
                chosen.append(best)
    return [format_tag(tags.names[i], settings) for i in chosen]


def tagger_input(image, size: int) -> np.ndarray:
    """[size, size, 3] float32 BGR 0..255: padded to a square on white (centred), then resized."""
    from PIL import Image

    image = image.convert("RGB")
    side = max(image.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    if side != size:
        square = square.resize((size, size), Image.BICUBIC)
    return np.ascontiguousarray(np.asarray(square, dtype=np.float32)[:, :, ::-1])


# --------------------------------------------------------------------------- finding the model


def _missing(model: str, search_dirs: Sequence) -> DatasetError:
    name = Path(model).name or model
    files = f"model.onnx and selected_tags.csv (from huggingface.co/SmilingWolf/{name})"
    if looks_like_path(model):
        return DatasetError(f"WD14 tagger folder {model} does not exist; put {files} there.")
    where = Path(search_dirs[0]) if search_dirs else Path("ComfyUI/models/wd14_tagger")
    return DatasetError(f"WD14 tagger {model!r} was not found: put {files} into {where / name}, or name a folder that holds them or a hub id such as {EXAMPLE_REPO}.")


def _tagger_folder(folder: Path) -> ModelSource:
    onnx, tags = folder / MODEL_FILE, folder / TAGS_FILE
    if onnx.is_file() and tags.is_file():
        return ModelSource(str(folder), folder=folder, files=(onnx, tags))
    if read_config(folder) is not None:
        raise DatasetError(f"{folder} holds a transformers model (config.json), not a WD14 tagger; a tagger folder holds model.onnx and selected_tags.csv.")
    missing = " and ".join(name for name, path in ((MODEL_FILE, onnx), (TAGS_FILE, tags)) if not path.is_file())
    raise DatasetError(f"WD14 tagger folder {folder} has no {missing}; put both files of the tagger (e.g. from huggingface.co/{EXAMPLE_REPO}) there.")


def locate(model: str, search_dirs: Sequence = ()) -> ModelSource:
    """A tagger folder, a ``<name>.onnx`` + ``<name>.csv`` pair in a search dir, or a hub id (never downloads)."""
    model = (model or "").strip()
    if not model:
        raise DatasetError(f"The WD14 tagger needs a model: a folder under ComfyUI/models/wd14_tagger holding model.onnx and selected_tags.csv, or a hub id such as {EXAMPLE_REPO}.")
    folder = find_folder(model, search_dirs)
    if folder is not None:
        return _tagger_folder(folder)
    stem = Path(model).name.removesuffix(".onnx")
    pairs = [(Path(d) / f"{stem}.onnx", Path(d) / f"{stem}.csv") for d in search_dirs]
    if model.endswith(".onnx"):
        path = Path(model).expanduser()
        pairs = [(path, path.with_suffix(".csv")), (path, path.parent / TAGS_FILE)] + pairs
    for onnx, tags in pairs:
        if onnx.is_file() and tags.is_file():
            return ModelSource(model, files=(onnx, tags))
    if looks_like_hub_id(model):
        cached = [cached_hub_file(model, name) for name in (MODEL_FILE, TAGS_FILE)]
        return ModelSource(model, hub_id=model, files=tuple(cached) if all(cached) else ())
    raise _missing(model, search_dirs)


def download(source: ModelSource) -> tuple[Path, Path]:
    """The (model.onnx, selected_tags.csv) paths, fetched into the Hugging Face cache for a hub id."""
    if source.files:
        return Path(source.files[0]), Path(source.files[1])
    from huggingface_hub import hf_hub_download

    try:
        return tuple(Path(hf_hub_download(source.hub_id, name)) for name in (MODEL_FILE, TAGS_FILE))
    except Exception:
        raise DatasetError(
            f"WD14 tagger {source.hub_id} is neither a folder nor in the local Hugging Face cache (HF_HUB_OFFLINE may be set, "
            "or the repository has no model.onnx); download it once or put model.onnx and selected_tags.csv under ComfyUI/models/wd14_tagger/<name>."
        ) from None


# --------------------------------------------------------------------------- running it


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise DatasetError(
            "The WD14 tagger needs the onnxruntime package, which is not installed; run `pip install onnxruntime` "
            "(or onnxruntime-gpu for CUDA) in this Python environment."
        ) from None
    return onnxruntime


def execution_providers(onnxruntime, device: Any = None) -> list:
    """CUDA when onnxruntime has it and the device is a GPU (or not named), else the CPU."""
    name = str(device) if device is not None else "cuda"
    if name.startswith("cuda") and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        index = int(name.split(":", 1)[1]) if ":" in name else 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


@dataclass
class WD14Tagger:
    """A loaded tagger: an onnxruntime session and its tag list."""

    session: Any
    input_name: str
    size: int
    max_batch: int | None  # a model exported with a fixed batch size takes only that many images a run
    tags: TagList
    name: str
    identity: str = ""

    @classmethod
    def load(cls, source: ModelSource, device: Any = None) -> "WD14Tagger":
        onnxruntime = import_onnxruntime()
        onnx_path, tags_path = download(source)
        tags = read_tag_list(tags_path)
        try:
            session = onnxruntime.InferenceSession(str(onnx_path), providers=execution_providers(onnxruntime, device))
        except Exception as error:
            raise DatasetError(f"{onnx_path} could not be loaded by onnxruntime ({str(error).splitlines()[0][:160]}); it is not a WD14 tagger model.") from None
        size, max_batch = _input_layout(session, onnx_path)
        outputs = session.get_outputs()[0].shape[-1]
        if isinstance(outputs, int) and outputs != len(tags.names):
            raise DatasetError(f"{onnx_path} scores {outputs} tags but {tags_path} lists {len(tags.names)}; both files must come from the same tagger.")
        identity = source.identity() or ModelSource(source.requested, files=(onnx_path, tags_path)).identity()
        return cls(session, session.get_inputs()[0].name, size, max_batch, tags, source.name, identity or "")

    def scores(self, images: list) -> np.ndarray:
        """[len(images), tags] probabilities."""
        batch = np.stack([tagger_input(image, self.size) for image in images])
        step = self.max_batch or len(batch)
        parts = [self.session.run(None, {self.input_name: batch[i:i + step]})[0] for i in range(0, len(batch), step)]
        return np.concatenate(parts).astype(np.float32)

    def run(self, images: list, settings: TaggerSettings) -> list[np.ndarray]:
        return list(self.scores(images))


def _input_layout(session, onnx_path: Path) -> tuple[int, int | None]:
    """(square input size, fixed batch size or None) of an NHWC tagger; anything else is not a WD14 tagger."""
    shape = session.get_inputs()[0].shape
    if len(shape) != 4 or shape[3] != 3:
        raise DatasetError(f"{onnx_path} takes input of shape {shape}, not [batch, height, width, 3]; it is not a WD14 tagger model.")
    size = shape[1] if isinstance(shape[1], int) and shape[1] > 0 else DEFAULT_SIZE
    batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    return size, batch


def renderer(source: ModelSource, tagger: WD14Tagger | None, settings: TaggerSettings):
    """Scores -> caption; the tag list comes from the loaded tagger or, when every image was cached, from the file."""
    tags = tagger.tags if tagger is not None else read_tag_list(Path(source.files[1]))
    return lambda scores: ", ".join(select_tags(np.asarray(scores), tags, settings))
