"""Load an SD1.x base model offline, from a single LDM file or a diffusers folder.

The architecture is read from the checkpoint itself (key structure and tensor
shapes), so a shrunken model of the family loads as well as the real one.
Conversion of the weights uses diffusers' single-file utilities; only the
config inference is ours, because diffusers would otherwise fetch a YAML or a
hub config to learn the architecture.
"""
from __future__ import annotations

import functools
import json
import os
import re
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import ModelLoadError

CONFIG_DIR = Path(__file__).parent / "configs"
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
# SD1.x UNets use 8 attention heads whatever their width; shapes cannot tell us this.
SD1_ATTENTION_HEADS = 8
CLIP_HEAD_WIDTH = 64
MAX_HEADER_BYTES = 100 * 1024 * 1024
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


def load_json_config(name: str) -> dict[str, Any]:
    return json.loads((CONFIG_DIR / name).read_text())


@dataclass(eq=False)
class BaseModel:
    """A loaded base model: the diffusers components plus where they came from."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any
    family: str = "sd1"
    source: str = ""
    source_hash: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def __repr__(self) -> str:
        params = sum(p.numel() for p in self.unet.parameters()) / 1e6
        name = os.path.basename(self.source.rstrip("/\\")) or "in-memory model"
        return f"BaseModel({name}: {self.family}, UNet {params:.1f}M params, {self.prediction_type})"


# --------------------------------------------------------------------------- reading files


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


def _as_dtype_function(dtype: torch.dtype | Callable[[str], torch.dtype | None]) -> Callable[[str], torch.dtype | None]:
    return dtype if callable(dtype) else (lambda key: dtype)


def read_safetensors_as(path: Path, dtype: torch.dtype | Callable[[str], torch.dtype | None]) -> dict[str, torch.Tensor]:
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


def safetensors_needs_cast(header: dict[str, Any], dtype: torch.dtype | Callable[[str], torch.dtype | None]) -> bool:
    """Whether some floating-point tensor is stored in another dtype than wanted (else a memory map costs nothing extra)."""
    dtype_for = _as_dtype_function(dtype)
    for key, info in header.items():
        stored = SAFETENSORS_DTYPES.get(info.get("dtype")) if key != "__metadata__" else None
        wanted = dtype_for(key) if stored is not None else None
        if wanted is not None and stored.is_floating_point and stored != wanted:
            return True
    return False


def _cast_or_skip(state: dict[str, torch.Tensor], dtype_for_key: Callable[[str], torch.dtype | None]) -> dict[str, torch.Tensor]:
    kept = {}
    for key, tensor in state.items():
        target = dtype_for_key(key)
        if target is not None:
            kept[key] = tensor.to(target) if tensor.is_floating_point() else tensor
    return kept


def read_state_dict(path: Path, dtype_for_key: Callable[[str], torch.dtype | None] | None = None) -> dict[str, torch.Tensor]:
    """Load an SD1.x checkpoint's tensors without ever unpickling arbitrary code; other models are refused by name.

    With ``dtype_for_key``, a safetensors file that needs casting is read streamed (see
    ``read_safetensors_as``), each tensor cast as it arrives and those given None skipped;
    one already in the wanted dtypes is memory-mapped, so untouched tensors cost nothing.
    A pickled-weights file (.ckpt) is memory-mapped, then cast and skipped the same way.
    """
    if not path.exists():
        raise ModelLoadError(f"Checkpoint {path} does not exist.")
    if path.is_dir():
        raise ModelLoadError(f"{path} is a folder without model_index.json, so it is not a diffusers model.")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"Checkpoint {path.name} is empty (0 bytes); download it again.")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        header, header_length = read_safetensors_header(path)
        data_end = max((info["data_offsets"][1] for key, info in header.items() if key != "__metadata__"), default=0)
        expected_size = 8 + header_length + data_end
        if path.stat().st_size < expected_size:
            raise ModelLoadError(
                f"Checkpoint {path.name} is truncated ({path.stat().st_size} bytes, its header promises "
                f"{expected_size}); download it again."
            )
        problem = describe_unsupported([key for key in header if key != "__metadata__"])
        if problem:
            raise ModelLoadError(f"{path.name} is {problem}.")
        if dtype_for_key is not None and safetensors_needs_cast(header, dtype_for_key):
            return read_safetensors_as(path, dtype_for_key)
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # safetensors raises its own error types
            raise ModelLoadError(f"Checkpoint {path.name} could not be read as safetensors: {error}.") from None
    if suffix in (".ckpt", ".pt", ".pth", ".bin"):
        try:
            # Memory-mapped when the file is a zip archive (every torch.save since 1.6): tensors that are skipped
            # below (EMA copies: half of a 7.7 GB SD1.5 .ckpt) are never read, and what is read is page cache
            # the system can reclaim. Older tar-format files can only be read whole.
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
        problem = describe_unsupported(list(loaded.keys()))
        if problem:
            raise ModelLoadError(f"{path.name} is {problem}.")
        return loaded if dtype_for_key is None else _cast_or_skip(loaded, dtype_for_key)
    raise ModelLoadError(f"{path.name} has an unsupported extension {suffix!r}; use a .safetensors checkpoint or a diffusers folder.")


# --------------------------------------------------------------------------- detection


def describe_unsupported(keys: list[str]) -> str | None:
    """Name what a state dict is when it is not an SD1.x checkpoint, else None."""
    key_set = set(keys)
    if not keys:
        return "an empty file (no tensors)"
    if any(marker in k for k in keys[:200] for marker in ("lora_down", "lora_up", ".lora_A.", ".lora_B.", ".hada_w1", ".lokr_w1")):
        return "a LoRA file, not a base checkpoint (load it with ApplyLoRA or Load LoRA instead)"
    if any(k.startswith(("double_blocks.", "single_blocks.", "model.diffusion_model.double_blocks.")) for k in keys):
        return "a Flux checkpoint (only SD1.x is supported)"
    if any(k.startswith("conditioner.embedders.1") for k in keys) or f"{UNET_PREFIX}label_emb.0.0.weight" in key_set:
        return "an SDXL checkpoint (only SD1.x is supported for now)"
    if any(k.startswith("model.diffusion_model.joint_blocks.") for k in keys):
        return "an SD3 checkpoint (only SD1.x is supported)"
    has_unet = any(k.startswith(UNET_PREFIX) for k in keys)
    if not has_unet:
        if any(k.startswith(("encoder.down", "decoder.up", "first_stage_model.")) for k in keys):
            return "a VAE on its own, not a full checkpoint"
        if any(k.startswith(("text_model.", "cond_stage_model.")) for k in keys):
            return "a text encoder on its own, not a full checkpoint"
        if any(k.startswith(("down_blocks.", "conv_in.")) for k in keys):
            return "a diffusers UNet on its own; give the whole diffusers folder (with model_index.json) instead"
        return f"no Stable Diffusion UNet (first keys: {', '.join(keys[:3])})"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "an SD2.x checkpoint (OpenCLIP text encoder; only SD1.x is supported for now)"
    if not any(k.startswith(VAE_PREFIX) for k in keys):
        return "a UNet without its VAE (no first_stage_model.* keys); use a full checkpoint"
    if not any(k.startswith(CLIP_PREFIX) for k in keys):
        return "a UNet without its CLIP text encoder (no cond_stage_model.transformer.* keys); use a full checkpoint"
    return None


def infer_unet_config(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Read the UNet architecture from LDM key structure and tensor shapes."""
    def get(name: str) -> torch.Tensor:
        return state[UNET_PREFIX + name]

    def has(name: str) -> bool:
        return UNET_PREFIX + name in state

    conv_in = get("input_blocks.0.0.weight")
    model_channels, in_channels = conv_in.shape[0], conv_in.shape[1]
    levels: list[dict[str, Any]] = [{"channels": [], "attention": [], "depth": []}]
    index = 1
    while has(f"input_blocks.{index}.0.op.weight") or has(f"input_blocks.{index}.0.in_layers.0.weight"):
        if has(f"input_blocks.{index}.0.op.weight"):
            levels.append({"channels": [], "attention": [], "depth": []})
        else:
            level = levels[-1]
            level["channels"].append(get(f"input_blocks.{index}.0.out_layers.3.weight").shape[0])
            has_attention = has(f"input_blocks.{index}.1.proj_in.weight")
            level["attention"].append(has_attention)
            if has_attention:
                depth = 0
                while has(f"input_blocks.{index}.1.transformer_blocks.{depth}.attn1.to_q.weight"):
                    depth += 1
                level["depth"].append(depth)
                proj_in = get(f"input_blocks.{index}.1.proj_in.weight")
                if proj_in.ndim == 2:
                    raise ModelLoadError("This checkpoint uses linear projections (SD2.x style), which is not supported yet; use an SD1.x checkpoint.")
        index += 1
    layers = {len(level["channels"]) for level in levels}
    if len(layers) != 1 or 0 in layers:
        raise ModelLoadError(f"The UNet has an irregular block layout (res blocks per level: {[len(l['channels']) for l in levels]}), which SD1.x never has.")
    layers_per_block = layers.pop()
    block_out_channels = [level["channels"][0] for level in levels]
    down_block_types = ["CrossAttnDownBlock2D" if any(level["attention"]) else "DownBlock2D" for level in levels]
    up_block_types = [
        "CrossAttnUpBlock2D" if kind == "CrossAttnDownBlock2D" else "UpBlock2D" for kind in reversed(down_block_types)
    ]
    depths = {d for level in levels for d in level["depth"]}
    cross_key = next((k for k in state if k.startswith(UNET_PREFIX) and k.endswith("attn2.to_k.weight")), None)
    if cross_key is None:
        raise ModelLoadError("The UNet has no cross-attention layers, so it is not a text-to-image SD1.x model.")
    config = load_json_config("sd15_unet.json")
    config.update(
        in_channels=int(in_channels),
        out_channels=int(get("out.2.weight").shape[0]),
        block_out_channels=[int(c) for c in block_out_channels],
        layers_per_block=int(layers_per_block),
        down_block_types=down_block_types,
        up_block_types=up_block_types,
        cross_attention_dim=int(state[cross_key].shape[1]),
        attention_head_dim=SD1_ATTENTION_HEADS,
        transformer_layers_per_block=int(depths.pop()) if len(depths) == 1 else 1,
    )
    if model_channels != block_out_channels[0]:
        raise ModelLoadError("The UNet's first block width differs from its input convolution, which SD1.x never has.")
    return config


def infer_vae_config(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    prefix = VAE_PREFIX + "encoder.down."
    levels = sorted({int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)})
    if not levels:
        raise ModelLoadError("The checkpoint's VAE has no encoder blocks (first_stage_model.encoder.down.*).")
    channels = [int(state[f"{prefix}{i}.block.0.conv1.weight"].shape[0]) for i in levels]
    layers_per_block = len({k.split(".")[5] for k in state if k.startswith(f"{prefix}0.block.")})
    config = load_json_config("sd15_vae.json")
    config.update(
        block_out_channels=channels,
        layers_per_block=layers_per_block,
        down_block_types=["DownEncoderBlock2D"] * len(channels),
        up_block_types=["UpDecoderBlock2D"] * len(channels),
        latent_channels=int(state[VAE_PREFIX + "post_quant_conv.weight"].shape[0]),
        in_channels=int(state[VAE_PREFIX + "encoder.conv_in.weight"].shape[1]),
    )
    return config


def infer_text_encoder_config(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    prefix = CLIP_PREFIX + "text_model."
    token_embedding = state[prefix + "embeddings.token_embedding.weight"]
    vocab_size, hidden = token_embedding.shape
    layers = len({k[len(prefix):].split(".")[2] for k in state if k.startswith(prefix + "encoder.layers.")})
    config = load_json_config("sd15_text_encoder.json")
    config.update(
        vocab_size=int(vocab_size),
        hidden_size=int(hidden),
        projection_dim=int(hidden),
        num_hidden_layers=layers,
        num_attention_heads=max(1, int(hidden) // CLIP_HEAD_WIDTH),
        intermediate_size=int(state[prefix + "encoder.layers.0.mlp.fc1.weight"].shape[0]),
        max_position_embeddings=int(state[prefix + "embeddings.position_embedding.weight"].shape[0]),
    )
    return config


# --------------------------------------------------------------------------- building


def text_encoder_from_config(config: dict[str, Any]):
    from transformers import CLIPTextConfig, CLIPTextModel

    settings = {k: v for k, v in config.items() if k not in ("architectures", "model_type")}
    vocab_size = settings["vocab_size"]
    if settings.get("eos_token_id", 0) >= vocab_size:
        # Small vocabularies (our tiny tokenizer) put the special tokens at their end.
        settings.update(bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    return CLIPTextModel(CLIPTextConfig(**settings))


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
        raise ModelLoadError(f"The checkpoint's {what} does not match the SD1.x layout ({detail}).")
    for key, tensor in expected.items():
        if tensor.shape != state[key].shape:
            raise ModelLoadError(f"The checkpoint's {what} has {key} of shape {tuple(state[key].shape)}, expected {tuple(tensor.shape)}.")
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


def load_tokenizer(tokenizer_dir: str | os.PathLike | None):
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
        return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    except Exception as error:
        raise ModelLoadError(f"The tokenizer in {folder} could not be read ({error.__class__.__name__}: {error}).") from None


def default_noise_scheduler(prediction_type: str = "epsilon"):
    from diffusers import DDPMScheduler

    config = load_json_config("sd15_scheduler.json")
    config["prediction_type"] = prediction_type
    return DDPMScheduler.from_config(config)


def components_from_ldm_state(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32):
    """Build UNet, VAE and text encoder from an LDM-layout state dict."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    unet_config = infer_unet_config(state)
    vae_config = infer_vae_config(state)
    te_config = infer_text_encoder_config(state)
    unet = materialize(lambda: UNet2DConditionModel.from_config(unet_config), convert_ldm_unet_checkpoint(state, unet_config), "UNet", dtype)
    # The VAE stays fp32 whatever ``dtype`` is: it is small, runs once per image, and overflows in fp16.
    vae = materialize(lambda: AutoencoderKL.from_config(vae_config), convert_ldm_vae_checkpoint(state, vae_config), "VAE")
    clip_state = convert_ldm_clip_checkpoint(state)
    text_encoder = materialize(lambda: text_encoder_from_config(te_config), _match_text_model_prefix(clip_state, te_config), "text encoder", dtype)
    return unet, vae, text_encoder


def _match_text_model_prefix(clip_state: dict[str, torch.Tensor], te_config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """transformers 5 dropped the ``text_model.`` level of CLIPTextModel's state dict; 4.x keeps it."""
    with torch.device("meta"):
        wants_prefix = any(k.startswith("text_model.") for k in text_encoder_from_config(te_config).state_dict())
    if wants_prefix:
        return clip_state
    return {re.sub(r"^text_model\.", "", k): v for k, v in clip_state.items()}


def file_fingerprint(path: Path) -> str:
    """A cheap identity for a file (size + mtime + name), used to match resumes to their base."""
    import hashlib

    stat = path.stat()
    return hashlib.sha256(f"{path.name}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:16]


def _ldm_dtype(key: str, dtype: torch.dtype) -> torch.dtype | None:
    """The dtype a single-file checkpoint's tensor is read in; None for what no component uses (EMA copies, ...)."""
    if key.startswith(VAE_PREFIX):
        return torch.float32  # see components_from_ldm_state
    if key.startswith((UNET_PREFIX, CLIP_PREFIX)):
        return dtype
    return None


def load_base_model(
    path: str | os.PathLike,
    tokenizer_dir: str | os.PathLike | None = None,
    prediction_type: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> BaseModel:
    """Load an SD1.x base from an LDM single file or a diffusers folder, offline, on the CPU.

    UNet and text encoder come in ``dtype``; the VAE is always fp32.
    """
    source = Path(path)
    if source.is_dir() and (source / "model_index.json").is_file():
        return _load_diffusers_folder(source, tokenizer_dir, prediction_type, dtype)
    state = read_state_dict(source, functools.partial(_ldm_dtype, dtype=dtype))
    unet, vae, text_encoder = components_from_ldm_state(state, dtype)
    del state
    tokenizer = load_tokenizer(tokenizer_dir)
    if len(tokenizer) != text_encoder.config.vocab_size:
        raise ModelLoadError(
            f"The tokenizer has {len(tokenizer)} tokens but the checkpoint's text encoder expects "
            f"{text_encoder.config.vocab_size}; use the tokenizer that belongs to this model."
        )
    model = BaseModel(
        unet=unet.eval().requires_grad_(False),
        vae=vae.eval().requires_grad_(False),
        text_encoder=text_encoder.eval().requires_grad_(False),
        tokenizer=tokenizer,
        noise_scheduler=default_noise_scheduler(prediction_type or "epsilon"),
        source=str(source),
        source_hash=file_fingerprint(source),
    )
    return model


def _from_pretrained(model_class, folder: Path, weights_name: str, dtype: torch.dtype):
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


def _load_diffusers_folder(folder: Path, tokenizer_dir, prediction_type, dtype: torch.dtype) -> BaseModel:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    index = json.loads((folder / "model_index.json").read_text())
    for part in ("unet", "vae", "text_encoder"):
        if not (folder / part).is_dir():
            raise ModelLoadError(f"Diffusers folder {folder} has no {part}/ subfolder.")
    unet_class = index.get("unet", [None, None])[1]
    if unet_class not in (None, "UNet2DConditionModel") or "text_encoder_2" in index:
        raise ModelLoadError(f"Diffusers folder {folder.name} holds {index.get('_class_name', 'an unknown pipeline')}, not an SD1.x model.")
    try:
        unet = _from_pretrained(UNet2DConditionModel, folder / "unet", "diffusion_pytorch_model.safetensors", dtype)
        vae = AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True)
        text_encoder = _from_pretrained(CLIPTextModel, folder / "text_encoder", "model.safetensors", dtype)
    except ModelLoadError:
        raise
    except Exception as error:
        raise ModelLoadError(f"Diffusers folder {folder.name} could not be loaded ({error.__class__.__name__}: {str(error)[:200]}).") from None
    if unet.config.cross_attention_dim != text_encoder.config.hidden_size or isinstance(unet.config.attention_head_dim, list):
        raise ModelLoadError(f"Diffusers folder {folder.name} is not SD1.x-shaped (SD2/SDXL-style attention).")
    tokenizer = load_tokenizer(tokenizer_dir if tokenizer_dir is not None else folder / "tokenizer")
    if (folder / "scheduler" / "scheduler_config.json").is_file():
        scheduler = DDPMScheduler.from_pretrained(folder / "scheduler", local_files_only=True)
        if prediction_type:
            scheduler = DDPMScheduler.from_config(scheduler.config, prediction_type=prediction_type)
    else:
        scheduler = default_noise_scheduler(prediction_type or "epsilon")
    digest = file_fingerprint(folder / "model_index.json")
    return BaseModel(
        unet=unet.eval().requires_grad_(False),
        vae=vae.eval().requires_grad_(False),
        text_encoder=text_encoder.eval().requires_grad_(False),
        tokenizer=tokenizer,
        noise_scheduler=scheduler,
        source=str(folder),
        source_hash=digest,
    )
