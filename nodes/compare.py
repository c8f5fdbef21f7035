"""Nodes that show what will be trained and what was: the dataset preview and the comparison grid.

The grid samples through ComfyUI itself (the bridge's encode_prompt / sample / decode follow the stock
CLIP Text Encode -> KSampler -> VAE Decode path, and apply_lora is ComfyUI's own LoRA loader), so a
cell is the image a user gets later from the stock nodes with the same settings. The image work
(tiling, labels, IMAGE tensors) is core.grids; this module only gathers inputs and calls ComfyUI.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import DatasetError, SettingsError, TrainerError
from ..core.paths import safe_child

from . import types as T
from .comfy_bridge import api
from .nodes import CATEGORY

PREVIEW_SIZE = 512  # longest side of the finished cell shown on the node while the grid is sampled
LORA_SUFFIX = ".safetensors"


# --------------------------------------------------------------------------- widget text -> values


def parse_prompts(text: str) -> list[str]:
    """One prompt a line; blank lines are skipped."""
    prompts = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not prompts:
        raise SettingsError("The prompt list is empty; type at least one prompt, one a line.")
    return prompts


def parse_strengths(text: str) -> list[float]:
    """Comma- (or space-) separated LoRA strengths, e.g. "0, 0.5, 1.0"."""
    parts = [part for part in (text or "").replace(",", " ").replace(";", " ").split() if part]
    if not parts:
        raise SettingsError("The strength list is empty; type strengths such as 0, 0.5, 1.0.")
    strengths = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise SettingsError(f"Strength {part!r} is not a number; type strengths such as 0, 0.5, 1.0.") from None
        if not math.isfinite(value):
            raise SettingsError(f"Strength {part!r} is not a finite number; type strengths such as 0, 0.5, 1.0.")
        strengths.append(value)
    return strengths


def listed_lora_files(text: str) -> list[str]:
    """File names in models/loras, one a line (Windows separators accepted, as Load LoRA may list them)."""
    return [line.strip().replace("\\", "/") for line in (text or "").splitlines() if line.strip()]


def lora_file_path(name: str) -> Path:
    """The file in one of ComfyUI's loras folders for a listed name (``.safetensors`` may be left out),
    never a path outside them."""
    roots = api().folder_paths("loras")
    for root in roots:
        for candidate_name in (name, name + LORA_SUFFIX):
            candidate = safe_child(root, candidate_name, "LoRA file name")
            if candidate.is_file():
                return candidate
    raise SettingsError(f"LoRA file {name!r} was not found in models/loras; use a name as Load LoRA lists it.")


def format_strength(strength: float) -> str:
    return f"{strength:g}"


# --------------------------------------------------------------------------- LoRAs and columns


@dataclass(frozen=True)
class NamedLoRA:
    """A LoRA to compare, with the name its columns are labelled with."""

    label: str
    tensors: Any = field(repr=False)
    metadata: dict = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Column:
    """One grid column: a LoRA at one strength. Strength 0 is the plain model, whichever the LoRA."""

    lora_index: int
    lora: NamedLoRA
    strength: float

    @property
    def key(self) -> tuple:
        """Columns with the same key give the same images: sampled once, shown in each."""
        return ("plain model",) if self.strength == 0 else (self.lora_index, self.strength)

    @property
    def labels(self) -> list[str]:
        """The two lines above the column (two lines always, so the grid's layout depends on sizes only)."""
        return [self.lora.label, f"strength {format_strength(self.strength)}"]


def gather_loras(lora, lora_files: str) -> list[NamedLoRA]:
    """The connected LoRA first, then each listed file, read once; at least one is needed."""
    loras = []
    if lora is not None:
        if not lora:
            raise TrainerError("The connected LoRA is empty; connect the lora output of Train LoRA or a LoRA loader.")
        metadata = dict(getattr(lora, "metadata", None) or {})
        loras.append(NamedLoRA(metadata.get("ss_output_name") or "connected LoRA", lora, metadata))
    for name in listed_lora_files(lora_files):
        path = lora_file_path(name)
        tensors, metadata = api().load_lora_file(path)
        if not tensors:
            raise TrainerError(f"LoRA file {name!r} holds no tensors; choose another file.")
        loras.append(NamedLoRA(Path(name).name.removesuffix(LORA_SUFFIX), tensors, metadata))
    if not loras:
        raise SettingsError("There is no LoRA to compare; connect one to the lora input or list files from models/loras in lora_files.")
    return loras


def check_families(loras: list[NamedLoRA], model) -> None:
    """Refuse a LoRA made for another model family than MODEL, as Apply LoRA does, before anything is sampled."""
    from ..core.families import check_lora_family, family_named

    family = api().model_family(model)
    if family is None:
        return
    for lora in loras:
        check_lora_family(lora.tensors, lora.metadata, family_named(family), f"The LoRA {lora.label!r}")


def lora_files_fingerprint(lora_files: str) -> str:
    """Names, sizes and times of the listed files: a file saved again under the same name samples again."""
    digest = hashlib.sha256((lora_files or "").encode())
    for name in listed_lora_files(lora_files):
        try:
            stat = os.stat(lora_file_path(name))
        except (TrainerError, OSError):
            continue  # a bad name is reported when the node runs
        digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class CellSettings:
    """What every cell shares: only the model (LoRA and strength) and the prompt change across the grid."""

    negative: str
    seed: int
    steps: int
    cfg: float
    sampler_name: str
    scheduler: str
    width: int
    height: int

    def check(self) -> None:
        if self.width % 8 or self.height % 8 or min(self.width, self.height) < 64:
            raise SettingsError(f"Width and height must be multiples of 8 of at least 64 (the latent is 8 times smaller), got {self.width}x{self.height}.")
        if self.steps < 1:
            raise SettingsError(f"Sampling steps must be at least 1, got {self.steps}.")


class GridSampler:
    """Samples every (prompt, column) cell with ComfyUI, a column's LoRA applied once for all its prompts."""

    def __init__(self, model, clip, vae, settings: CellSettings, node_id: str | None):
        self.model, self.clip, self.vae, self.settings = model, clip, vae, settings
        self.bridge = api()
        self.node_id = node_id

    def run(self, prompts: list[str], columns: list[Column]) -> dict[tuple, list]:
        """{column key: one IMAGE [1, H, W, C] per prompt}, each distinct column sampled once."""
        distinct = list({column.key: column for column in columns}.values())
        bar = self.bridge.progress_bar(len(distinct) * len(prompts), self.node_id)
        images: dict[tuple, list] = {}
        for column in distinct:
            images[column.key] = self._sample_column(column, prompts, bar, done=len(images) * len(prompts))
        return images

    def _patched(self, column: Column):
        if column.strength == 0:
            return self.model, self.clip
        # The same strength on the UNet and the text encoder, as the stock Load LoRA node is mostly used.
        return self.bridge.apply_lora(self.model, self.clip, column.lora.tensors, column.strength, column.strength)

    def _sample_column(self, column: Column, prompts: list[str], bar, done: int) -> list:
        from ..core.grids import image_batch_to_pil

        settings, bridge = self.settings, self.bridge
        model, clip = self._patched(column)
        # Every prompt encoded before any sampling: the text encoder and the UNet are each loaded once per
        # column instead of taking turns on a small card.
        negative = bridge.encode_prompt(clip, settings.negative)
        conditionings = [bridge.encode_prompt(clip, prompt) for prompt in prompts]
        images = []
        for positive in conditionings:
            if bridge.interrupted():  # Cancel between cells; ComfyUI itself also stops inside a cell
                bridge.raise_interrupted()
            latent = bridge.sample(model, positive, negative, seed=settings.seed, steps=settings.steps,
                                   cfg=settings.cfg, sampler_name=settings.sampler_name, scheduler=settings.scheduler,
                                   width=settings.width, height=settings.height)
            image = bridge.decode(self.vae, latent)[:1]
            images.append(image)
            done += 1
            bar.update_absolute(done, None, ("JPEG", image_batch_to_pil(image)[0], PREVIEW_SIZE))
        return images


class CompareGrid:
    DESCRIPTION = (
        "Sample every prompt with the base model and with one or more LoRAs at several strengths, with the same seed "
        "everywhere, into one labelled grid: a row per prompt, a column per LoRA and strength (strength 0 is the model "
        "without the LoRA). Sampling is ComfyUI's own (the KSampler path and its LoRA loader), so the images match what "
        "the stock nodes give with the same settings."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "IMAGE")
    RETURN_NAMES = ("grid", "images")
    OUTPUT_TOOLTIPS = (
        "One image: the prompts down the left, the LoRA name and strength above each column.",
        "Every cell on its own, row by row (prompt 1 at each column, then prompt 2, ...), for Save Image.",
    )
    FUNCTION = "compare"

    @classmethod
    def INPUT_TYPES(cls):
        bridge = api()
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model the LoRA was trained for, e.g. from Load Checkpoint."}),
                "clip": ("CLIP", {"tooltip": "The text encoder from the same checkpoint; the LoRA's text-encoder part, if any, is applied to it too."}),
                "vae": ("VAE", {"tooltip": "The VAE that turns the sampled latents into images."}),
                "prompts": ("STRING", {"multiline": True, "default": "a photo of a cat\na drawing of a house", "tooltip": "One prompt a line; each becomes a row of the grid. Put the LoRA's trigger word in them."}),
                "negative": ("STRING", {"multiline": True, "default": "blurry, low quality", "tooltip": "The negative prompt, the same for every cell."}),
                "strengths": ("STRING", {"default": "0, 0.5, 1.0", "tooltip": "LoRA strengths, separated by commas; each becomes a column per LoRA. 0 is the model without the LoRA."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": False, "tooltip": "The noise seed, the same for every cell, so columns differ only by the LoRA."}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 10000, "tooltip": "Sampling steps per image."}),
                "cfg": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01, "tooltip": "Classifier-free guidance scale, as on KSampler."}),
                "sampler_name": (bridge.sampler_names(), {"default": "euler", "tooltip": "ComfyUI's sampler, as on KSampler."}),
                "scheduler": (bridge.scheduler_names(), {"default": "normal", "tooltip": "ComfyUI's scheduler, as on KSampler."}),
                "width": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8, "tooltip": "Width of each image in px (512 for SD1.x, 1024 for SDXL). All cells together (prompts x columns x width x height) may hold 64 megapixels."}),
                "height": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8, "tooltip": "Height of each image in px."}),
            },
            "optional": {
                "lora": (T.LORA, {"tooltip": "A LoRA from Train LoRA (or ComfyUI's own LoRA nodes)."}),
                "lora_files": ("STRING", {"multiline": True, "default": "", "tooltip": "LoRA files from models/loras, one a line, as Load LoRA lists them; each gets its own columns."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    @classmethod
    def IS_CHANGED(cls, lora_files="", **_):
        return lora_files_fingerprint(lora_files)

    def compare(self, model, clip, vae, prompts, negative, strengths, seed, steps, cfg, sampler_name, scheduler, width, height,
                lora=None, lora_files="", unique_id=None):
        import torch

        from ..core.grids import check_grid_size, image_batch_to_pil, labelled_grid, pil_to_image_batch

        prompt_list, strength_list = parse_prompts(prompts), parse_strengths(strengths)
        settings = CellSettings(negative or "", int(seed), int(steps), float(cfg), sampler_name, scheduler, int(width), int(height))
        settings.check()
        loras = gather_loras(lora, lora_files)
        columns = [Column(index, named, strength) for index, named in enumerate(loras) for strength in strength_list]
        check_grid_size(len(prompt_list), len(columns), settings.width, settings.height)
        check_families(loras, model)
        sampled = GridSampler(model, clip, vae, settings, str(unique_id) if unique_id is not None else None).run(prompt_list, columns)
        cells = [[sampled[column.key][row] for column in columns] for row in range(len(prompt_list))]
        images = torch.cat([image for row in cells for image in row])
        pictures = image_batch_to_pil(images)
        grid_cells = [pictures[row * len(columns):(row + 1) * len(columns)] for row in range(len(prompt_list))]
        grid, _ = labelled_grid(grid_cells, prompt_list, [column.labels for column in columns])
        return (pil_to_image_batch([grid]), images)


# --------------------------------------------------------------------------- dataset preview


class DatasetPreview:
    DESCRIPTION = (
        "Show the dataset as it will be trained, before pressing Queue on training: each image resized and cropped "
        "the way Train LoRA does it at this resolution (in its aspect-ratio bucket when buckets are on), with its "
        "bucket size and its caption under it."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("preview",)
    OUTPUT_TOOLTIPS = ("One image: the first images of the dataset as trained, each with its size in px and caption.",)
    FUNCTION = "preview"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dataset": (T.DATASET, {"tooltip": "Captioned images from Folder Dataset, Hugging Face Dataset or Captioner."}),
            "max_images": ("INT", {"default": 16, "min": 1, "max": 256, "tooltip": "Show at most this many images, from the start of the dataset."}),
            "resolution": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 64, "tooltip": "The training resolution set on Train LoRA (SD1.x 512, SDXL 1024)."}),
            "aspect_buckets": ("BOOLEAN", {"default": False, "label_on": "on", "label_off": "off", "tooltip": "As on Train LoRA: on trains each image near its own aspect ratio; off crops a centred square."}),
        }, "optional": {
            "options": (T.OPTIONS, {"tooltip": "The Training Options node connected to Train LoRA, so its crop and bucket settings (random crops, bucket area, no upscale) are shown too."}),
        }}

    def preview(self, dataset, max_images, resolution, aspect_buckets, options=None):
        from ..core.grids import captioned_sheet, pil_to_image_batch
        from ..core.train_settings import TrainSettings

        from .options import apply_options

        if int(max_images) < 1:
            raise SettingsError(f"Max images must be at least 1, got {max_images}.")
        if not getattr(dataset, "entries", None):
            raise DatasetError("The dataset has no images; point the dataset node at a folder or dataset with captioned images.")
        settings = apply_options(TrainSettings(resolution=int(resolution), bucket=bool(aspect_buckets)), options)
        settings.validate()
        sheet, _ = captioned_sheet(*dataset_tiles(dataset, settings, int(max_images)))
        return (pil_to_image_batch([sheet]),)


def dataset_tiles(dataset, settings, max_images: int) -> tuple[list, list[str], list[str]]:
    """(images as encoded, "WxH  name" headings, captions) of the dataset's first ``max_images`` entries. With random
    crops the trainer encodes the whole resized image and takes a WxH crop of it at random each time it is drawn."""
    from ..core.batching import BatchPlan
    from ..core.grids import training_pixels_to_pil

    plan = BatchPlan(dataset, settings)
    images, headings, captions = [], [], []
    for index, entry in enumerate(dataset.entries[:max_images]):
        pixels, _ = plan.prepared_pixels(index)  # the very tensor the trainer encodes (before a random flip)
        width, height = plan.bucket_of(index)
        images.append(training_pixels_to_pil(pixels))
        crop = "" if settings.crop == "center" else " random crop"
        headings.append(f"{width}x{height}{crop}  {entry.name}")
        captions.append(entry.caption or "(no caption)")
    return images, headings, captions


NODES: dict = {
    "CompareGrid": (CompareGrid, "LoRA Comparison Grid"),
    "DatasetPreview": (DatasetPreview, "Dataset Preview"),
}
