"""The node classes: widgets in, core calls, typed objects out.

Classic ComfyUI node interface (INPUT_TYPES / RETURN_TYPES / FUNCTION), so it
runs on every ComfyUI release users have. Heavy imports (torch, diffusers,
datasets) happen inside the node functions, never at import.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..core.errors import DatasetError, ModelLoadError, OutputPathError, TrainerError
from ..core.paths import safe_child

from . import types as T
from .comfy_bridge import BASE_EVENT, DIFFUSERS, LORA_LOGS, api

CATEGORY = "LoRA Trainer"
PREFIX = "LoRATrainer_"
DIFFUSERS_TAG = "[diffusers] "
CHECKPOINT_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pth")
AUTO_PRECISION = "auto = bf16 on GPUs and CPUs that have it, else fp16 on a GPU and fp32 on the CPU"


def core_choices(name: str) -> list[str]:
    """An enum widget's choices, from core's own list (imported when ComfyUI asks for the inputs, never at import)."""
    from ..core import dataset, devices, lora, optim

    lists = {"precisions": devices.PRECISIONS, "layouts": dataset.LAYOUTS, "targets": tuple(lora.UNET_TARGET_PRESETS),
             "adapters": lora.ADAPTER_TYPES, "lr_schedulers": optim.LR_SCHEDULERS, "devices": devices.device_choices()}
    return list(lists[name])


BUCKET_CHOICES = ["auto", "on", "off"]


# --------------------------------------------------------------------------- base model


def checkpoint_choices() -> list[str]:
    bridge = api()
    files = [name for name in bridge.filename_list("checkpoints") if name.lower().endswith(CHECKPOINT_EXTENSIONS)]
    folders = []
    for root in bridge.folder_paths(DIFFUSERS):
        if os.path.isdir(root):
            folders += sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and os.path.isfile(os.path.join(entry.path, "model_index.json")))
    return files + [DIFFUSERS_TAG + name for name in folders]


def resolve_checkpoint(name: str) -> tuple[Path, bool]:
    """(path, is_diffusers_folder) for a name from checkpoint_choices, never outside ComfyUI's model folders."""
    bridge = api()
    if name.startswith(DIFFUSERS_TAG):
        folder_name = name[len(DIFFUSERS_TAG):]
        for root in bridge.folder_paths(DIFFUSERS):
            candidate = safe_child(root, folder_name, "diffusers folder name")
            if (candidate / "model_index.json").is_file():
                return candidate, True
        raise ModelLoadError(f"Diffusers folder {folder_name!r} was not found in ComfyUI's models/diffusers.")
    path = bridge.full_path("checkpoints", name)
    if not path:
        raise ModelLoadError(f"Checkpoint {name!r} was not found in ComfyUI's models/checkpoints; refresh the node list.")
    return Path(path), False


class LoadBaseCheckpoint:
    DESCRIPTION = "Load an SD1.x, SD2.x or SDXL checkpoint (single file from models/checkpoints or a diffusers folder from models/diffusers) as the base model to train a LoRA on; the family found is shown on the node. Works offline; the CLIP tokenizers come from ComfyUI itself."
    CATEGORY = CATEGORY
    RETURN_TYPES = (T.BASE,)
    RETURN_NAMES = ("base",)
    OUTPUT_TOOLTIPS = ("The base model (UNet, VAE, text encoders, tokenizers) and its family, for TrainLoRA.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "checkpoint": (checkpoint_choices(), {"tooltip": "SD1.x, SD2.x or SDXL checkpoint from models/checkpoints, or a diffusers folder from models/diffusers ([diffusers] prefix)."}),
                "precision": (core_choices("precisions"), {"default": "auto", "tooltip": f"Storage precision of the UNet and text encoders ({AUTO_PRECISION}: the precision Train LoRA's auto trains in). The VAE always stays fp32 (the SD and SDXL VAEs overflow in fp16)."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def load(self, checkpoint, precision, unique_id=None):
        import torch

        from ..core.devices import resolve_precision, torch_dtype
        from ..core.model_loading import load_base_model

        path, is_folder = resolve_checkpoint(checkpoint)
        tokenizer = None if is_folder and (path / "tokenizer" / "vocab.json").is_file() else api().tokenizer_dir()
        device = api().torch_device()
        # auto: what Train LoRA's auto trains in on this device; an explicit choice is a storage dtype (fp16 on a CPU too).
        dtype = torch_dtype(resolve_precision(precision, device) if precision == "auto" else precision)
        # ComfyUI runs nodes under torch.inference_mode(); tensors made there can never join autograd, so load outside it.
        # Read straight into the storage precision: an SDXL file is never held in fp32 on the way.
        with torch.inference_mode(False):
            base = load_base_model(path, tokenizer, dtype=dtype)
        api().send_event(BASE_EVENT, {"node": str(unique_id or ""), "phase": "base", "text": base_summary(base)})
        return (base,)


def base_summary(base) -> str:
    """What the node shows under its widgets: the family and what it implies for training."""
    family = base.model_family
    reason = f" ({base.prediction_reason})" if base.prediction_reason else ""
    return f"{family.label}, trains at {family.training_resolution(base)} px, target {base.prediction_type}{reason}"


# --------------------------------------------------------------------------- datasets


def _folder_fingerprint(folder: str) -> str:
    """Names, sizes and times of the files below ``folder``: changes when images or captions change, and only then."""
    digest = hashlib.sha256(folder.encode())
    root = Path(folder).expanduser()
    if root.is_dir():
        for path in sorted(root.rglob("*")):
            try:
                stat = path.stat()
            except OSError:
                continue
            digest.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


UNCAPTIONED_CHOICES = ["refuse", "keep for the Captioner"]


class FolderDataset:
    DESCRIPTION = "A folder of captioned images: image/ + text/ subfolders with matching names (0.png + 0.txt), or images with .txt captions beside them. The folder is only read, never written."
    CATEGORY = CATEGORY
    RETURN_TYPES = (T.DATASET,)
    RETURN_NAMES = ("dataset",)
    OUTPUT_TOOLTIPS = ("Images with captions for TrainLoRA or Captioner.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "folder": ("STRING", {"default": "", "tooltip": "Absolute path of the dataset folder (or a path relative to ComfyUI's input folder)."}),
            "layout": (core_choices("layouts"), {"default": "auto", "tooltip": "auto detects: image/ + text/ folders; metadata.jsonl/csv (imagefolder); kohya 10_name folders (10 repeats); else .txt captions beside each image."}),
            "repeats": ("INT", {"default": 1, "min": 1, "max": 1000, "tooltip": "How many times each image is seen per epoch."}),
        }, "optional": {
            "images_without_captions": (UNCAPTIONED_CHOICES, {"default": "refuse", "tooltip": "refuse: an image without a caption file is an error; keep for the Captioner: it gets an empty caption, for a Captioner after this node to fill."}),
        }}

    @classmethod
    def IS_CHANGED(cls, folder, layout, repeats, **_optional):
        # Re-read (and retrain) only when files in the folder change; the same folder gives the same value.
        return _folder_fingerprint(_dataset_folder(folder))

    def load(self, folder, layout, repeats, images_without_captions="refuse"):
        from ..core.dataset import load_folder_dataset

        allow = images_without_captions == "keep for the Captioner"
        return (load_folder_dataset(_dataset_folder(folder), layout=layout, repeats=repeats, allow_uncaptioned=allow),)


def _dataset_folder(folder: str) -> str:
    text = (folder or "").strip()
    if text and not os.path.isabs(os.path.expanduser(text)):
        input_dir = getattr(api(), "input_directory", lambda: None)()
        if input_dir:
            return os.path.join(input_dir, text)
    return text


class HFDataset:
    DESCRIPTION = "A Hugging Face image-caption dataset: a hub id (downloaded once into the standard HF cache), a save_to_disk folder, or parquet files. No remote code is ever run."
    CATEGORY = CATEGORY
    RETURN_TYPES = (T.DATASET,)
    RETURN_NAMES = ("dataset",)
    OUTPUT_TOOLTIPS = ("Images with captions for TrainLoRA or Captioner.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dataset": ("STRING", {"default": "svjack/pokemon-blip-captions-en-zh", "tooltip": "Hub id (owner/name), a save_to_disk folder, or a parquet file/folder."}),
            "split": ("STRING", {"default": "train", "tooltip": "Which split to use."}),
            "image_column": ("STRING", {"default": "auto", "tooltip": "Column holding the images; auto picks the first image column."}),
            "caption_column": ("STRING", {"default": "auto", "tooltip": "Column holding the captions; auto prefers text/caption/en_text/prompt, else the first text column."}),
            "max_samples": ("INT", {"default": 0, "min": 0, "max": 1_000_000, "tooltip": "Use only the first N rows; 0 uses all."}),
        }}

    def load(self, dataset, split, image_column, caption_column, max_samples):
        from ..core.hf_dataset import load_hf_dataset

        def column(value):
            return None if value.strip() in ("", "auto") else value.strip()

        return (load_hf_dataset(dataset, split.strip() or None, column(image_column), column(caption_column), max_samples or None),)


# --------------------------------------------------------------------------- LoRA settings and training


class LoRAConfig:
    DESCRIPTION = "The shape of the LoRA: rank, alpha, dropout, which UNet layers get adapters, whether the text encoder is trained too, and optionally the adapter type (LoRA, LoHa, LoKr, DoRA) and the conv and text-encoder ranks."
    CATEGORY = CATEGORY
    RETURN_TYPES = (T.LORA_CONFIG,)
    RETURN_NAMES = ("lora_config",)
    OUTPUT_TOOLTIPS = ("LoRA settings for TrainLoRA.",)
    FUNCTION = "configure"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "rank": ("INT", {"default": 4, "min": 1, "max": 256, "tooltip": "LoRA rank: the size of each adapter. 4-32 is typical; higher learns more and makes larger files."}),
            "alpha": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1024.0, "step": 0.5, "tooltip": "LoRA alpha; the update is scaled by alpha/rank. 0 means alpha = rank (scale 1)."}),
            "dropout": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 0.9, "step": 0.01, "tooltip": "Dropout on the adapters' input during training; 0 turns it off."}),
            "targets": (core_choices("targets"), {"default": "kohya", "tooltip": "kohya: attention, feed-forward and proj_in/out (192 modules on SD1.5, 722 on SDXL); attention: to_q/k/v/out only (128 on SD1.5); kohya+conv: kohya plus the ResNet and down/upsampler convolutions (LoCon: 278 on SD1.5, 788 on SDXL)."}),
            "train_text_encoder": ("BOOLEAN", {"default": False, "tooltip": "Also train a LoRA on the text encoder (both of SDXL's; stronger, slower; turns off the caption cache)."}),
        }, "optional": {
            "adapter": (core_choices("adapters"), {"default": "lora", "tooltip": "lora: the usual low-rank adapter. loha: LyCORIS LoHa (two low-rank pairs multiplied elementwise; more expressive at the same rank, about twice as slow to train). lokr: LyCORIS LoKr (a Kronecker product; small files). LoHa and LoKr need dropout 0. All load in ComfyUI's LoRA loaders."}),
            "dora": ("BOOLEAN", {"default": False, "tooltip": "Weight-decomposed LoRA (DoRA): learns each output's magnitude apart from its direction. LoRA adapters only."}),
            "conv_rank": ("INT", {"default": 0, "min": 0, "max": 256, "tooltip": "Rank of the 3x3 convolution adapters with kohya+conv targets; 0 means the LoRA rank."}),
            "text_encoder_rank": ("INT", {"default": 0, "min": 0, "max": 256, "tooltip": "Rank of the text-encoder adapters when the text encoder is trained; 0 means the LoRA rank."}),
        }}

    def configure(self, rank, alpha, dropout, targets, train_text_encoder, adapter="lora", dora=False, conv_rank=0, text_encoder_rank=0):
        from ..core.lora import LoRASettings

        settings = LoRASettings(
            rank=int(rank), alpha=float(alpha) if alpha else None, dropout=float(dropout), targets=targets,
            train_text_encoder=bool(train_text_encoder), adapter=adapter, use_dora=bool(dora),
            conv_rank=int(conv_rank) or None, text_encoder_rank=int(text_encoder_rank) or None,
        )
        settings.validate()
        return (settings,)


class TrainLoRA:
    DESCRIPTION = "Train a LoRA on the base model and dataset inside ComfyUI, with the live loss on the node. Cancel stops at the next step and keeps a checkpoint in models/lora_logs/<checkpoint folder>; queueing again resumes from it."
    CATEGORY = CATEGORY
    RETURN_TYPES = (T.LORA, T.LOSS)
    RETURN_NAMES = ("lora", "loss")
    OUTPUT_TOOLTIPS = (
        "The trained LoRA (ComfyUI's LORA_MODEL: also works with its Load LoRA Model and Save LoRA Weights nodes).",
        "Loss per step (ComfyUI's LOSS_MAP, for Plot Loss Graph).",
    )
    FUNCTION = "train"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "base": (T.BASE, {"tooltip": "Base model from LoadBaseCheckpoint."}),
                "dataset": (T.DATASET, {"tooltip": "Captioned images from FolderDataset, HFDataset or Captioner."}),
                "lora_config": (T.LORA_CONFIG, {"tooltip": "LoRA rank, alpha and targets from LoRAConfig."}),
                "steps": ("INT", {"default": 1000, "min": 1, "max": 1_000_000, "tooltip": "Optimizer steps to train."}),
                "learning_rate": ("FLOAT", {"default": 1e-4, "min": 1e-7, "max": 1.0, "step": 1e-6, "round": False, "tooltip": "AdamW learning rate; 1e-4 is a safe start for rank 4-16."}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Images per step. 1 fits an 8 GB card at 512 px."}),
                "resolution": ("INT", {"default": 0, "min": 0, "max": 2048, "step": 64, "tooltip": "Square training size in pixels; 0 uses the base model's own (SD1.x 512, SD2.x 512 or 768 for v-models, SDXL 1024)."}),
                "training_seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1, "control_after_generate": False, "tooltip": "Every random choice derives from this seed: same seed and settings, same LoRA."}),
                "save_every": ("INT", {"default": 200, "min": 0, "max": 1_000_000, "tooltip": "Write a resumable checkpoint every N steps (0: only when cancelled and at the end)."}),
                "checkpoint_folder": ("STRING", {"default": "my_lora", "tooltip": "Folder under models/lora_logs for this run's checkpoints. Queueing again with the same folder and settings resumes there."}),
                "lr_scheduler": (core_choices("lr_schedulers"), {"default": "cosine", "tooltip": "How the learning rate changes over the run (cosine_with_restarts takes its cycles from Training Options)."}),
                "warmup_steps": ("INT", {"default": 0, "min": 0, "max": 100_000, "tooltip": "Steps of linear learning-rate warm-up at the start."}),
                "precision": (core_choices("precisions"), {"default": "auto", "tooltip": f"Mixed precision for training: {AUTO_PRECISION}."}),
                "gradient_checkpointing": ("BOOLEAN", {"default": False, "tooltip": "Use less memory for more compute; turn on if training runs out of memory. SDXL on a card of 12 GB or less turns it on by itself."}),
                "random_flip": ("BOOLEAN", {"default": True, "tooltip": "Mirror images at random (turn off for text, logos or asymmetric subjects)."}),
            },
            "optional": {
                "aspect_buckets": (BUCKET_CHOICES, {"default": "auto", "tooltip": "Train each image near its own aspect ratio instead of a square crop. auto: on for SDXL, off for SD1.x/SD2.x."}),
                "options": (T.OPTIONS, {"tooltip": "Advanced settings from a Training Options node (optimizer, loss, captions, previews, validation, ...); without it, their defaults."}),
                "validation_dataset": (T.DATASET, {"tooltip": "Images to measure the validation loss on while training, instead of holding out part of the dataset (Training Options' validation split)."}),
                "device": (["auto", *core_choices("devices")], {"default": "auto", "tooltip": "Where to train: auto is ComfyUI's own device; with two GPUs, train on one (e.g. cuda:1) while ComfyUI samples on the other. Several GPUs for one run: use the command line (docs/multi_gpu.md)."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def train(self, base, dataset, lora_config, steps, learning_rate, batch_size, resolution, training_seed, save_every,
              checkpoint_folder, lr_scheduler, warmup_steps, precision, gradient_checkpointing, random_flip, aspect_buckets="auto",
              options=None, validation_dataset=None, device="auto", unique_id=None):
        import torch

        from ..core.training import Trainer

        from .training_run import ComfyProgress, node_settings, resume_point

        bridge = api()
        training_device = training_device_for(device, bridge)
        settings = node_settings(
            base, training_device, steps=steps, learning_rate=learning_rate, batch_size=batch_size, resolution=resolution,
            seed=training_seed, lr_scheduler=lr_scheduler, warmup_steps=warmup_steps, precision=precision,
            gradient_checkpointing=gradient_checkpointing, random_flip=random_flip, save_every=save_every,
            checkpoint_folder=checkpoint_folder, aspect_buckets=aspect_buckets, options=options,
        )
        settings.validate()
        checkpoint_dir = safe_child(lora_logs_root(), checkpoint_folder, "checkpoint folder")
        resume_from, resumed_step = resume_point(checkpoint_dir, settings.steps)
        node_id = str(unique_id) if unique_id is not None else ""
        if str(training_device) == str(bridge.torch_device()):
            bridge.free_memory()  # training on ComfyUI's own device: it gets the card to itself
        progress = ComfyProgress(bridge, node_id, settings.steps, resumed_step)
        status, step = "error", resumed_step
        try:
            trainer = Trainer(
                base, dataset, lora_config, settings, device=training_device, progress=progress,
                should_stop=progress.should_stop, checkpoint_dir=checkpoint_dir, resume_from=resume_from,
                validation_dataset=validation_dataset,
            )
            with torch.inference_mode(False), torch.enable_grad():  # ComfyUI executes nodes in inference mode
                result = trainer.run()  # core turns running out of memory into its advice (a TrainerError)
            step = result.steps
            status = "interrupted" if result.interrupted else "done"
        finally:
            progress.finish(status, step)
            bridge.empty_cache()  # core already moved its models off the accelerator; give the memory back to sampling
        if result.interrupted:
            bridge.raise_interrupted()
        return (T.TrainedLoRA(result.lora.tensors, result.lora.metadata), T.loss_map(result.loss_history, result.lr_history))


def training_device_for(choice: str, bridge):
    """The device Train LoRA trains on: ComfyUI's own for auto, else the one chosen, checked to exist here."""
    from ..core.devices import usable_device

    return bridge.torch_device() if choice in ("auto", "", None) else usable_device(choice)


def lora_logs_root() -> Path:
    roots = api().folder_paths(LORA_LOGS)
    if not roots:
        raise TrainerError("ComfyUI has no models/lora_logs folder registered; restart ComfyUI so the LoRA Trainer nodes can register it.")
    root = Path(roots[0])
    root.mkdir(parents=True, exist_ok=True)
    return root


# --------------------------------------------------------------------------- saving and applying


def lora_target(name: str) -> Path:
    roots = api().folder_paths("loras")
    if not roots:
        raise OutputPathError("ComfyUI has no models/loras folder configured.")
    text = (name or "").strip()
    if text.lower().endswith(".safetensors"):
        text = text[: -len(".safetensors")]
    return safe_child(roots[0], text + ".safetensors" if text else "", "LoRA name")


def _same_tensors(path: Path, tensors: dict) -> bool:
    import torch
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            if set(handle.keys()) != set(tensors):
                return False
            return all(torch.equal(handle.get_tensor(key).float(), tensors[key].detach().float().cpu()) for key in tensors)
    except Exception:
        return False


class SaveLoRA:
    DESCRIPTION = "Save the trained LoRA as models/loras/<name>.safetensors (kohya keys, with training metadata), ready for Load LoRA in this or any SD tool. Never overwrites a different file unless told to."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("lora_name",)
    OUTPUT_TOOLTIPS = ("The saved file's name inside models/loras, as Load LoRA lists it.",)
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "lora": (T.LORA, {"tooltip": "The LoRA from TrainLoRA (or ComfyUI's own Train LoRA)."}),
            "lora_name": ("STRING", {"default": "my_lora", "tooltip": "File name inside models/loras (subfolders with / allowed); .safetensors is added."}),
            "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace an existing file with the same name. Off: a different existing file stops the save with an error."}),
        }}

    def save(self, lora, lora_name, overwrite):
        from ..core.lora import LoRAWeights, save_lora_file

        target = lora_target(lora_name)
        root = Path(api().folder_paths("loras")[0]).resolve()
        relative = target.relative_to(root).as_posix()
        if target.exists() and not overwrite:
            if not _same_tensors(target, lora):
                raise OutputPathError(f"models/loras/{relative} already exists; choose another name or turn overwrite on.")
            return {"ui": {"text": [relative]}, "result": (relative,)}  # the same LoRA is already there (e.g. after a restart)
        metadata = getattr(lora, "metadata", None) or {}
        save_lora_file(LoRAWeights(tensors={k: v.detach().float().cpu() for k, v in lora.items()}, metadata=metadata), target)
        return {"ui": {"text": [relative]}, "result": (relative,)}


class ApplyLoRA:
    DESCRIPTION = "Apply a LoRA straight from TrainLoRA to a MODEL (and optionally a CLIP) for sampling in the same graph, through ComfyUI's own LoRA loader, without saving a file first. A LoRA of another model family (an SD1.x LoRA on SDXL) is refused."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("MODEL", "CLIP")
    RETURN_NAMES = ("model", "clip")
    OUTPUT_TOOLTIPS = ("The model with the LoRA applied.", "The CLIP with the LoRA applied (unchanged when none was connected).")
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model to patch, e.g. from Load Checkpoint (the same base the LoRA was trained on)."}),
                "lora": (T.LORA, {"tooltip": "The LoRA from TrainLoRA."}),
                "strength_model": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01, "tooltip": "How strongly the LoRA changes the UNet; 0 turns it off, negative inverts it."}),
                "strength_clip": ("FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01, "tooltip": "How strongly the LoRA changes the text encoder (only when trained with the text encoder and a CLIP is connected)."}),
            },
            "optional": {
                "clip": ("CLIP", {"tooltip": "The CLIP text encoder to patch as well (optional)."}),
            },
        }

    def apply(self, model, lora, strength_model, strength_clip, clip=None):
        from ..core.families import check_lora_family, family_named

        if not lora:
            raise TrainerError("The LoRA is empty; connect the lora output of TrainLoRA.")
        family = api().model_family(model)
        if family is not None:
            check_lora_family(lora, getattr(lora, "metadata", None) or {}, family_named(family), "The LoRA")
        patched_model, patched_clip = api().apply_lora(model, clip, lora, float(strength_model), float(strength_clip) if clip is not None else 0.0)
        return (patched_model, patched_clip if clip is not None else None)


NODES = {
    "LoadBaseCheckpoint": (LoadBaseCheckpoint, "Load Base Checkpoint"),
    "FolderDataset": (FolderDataset, "Folder Dataset"),
    "HFDataset": (HFDataset, "Hugging Face Dataset"),
    "LoRAConfig": (LoRAConfig, "LoRA Config"),
    "TrainLoRA": (TrainLoRA, "Train LoRA"),
    "SaveLoRA": (SaveLoRA, "Save LoRA"),
    "ApplyLoRA": (ApplyLoRA, "Apply LoRA"),
}
# Nodes in modules of their own (they import this module's constants, so they are read last).
from .captioning import NODES as _CAPTIONING_NODES  # noqa: E402
from .compare import NODES as _COMPARE_NODES  # noqa: E402
from .options import NODES as _OPTIONS_NODES  # noqa: E402

ALL_NODES = {**NODES, **_CAPTIONING_NODES, **_OPTIONS_NODES, **_COMPARE_NODES}
NODE_CLASS_MAPPINGS = {PREFIX + name: cls for name, (cls, _) in ALL_NODES.items()}
NODE_DISPLAY_NAME_MAPPINGS = {PREFIX + name: display for name, (_, display) in ALL_NODES.items()}
