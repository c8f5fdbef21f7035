"""LoRA adapters: settings, injection with peft, and the kohya file format.

peft does the adapter math; this module decides which modules get adapters
and turns peft's layers into the kohya key layout (``lora_unet_*``,
``lora_te_*`` with ``.lora_down``/``.lora_up``/``.alpha``) that ComfyUI,
A1111/Forge and diffusers all read. peft's own key names are never saved:
ComfyUI silently ignores them.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import OutputPathError, SettingsError

ADAPTER_NAME = "lora_trainer"
UNET_TARGET_PRESETS = {
    # to_q/k/v/out.0 of every self- and cross-attention block.
    "attention": r".*\.attn[12]\.(to_q|to_k|to_v|to_out\.0)",
    # kohya's SD1.5 default: every Linear and 1x1 conv inside the transformer blocks (192 modules).
    "kohya": r".*attentions\.\d+\.(proj_in|proj_out|transformer_blocks\.\d+\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2)))",
}
TEXT_ENCODER_TARGETS = r".*encoder\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))"
UNET_PREFIX = "lora_unet_"
TEXT_ENCODER_PREFIX = "lora_te_"


@dataclass(frozen=True)
class LoRASettings:
    rank: int = 4
    alpha: float | None = None  # None means alpha = rank, i.e. scale 1
    dropout: float = 0.0
    targets: str = "kohya"
    train_text_encoder: bool = False
    text_encoder_rank: int | None = None

    @property
    def effective_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    @property
    def effective_te_rank(self) -> int:
        return self.text_encoder_rank or self.rank

    def validate(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise SettingsError(f"LoRA rank must be a whole number of at least 1, got {self.rank}.")
        if self.alpha is not None and not (self.alpha > 0):
            raise SettingsError(f"LoRA alpha must be positive, got {self.alpha}.")
        if not 0.0 <= self.dropout < 1.0:
            raise SettingsError(f"LoRA dropout must be in [0, 1), got {self.dropout}.")
        target_pattern(self.targets)

    def __repr__(self) -> str:
        te = f", text encoder rank {self.effective_te_rank}" if self.train_text_encoder else ""
        return f"LoRAConfig(rank {self.rank}, alpha {self.effective_alpha:g}, {self.targets} targets{te})"


def target_pattern(targets: str) -> str:
    if targets in UNET_TARGET_PRESETS:
        return UNET_TARGET_PRESETS[targets]
    raise SettingsError(f"Unknown LoRA target preset {targets!r}; choose one of {', '.join(UNET_TARGET_PRESETS)}.")


def _check_rank(model: torch.nn.Module, pattern: str, rank: int, what: str) -> list[str]:
    names = [name for name, module in model.named_modules() if re.fullmatch(pattern, name) and isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))]
    if not names:
        raise SettingsError(f"The target preset matches no layer of the {what}.")
    for name in names:
        module = model.get_submodule(name)
        width = min(module.weight.shape[0], module.weight.shape[1])
        if rank > width:
            raise SettingsError(f"LoRA rank {rank} is larger than the {what} layer {name} ({width} wide); choose a rank of at most {width}.")
    return names


def inject(model: torch.nn.Module, pattern: str, rank: int, alpha: float, dropout: float, what: str) -> list[str]:
    """Add a trainable LoRA adapter to every module whose full name matches ``pattern``."""
    from peft import LoraConfig, inject_adapter_in_model

    names = _check_rank(model, pattern, rank, what)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern, init_lora_weights=True)
    inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(f".{ADAPTER_NAME}." in name or name.endswith(f".{ADAPTER_NAME}"))
    return names


def lora_layers(model: torch.nn.Module):
    from peft.tuners.lora import LoraLayer

    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and ADAPTER_NAME in module.lora_A:
            yield name, module


def set_adapters_enabled(model: torch.nn.Module, enabled: bool) -> None:
    for _, layer in lora_layers(model):
        layer.enable_adapters(enabled)


def remove(model: torch.nn.Module) -> None:
    """Put every wrapped module's original layer back, leaving the model as it was."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    wrapped = [(name, module) for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]
    for name, module in wrapped:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, module.get_base_layer())
    if "peft_config" in model.__dict__:
        del model.peft_config


def kohya_stem(module_name: str, prefix: str) -> str:
    if prefix == TEXT_ENCODER_PREFIX and not module_name.startswith("text_model."):
        # transformers 5 dropped the text_model level; kohya/ComfyUI names keep it.
        module_name = "text_model." + module_name
    return prefix + module_name.replace(".", "_")


def kohya_state_dict(model: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    tensors = {}
    for name, layer in lora_layers(model):
        stem = kohya_stem(name, prefix)
        down = layer.lora_A[ADAPTER_NAME].weight.detach().float().cpu()
        up = layer.lora_B[ADAPTER_NAME].weight.detach().float().cpu()
        rank = down.shape[0]
        tensors[f"{stem}.lora_down.weight"] = down.contiguous()
        tensors[f"{stem}.lora_up.weight"] = up.contiguous()
        tensors[f"{stem}.alpha"] = torch.tensor(float(layer.scaling[ADAPTER_NAME] * rank), dtype=torch.float32)
    return tensors


def load_kohya_into(model: torch.nn.Module, tensors: dict[str, torch.Tensor], prefix: str) -> int:
    """Copy kohya-format weights into the injected adapters; returns how many modules matched."""
    matched = 0
    for name, layer in lora_layers(model):
        stem = kohya_stem(name, prefix)
        if f"{stem}.lora_down.weight" not in tensors:
            continue
        layer.lora_A[ADAPTER_NAME].weight.data.copy_(tensors[f"{stem}.lora_down.weight"])
        layer.lora_B[ADAPTER_NAME].weight.data.copy_(tensors[f"{stem}.lora_up.weight"])
        matched += 1
    return matched


# --------------------------------------------------------------------------- the LoRA object and its file


@dataclass(eq=False)
class LoRAWeights:
    """A trained LoRA in kohya layout (CPU fp32 tensors) with its ``ss_*`` metadata."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def unet_modules(self) -> int:
        return sum(1 for k in self.tensors if k.startswith(UNET_PREFIX) and k.endswith(".lora_down.weight"))

    @property
    def text_encoder_modules(self) -> int:
        return sum(1 for k in self.tensors if k.startswith(TEXT_ENCODER_PREFIX) and k.endswith(".lora_down.weight"))

    def __repr__(self) -> str:
        meta = self.metadata
        te = f" + {self.text_encoder_modules} text-encoder" if self.text_encoder_modules else ""
        return (
            f"LoRA(rank {meta.get('ss_network_dim', '?')}, alpha {meta.get('ss_network_alpha', '?')}, "
            f"{self.unet_modules} UNet{te} modules, {meta.get('ss_steps', '?')} steps)"
        )


def atomic_write(path: Path, write) -> Path:
    """Call ``write(temp_path)`` then rename over ``path``, so no half-written file ever has the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(temp_name)
        with open(temp_name, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temp_name, path)
    except BaseException:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
        raise
    return path


def save_lora_file(weights: LoRAWeights, path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> Path:
    from safetensors.torch import save_file

    target = Path(path)
    if target.suffix != ".safetensors":
        raise OutputPathError(f"LoRA files are saved as .safetensors; {target.name} has another extension.")
    tensors = {k: (v if k.endswith(".alpha") else v.to(dtype)).contiguous() for k, v in weights.tensors.items()}
    try:
        return atomic_write(target, lambda temp: save_file(tensors, temp, metadata=weights.metadata))
    except OSError as error:
        raise OutputPathError(f"Could not write {target}: {error.strerror or error}; check free space and permissions.") from None


def read_lora_file(path: str | os.PathLike) -> LoRAWeights:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
        tensors = {key: handle.get_tensor(key).float() for key in handle.keys()}
    return LoRAWeights(tensors=tensors, metadata=metadata)


def network_args_json(settings: LoRASettings) -> str:
    return json.dumps({"targets": settings.targets, "dropout": settings.dropout, "train_text_encoder": settings.train_text_encoder})


def build_metadata(settings: LoRASettings, extra: dict[str, Any]) -> dict[str, str]:
    """kohya ``ss_*`` and ``modelspec.*`` metadata; every value a string, as safetensors requires."""
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(settings.rank),
        "ss_network_alpha": f"{settings.effective_alpha:g}",
        "ss_network_args": network_args_json(settings),
        "ss_network_dropout": f"{settings.dropout:g}",
        "ss_base_model_version": "sd_v1",
        "ss_v2": "False",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-v1/lora",
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
    }
    if not settings.train_text_encoder:
        metadata["ss_network_train_unet_only"] = "True"
    for key, value in extra.items():
        metadata[key] = value if isinstance(value, str) else json.dumps(value)
    return metadata
