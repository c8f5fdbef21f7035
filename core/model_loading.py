"""Load a base model offline, from a single file in the original layout or a diffusers folder.

A checkpoint file is opened once (its tensor names known without reading tensors),
its family (``core.families``) is chosen from the names, and the family reads the
tensors it needs in the dtype it wants; the architecture comes from the tensors
themselves, so a shrunken model of a family loads like the real one. Pickled files
are read with ``weights_only`` loading only. Nothing here reaches the network.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch

from .base_model import BaseModel
from .errors import CheckpointLayoutError, ModelLoadError

CONFIG_DIR = Path(__file__).parent / "configs"
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."  # SD1.x's CLIP-L, Hugging Face layout
MAX_HEADER_BYTES = 100 * 1024 * 1024
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
DtypeChoice = Callable[[str], "torch.dtype | None"]


def load_json_config(name: str) -> dict[str, Any]:
    return json.loads((CONFIG_DIR / name).read_text())


# --------------------------------------------------------------------------- safetensors


def read_safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """Read the JSON header of a safetensors file without loading tensors; returns it and its byte length."""
    try:
        with open(path, "rb") as handle:
            raw_length = handle.read(8)
            if len(raw_length) < 8:
                raise ModelLoadError(f"{path.name} is too short to be a safetensors file ({path.stat().st_size} bytes).")
            (length,) = struct.unpack("<Q", raw_length)
            if length > MAX_HEADER_BYTES:
                raise ModelLoadError(f"{path.name} is not a valid safetensors file (header length {length} is implausible).")
            if 8 + length > path.stat().st_size:
                raise ModelLoadError(f"{path.name} is truncated (it ends inside its own header); download it again.")
            header = json.loads(handle.read(length))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{path.name} is not a valid safetensors file ({error.__class__.__name__} in its header).") from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"{path.name} is not a valid safetensors file (its header is not a table).")
    return header, length


def _as_dtype_function(dtype: torch.dtype | DtypeChoice) -> DtypeChoice:
    return dtype if callable(dtype) else (lambda key: dtype)


def read_safetensors_as(path: Path, dtype: torch.dtype | DtypeChoice) -> dict[str, torch.Tensor]:
    """A safetensors file's tensors, floating-point ones cast to ``dtype``, read one tensor at a time.

    ``dtype`` may instead be a function of the key that gives the dtype, or None to skip the tensor.

    safetensors memory-maps the whole file, and every page it touches counts
    against the process until the last tensor read from it is gone: casting an
    fp32 SD1.5 UNet to bf16 that way peaks at 3.4 GB of mapped file plus the
    1.7 GB copy. Reading each tensor into its own buffer and casting it at once
    peaks at the copy plus one tensor.
    """
    header, header_length = read_safetensors_header(path)
    dtype_for = _as_dtype_function(dtype)
    state: dict[str, torch.Tensor] = {}
    with open(path, "rb") as handle:
        for key, info in header.items():
            target = dtype_for(key) if key != "__metadata__" else None
            if target is None:
                continue
            stored = SAFETENSORS_DTYPES.get(info.get("dtype"))
            if stored is None:
                raise ModelLoadError(f"{path.name} holds {key} as {info.get('dtype')!r}, a type this loader does not read.")
            begin, end = info["data_offsets"]
            buffer = torch.empty(end - begin, dtype=torch.uint8)
            handle.seek(8 + header_length + begin)
            if handle.readinto(buffer.numpy()) != end - begin:
                raise ModelLoadError(f"{path.name} is truncated (it ends inside {key}); download it again.")
            tensor = buffer.view(stored).reshape(info["shape"])
            state[key] = tensor.to(target) if tensor.is_floating_point() else tensor
    return state


def safetensors_needs_cast(header: dict[str, Any], dtype: torch.dtype | DtypeChoice) -> bool:
    """Whether some floating-point tensor is stored in another dtype than wanted (else a memory map costs nothing extra)."""
    dtype_for = _as_dtype_function(dtype)
    for key, info in header.items():
        stored = SAFETENSORS_DTYPES.get(info.get("dtype")) if key != "__metadata__" else None
        wanted = dtype_for(key) if stored is not None else None
        if wanted is not None and stored.is_floating_point and stored != wanted:
            return True
    return False


def _cast_or_skip(state: dict[str, torch.Tensor], dtype_for_key: DtypeChoice) -> dict[str, torch.Tensor]:
    kept = {}
    for key, tensor in state.items():
        target = dtype_for_key(key)
        if target is not None:
            kept[key] = tensor.to(target) if tensor.is_floating_point() else tensor
    return kept


class CheckpointFile:
    """A single-file checkpoint, opened: its tensor names are known, its tensors read on ``read``.

    A safetensors file is checked against truncation from its header alone. A pickled-weights
    file (.ckpt) is loaded with ``weights_only=True``, memory-mapped when it is a zip archive
    (every torch.save since 1.6), so tensors that are skipped (EMA copies: half of a 7.7 GB
    SD1.5 .ckpt) are never read.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        path = self.path
        if not path.exists():
            raise ModelLoadError(f"Checkpoint {path} does not exist.")
        if path.is_dir():
            raise ModelLoadError(f"{path} is a folder without model_index.json, so it is not a diffusers model.")
        if path.stat().st_size == 0:
            raise ModelLoadError(f"Checkpoint {path.name} is empty (0 bytes); download it again.")
        self.suffix = path.suffix.lower()
        self.metadata: dict[str, str] = {}
        self._loaded: dict[str, torch.Tensor] | None = None
        if self.suffix == ".safetensors":
            self._open_safetensors()
        elif self.suffix in PICKLE_SUFFIXES:
            self._open_pickled()
        else:
            raise ModelLoadError(f"{path.name} has an unsupported extension {self.suffix!r}; use a .safetensors checkpoint or a diffusers folder.")

    def _open_safetensors(self) -> None:
        path = self.path
        self.header, header_length = read_safetensors_header(path)
        data_end = max((info["data_offsets"][1] for key, info in self.header.items() if key != "__metadata__"), default=0)
        expected_size = 8 + header_length + data_end
        if path.stat().st_size < expected_size:
            raise ModelLoadError(
                f"Checkpoint {path.name} is truncated ({path.stat().st_size} bytes, its header promises "
                f"{expected_size}); download it again."
            )
        self.keys = [key for key in self.header if key != "__metadata__"]
        self.metadata = {str(k): str(v) for k, v in (self.header.get("__metadata__") or {}).items()}

    def _open_pickled(self) -> None:
        path = self.path
        try:
            loaded = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        except Exception as error:
            raise ModelLoadError(
                f"{path.name} was refused: it is not a plain weights file (pickled code or a corrupt file: "
                f"{str(error).splitlines()[0][:160]}); convert it to .safetensors with a tool you trust."
            ) from None
        if isinstance(loaded, dict) and "state_dict" in loaded and isinstance(loaded["state_dict"], dict):
            loaded = loaded["state_dict"]
        if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
            raise ModelLoadError(f"{path.name} does not hold a table of tensors, so it is not a model checkpoint.")
        self._loaded = loaded
        self.keys = list(loaded)

    def shape(self, key: str) -> tuple[int, ...]:
        if self._loaded is not None:
            return tuple(self._loaded[key].shape)
        return tuple(self.header[key]["shape"])

    def read(self, dtype_for_key: DtypeChoice | None = None) -> dict[str, torch.Tensor]:
        """The tensors, each cast to ``dtype_for_key(key)`` and skipped where that is None.

        A safetensors file that needs casting is read streamed (see ``read_safetensors_as``);
        one already in the wanted dtypes is memory-mapped, so untouched tensors cost nothing.
        """
        if self._loaded is not None:
            return dict(self._loaded) if dtype_for_key is None else _cast_or_skip(self._loaded, dtype_for_key)
        if dtype_for_key is not None and safetensors_needs_cast(self.header, dtype_for_key):
            return read_safetensors_as(self.path, dtype_for_key)
        from safetensors.torch import load_file

        try:
            state = load_file(str(self.path))
        except Exception as error:  # safetensors raises its own error types
            raise ModelLoadError(f"Checkpoint {self.path.name} could not be read as safetensors: {error}.") from None
        return state if dtype_for_key is None else {k: v for k, v in state.items() if dtype_for_key(k) is not None}


# --------------------------------------------------------------------------- building modules


def module_from_config(model_class, config) -> Callable[[], torch.nn.Module]:
    """A function that builds an (uninitialised) ``model_class`` from ``config``: diffusers and transformers name it differently."""
    from transformers import PreTrainedModel

    if issubclass(model_class, PreTrainedModel):
        return lambda: model_class._from_config(config)
    return lambda: model_class.from_config(config)


def materialize(make_module, state: dict[str, torch.Tensor], what: str, dtype: torch.dtype = torch.float32, device="cpu") -> torch.nn.Module:
    """Build a module on the meta device and adopt ``state``'s tensors directly (no random init, no second copy)."""
    with torch.device("meta"):
        module = make_module()
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(k for k in set(state) - set(expected) if not k.endswith("position_ids"))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointLayoutError(f"The checkpoint's {what} does not match the expected layout ({detail}).")
    for key, tensor in expected.items():
        if tensor.shape != state[key].shape:
            raise CheckpointLayoutError(f"The checkpoint's {what} has {key} of shape {tuple(state[key].shape)}, expected {tuple(tensor.shape)}.")
    module.load_state_dict(
        {k: state[k].to(device, dtype if state[k].is_floating_point() else state[k].dtype) for k in expected},
        strict=True, assign=True,
    )
    for name, buffer in list(module.named_buffers()):
        if buffer.is_meta:  # non-persistent buffers are not in any state dict
            if not name.endswith("position_ids"):
                raise ModelLoadError(f"Cannot rebuild the {what}'s buffer {name}.")
            owner_name, _, buffer_name = name.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            owner._buffers[buffer_name] = torch.arange(buffer.shape[-1], device=device).expand(buffer.shape)
    return module.eval().requires_grad_(False)


def from_pretrained_in(model_class, folder: Path, weights_name: str, dtype: torch.dtype):
    """``from_pretrained`` in ``dtype``; a single safetensors file stored in another dtype is read streamed instead."""
    from transformers import PreTrainedModel

    weights = folder / weights_name
    if weights.is_file():
        header, _ = read_safetensors_header(weights)
        if safetensors_needs_cast(header, dtype):
            if issubclass(model_class, PreTrainedModel):
                config = model_class.config_class.from_pretrained(folder, local_files_only=True)
            else:
                config = model_class.load_config(folder, local_files_only=True)
            return materialize(module_from_config(model_class, config), read_safetensors_as(weights, dtype), model_class.__name__, dtype)
    return model_class.from_pretrained(folder, local_files_only=True, torch_dtype=dtype)


# --------------------------------------------------------------------------- tokenizers, schedulers, identity


def load_tokenizer(tokenizer_dir: str | os.PathLike | None, pad_token: str = "<|endoftext|>"):
    """A CLIP BPE tokenizer from vocab.json + merges.txt. SD1.x and SDXL's first encoder pad with the end
    token; SD2.x's and SDXL's OpenCLIP towers pad with "!" (token 0), as they were trained and as ComfyUI does."""
    from transformers import CLIPTokenizer

    if tokenizer_dir is None:
        raise ModelLoadError(
            "No CLIP tokenizer was given: pass --tokenizer DIR (a folder with vocab.json and merges.txt, "
            "e.g. ComfyUI/comfy/sd1_tokenizer)."
        )
    folder = Path(tokenizer_dir)
    missing = [name for name in ("vocab.json", "merges.txt") if not (folder / name).is_file()]
    if missing:
        raise ModelLoadError(f"Tokenizer folder {folder} lacks {' and '.join(missing)}; it needs vocab.json and merges.txt.")
    try:
        return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token=pad_token)
    except Exception as error:
        raise ModelLoadError(f"The tokenizer in {folder} could not be read ({error.__class__.__name__}: {error}).") from None


def default_noise_scheduler(prediction_type: str = "epsilon"):
    """The DDPM schedule SD1.x, SD2.x and SDXL were all trained with (scaled-linear betas 0.00085-0.012, 1000 steps)."""
    from diffusers import DDPMScheduler

    config = load_json_config("sd15_scheduler.json")
    config["prediction_type"] = prediction_type
    return DDPMScheduler.from_config(config)


def folder_noise_scheduler(folder: Path, prediction_type: str | None):
    """A diffusers folder's own training schedule, else the default; ``prediction_type`` overrides its target."""
    from diffusers import DDPMScheduler

    if (folder / "scheduler" / "scheduler_config.json").is_file():
        scheduler = DDPMScheduler.from_pretrained(folder / "scheduler", local_files_only=True)
        return DDPMScheduler.from_config(scheduler.config, prediction_type=prediction_type) if prediction_type else scheduler
    return default_noise_scheduler(prediction_type or "epsilon")


def file_fingerprint(path: Path) -> str:
    """A cheap identity for a file (size + mtime + name), used to match resumes to their base."""
    stat = path.stat()
    return hashlib.sha256(f"{path.name}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- choosing and loading a family

LORA_MARKERS = ("lora_down", "lora_up", ".lora_A.", ".lora_B.", ".hada_w1", ".lokr_w1")
TEXT_ENCODER_PREFIXES = (CLIP_PREFIX, "cond_stage_model.model.", "conditioner.embedders.")


def describe_unsupported(keys: list[str]) -> str | None:
    """Name what a state dict is when it is not a Stable Diffusion checkpoint of a family we train, else None."""
    if not keys:
        return "an empty file (no tensors)"
    if any(marker in k for k in keys[:200] for marker in LORA_MARKERS):
        return "a LoRA file, not a base checkpoint (load it with ApplyLoRA or Load LoRA instead)"
    if any(k.startswith(("double_blocks.", "single_blocks.", "model.diffusion_model.double_blocks.")) for k in keys):
        return "a Flux checkpoint (SD1.x, SD2.x and SDXL are supported; Flux is not yet)"
    if any(k.startswith(("model.diffusion_model.joint_blocks.", "joint_blocks.")) for k in keys):
        return "an SD3 checkpoint (SD1.x, SD2.x and SDXL are supported; SD3 is not)"
    if not any(k.startswith(UNET_PREFIX) for k in keys):
        if any(k.startswith(("encoder.down", "decoder.up", "first_stage_model.")) for k in keys):
            return "a VAE on its own, not a full checkpoint"
        if any(k.startswith(("text_model.", "cond_stage_model.", "conditioner.")) for k in keys):
            return "a text encoder on its own, not a full checkpoint"
        if any(k.startswith(("down_blocks.", "conv_in.")) for k in keys):
            return "a diffusers UNet on its own; give the whole diffusers folder (with model_index.json) instead"
        return f"no Stable Diffusion UNet (first keys: {', '.join(keys[:3])})"
    from .families import FAMILIES

    key_set = set(keys)
    family = next((f for f in FAMILIES if f.claims_keys(key_set)), None)
    kind = f"an {family.label} checkpoint" if family else "a UNet"
    if not any(k.startswith(VAE_PREFIX) for k in keys):
        return f"{kind} without its VAE (no first_stage_model.* keys); use a full checkpoint"
    if not any(k.startswith(TEXT_ENCODER_PREFIXES) for k in keys):
        return f"{kind} without its text encoder (no cond_stage_model.* or conditioner.* keys); use a full checkpoint"
    return None


def open_checkpoint(path: str | os.PathLike) -> CheckpointFile:
    """Open a single file and refuse, by name, what is not a Stable Diffusion checkpoint."""
    file = CheckpointFile(path)
    problem = describe_unsupported(file.keys)
    if problem:
        raise ModelLoadError(f"{file.path.name} is {problem}.")
    return file


def read_state_dict(path: Path, dtype_for_key: DtypeChoice | None = None) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors, never unpickling code; non-SD files refused by name (see ``CheckpointFile.read``)."""
    return open_checkpoint(path).read(dtype_for_key)


def _ldm_dtype(key: str, dtype: torch.dtype) -> torch.dtype | None:
    """The dtype an SD1.x single file's tensor is read in; None for what no component uses (EMA copies, ...)."""
    from .families import family_named

    return family_named("sd1").dtype_for_key(dtype)(key)


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def load_base_model(
    path: str | os.PathLike,
    tokenizer_dir: str | os.PathLike | None = None,
    prediction_type: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> BaseModel:
    """Load an SD1.x, SD2.x or SDXL base from a single file or a diffusers folder, offline, on the CPU.

    The UNet and text encoders come in ``dtype``; the VAE is always fp32. ``prediction_type``
    (epsilon / v_prediction) overrides what the file or folder implies.
    """
    from .families import detect_file, detect_folder

    source = Path(path)
    if source.is_dir() and (source / "model_index.json").is_file():
        try:
            index = json.loads((source / "model_index.json").read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ModelLoadError(f"{source.name}/model_index.json is unreadable ({error.__class__.__name__}).") from None
        return detect_folder(source, index).load_folder(source, tokenizer_dir, prediction_type, dtype)
    file = open_checkpoint(source)
    family = detect_file(file)
    try:
        return family.load_single_file(file, tokenizer_dir, prediction_type, dtype)
    except CheckpointLayoutError as error:
        raise ModelLoadError(f"{file.path.name} looks like an {family.label} checkpoint, but {_lower_first(str(error))}") from None
    except KeyError as error:
        raise ModelLoadError(
            f"{file.path.name} looks like an {family.label} checkpoint, but it lacks {error.args[0]}; it is damaged or of a layout this trainer does not know."
        ) from None


# Names other modules and older code import from here; the family-specific parts live in core.families.
# Imported last: core.families imports this module.
from .families.ldm import infer_unet_config, infer_vae_config, text_encoder_from_config  # noqa: E402

__all__ = [
    "BaseModel", "CLIP_PREFIX", "CheckpointFile", "UNET_PREFIX", "VAE_PREFIX", "default_noise_scheduler", "describe_unsupported",
    "infer_unet_config", "infer_vae_config", "load_base_model", "load_json_config", "load_tokenizer", "materialize",
    "module_from_config", "read_safetensors_as", "read_state_dict", "text_encoder_from_config",
]
