"""LoRA adapters: settings, injection with peft, and the kohya file format.

peft does the adapter math; this module decides which modules get adapters
and turns peft's layers into the kohya key layout (``lora_unet_*``,
``lora_te_*`` with ``.lora_down``/``.lora_up``/``.alpha``) that ComfyUI,
A1111/Forge and diffusers all read. LoHa and LoKr adapters (peft's, LyCORIS's
``algo=loha``/``lokr``) save LyCORIS's ``.hada_*`` / ``.lokr_*`` keys under the
same module names, which ComfyUI and A1111/Forge read too. peft's own key names
are never saved: ComfyUI silently ignores them.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import OutputPathError, SettingsError, TrainerError

ADAPTER_NAME = "lora_trainer"
UNET_TARGET_PRESETS = {
    # to_q/k/v/out.0 of every self- and cross-attention block.
    "attention": r".*\.attn[12]\.(to_q|to_k|to_v|to_out\.0)",
    # kohya's SD1.5 default: every Linear and 1x1 conv inside the transformer blocks (192 modules).
    "kohya": r".*attentions\.\d+\.(proj_in|proj_out|transformer_blocks\.\d+\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2)))",
    # kohya with conv_dim (LoCon): also every layer of the ResNet blocks (conv1/conv2 3x3,
    # conv_shortcut 1x1, time_emb_proj) and the down/upsampler convs: 192 + 86 modules on SD1.5.
    "kohya+conv": (
        r".*attentions\.\d+\.(proj_in|proj_out|transformer_blocks\.\d+\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2)))"
        r"|.*resnets\.\d+\.(conv1|conv2|conv_shortcut|time_emb_proj)|.*(downsamplers|upsamplers)\.\d+\.conv"
    ),
}
TEXT_ENCODER_TARGETS = r".*encoder\.layers\.\d+\.(self_attn\.(q_proj|k_proj|v_proj|out_proj)|mlp\.(fc1|fc2))"
UNET_PREFIX = "lora_unet_"
TEXT_ENCODER_PREFIX = "lora_te_"
ADAPTER_TYPES = ("lora", "loha", "lokr")
ADAPTER_LABELS = {"lora": "LoRA", "loha": "LoHa", "lokr": "LoKr"}
# The tensors a LoHa or LoKr module may save, by their LyCORIS names (a LoKr factor is either whole,
# lokr_w1, or a low-rank pair, lokr_w1_a @ lokr_w1_b).
LYCORIS_KEYS = {
    "loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"),
    "lokr": ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b"),
}
# Keys that mark a module of that type in a file (every module has one of them).
ADAPTER_MARKERS = {"lora": ("lora_down.weight",), "loha": ("hada_w1_a",), "lokr": ("lokr_w1", "lokr_w1_a")}


@dataclass(frozen=True)
class LoRASettings:
    rank: int = 4
    alpha: float | None = None  # None means alpha = rank, i.e. scale 1
    dropout: float = 0.0
    targets: str = "kohya"
    train_text_encoder: bool = False
    text_encoder_rank: int | None = None
    conv_rank: int | None = None  # rank of 3x3 conv adapters (LoCon); None means the LoRA rank
    conv_alpha: float | None = None  # None means alpha = conv rank
    use_dora: bool = False  # weight-decomposed LoRA (peft use_dora), saved with .dora_scale keys
    adapter: str = "lora"  # "loha": Hadamard product of two rank-r pairs (LyCORIS LoHa); "lokr": Kronecker product (LoKr)

    @property
    def effective_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    @property
    def effective_te_rank(self) -> int:
        return self.text_encoder_rank or self.rank

    @property
    def effective_conv_rank(self) -> int:
        return self.conv_rank or self.rank

    @property
    def effective_conv_alpha(self) -> float:
        return float(self.effective_conv_rank if self.conv_alpha is None else self.conv_alpha)

    @property
    def effective_te_alpha(self) -> float:
        return float(self.effective_te_rank if self.alpha is None else self.alpha)

    def validate(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 1:
            raise SettingsError(f"LoRA rank must be a whole number of at least 1, got {self.rank}.")
        if self.alpha is not None and not (self.alpha > 0):
            raise SettingsError(f"LoRA alpha must be positive, got {self.alpha}.")
        if not 0.0 <= self.dropout < 1.0:
            raise SettingsError(f"LoRA dropout must be in [0, 1), got {self.dropout}.")
        for name, value in (("Text-encoder rank", self.text_encoder_rank), ("Conv rank", self.conv_rank)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise SettingsError(f"{name} must be a whole number of at least 1, got {value}.")
        if self.conv_alpha is not None and not (self.conv_alpha > 0):
            raise SettingsError(f"Conv alpha must be positive, got {self.conv_alpha}.")
        if self.adapter not in ADAPTER_TYPES:
            raise SettingsError(f"The adapter type must be one of {', '.join(ADAPTER_TYPES)}, got {self.adapter!r}.")
        if self.adapter != "lora" and self.use_dora:
            raise SettingsError(f"DoRA is a kind of LoRA; it cannot be combined with {ADAPTER_LABELS[self.adapter]}.")
        if self.adapter != "lora" and self.dropout:
            raise SettingsError(f"{ADAPTER_LABELS[self.adapter]} adapters have no input dropout; set dropout to 0.")
        target_pattern(self.targets)

    def __repr__(self) -> str:
        te = f", text encoder rank {self.effective_te_rank}" if self.train_text_encoder else ""
        conv = f", conv rank {self.effective_conv_rank}" if self.targets == "kohya+conv" or self.conv_rank else ""
        dora = ", DoRA" if self.use_dora else ""
        kind = f", {ADAPTER_LABELS[self.adapter]}" if self.adapter != "lora" else ""
        return f"LoRAConfig(rank {self.rank}, alpha {self.effective_alpha:g}, {self.targets} targets{conv}{te}{dora}{kind})"


def target_pattern(targets: str) -> str:
    """A preset name's pattern, or ``targets`` itself as a regular expression over diffusers module names."""
    if targets in UNET_TARGET_PRESETS:
        return UNET_TARGET_PRESETS[targets]
    if not targets or not any(c in targets for c in ".*+?[]()|\\"):
        raise SettingsError(
            f"Unknown LoRA target preset {targets!r}; choose one of {', '.join(UNET_TARGET_PRESETS)}, "
            "or give a regular expression over UNet module names such as .*attn2\\.to_(k|v)."
        )
    try:
        re.compile(targets)
    except re.error as error:
        raise SettingsError(f"The LoRA target pattern {targets!r} is not a valid regular expression ({error}).") from None
    return targets


def is_spatial_conv(module: torch.nn.Module) -> bool:
    """A conv with a kernel bigger than 1x1: it gets the conv rank, as kohya's conv_dim."""
    return isinstance(module, torch.nn.Conv2d) and tuple(module.kernel_size) != (1, 1)


def matching_layers(model: torch.nn.Module, pattern: str) -> list[str]:
    """Names of the Linear and Conv2d modules whose full name matches ``pattern``."""
    return [name for name, module in model.named_modules() if re.fullmatch(pattern, name) and isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))]


def _check_rank(model: torch.nn.Module, pattern: str, rank: int, what: str, conv_rank: int | None = None) -> list[str]:
    names = matching_layers(model, pattern)
    if not names:
        raise SettingsError(f"The LoRA targets match no Linear or Conv2d layer of the {what}; check the preset or pattern.")
    for name in names:
        module = model.get_submodule(name)
        layer_rank = conv_rank if conv_rank is not None and is_spatial_conv(module) else rank
        width = min(module.weight.shape[0], module.weight[0].numel())
        if layer_rank > width:
            raise SettingsError(f"LoRA rank {layer_rank} is larger than the {what} layer {name} ({width} wide); choose a rank of at most {width}.")
    return names


def inject(
    model: torch.nn.Module,
    pattern: str,
    rank: int,
    alpha: float,
    dropout: float,
    what: str,
    conv_rank: int | None = None,
    conv_alpha: float | None = None,
    use_dora: bool = False,
    adapter: str = "lora",
) -> list[str]:
    """Add a trainable adapter to every Linear/Conv2d whose full name matches ``pattern``.

    Convs with a kernel larger than 1x1 get ``conv_rank``/``conv_alpha`` when given
    (kohya's conv_dim/conv_alpha); ``use_dora`` makes them DoRA adapters; ``adapter="loha"`` or
    ``"lokr"`` makes them LoHa or LoKr adapters, in the forms ComfyUI rebuilds (convolutions
    without the Tucker core; LoKr's first factor whole, its second a rank-r pair where that is smaller).
    """
    from peft import LoHaConfig, LoKrConfig, LoraConfig, inject_adapter_in_model

    names = _check_rank(model, pattern, rank, what, conv_rank)
    rank_pattern, alpha_pattern = {}, {}
    if conv_rank is not None:
        for name in names:
            if is_spatial_conv(model.get_submodule(name)):
                rank_pattern[re.escape(name)] = conv_rank
                alpha_pattern[re.escape(name)] = float(conv_alpha if conv_alpha is not None else conv_rank)
    # The exact layer names, not the pattern: a user's regex may also match container
    # modules (e.g. ``.*attn2`` matches the Attention block), which peft would refuse.
    if adapter == "loha":
        config = LoHaConfig(
            r=rank, alpha=alpha, target_modules=names, init_weights=True, use_effective_conv2d=False,
            rank_pattern=rank_pattern, alpha_pattern=alpha_pattern,
        )
    elif adapter == "lokr":
        config = LoKrConfig(
            r=rank, alpha=alpha, target_modules=names, init_weights=True, use_effective_conv2d=False,
            decompose_both=False, rank_pattern=rank_pattern, alpha_pattern=alpha_pattern,
        )
    else:
        config = LoraConfig(
            r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=names, init_lora_weights=True,
            rank_pattern=rank_pattern, alpha_pattern=alpha_pattern, use_dora=use_dora,
        )
    inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(f".{ADAPTER_NAME}." in name or name.endswith(f".{ADAPTER_NAME}"))
    return names


def lora_layers(model: torch.nn.Module):
    """(name, peft layer) of every module carrying our adapter, LoRA or LoHa."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer) and ADAPTER_NAME in getattr(module, "scaling", {}):
            yield name, module


def adapter_type(layer) -> str:
    return "loha" if hasattr(layer, "hada_w1_a") else "lokr" if hasattr(layer, "lokr_w1") else "lora"


def _lycoris_tensors(layer) -> dict[str, torch.nn.Parameter]:
    """A LoHa or LoKr layer's trained tensors under their LyCORIS key names (LoKr: those its shapes use)."""
    keys = LYCORIS_KEYS[adapter_type(layer)]
    return {key: getattr(layer, key)[ADAPTER_NAME] for key in keys if ADAPTER_NAME in getattr(layer, key)}


def _lycoris_file_scale(tensors: dict[str, torch.Tensor], stem: str) -> float:
    """The factor ComfyUI (comfy/weight_adapter) multiplies a LoHa or LoKr module's product by.

    LoHa: alpha / rank. LoKr: alpha / rank only when a factor is a low-rank pair (rank: that pair's
    inner size), else 1 whatever alpha says (LyCORIS's own rule too).
    """
    rank_from = [key for key in ("hada_w1_b", "lokr_w2_b", "lokr_w1_b") if f"{stem}.{key}" in tensors]
    if not rank_from or f"{stem}.alpha" not in tensors:
        return 1.0
    return float(tensors[f"{stem}.alpha"]) / tensors[f"{stem}.{rank_from[0]}"].shape[0]


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


TEXT_ENCODER_PREFIXES = "lora_te"  # lora_te_ (SD1.x/SD2.x), lora_te1_ and lora_te2_ (SDXL)


def kohya_stem(module_name: str, prefix: str) -> str:
    if prefix.startswith(TEXT_ENCODER_PREFIXES) and not module_name.startswith("text_model."):
        # transformers 5 dropped the text_model level of CLIPTextModel; kohya/ComfyUI names keep it.
        module_name = "text_model." + module_name
    return prefix + module_name.replace(".", "_")


@dataclass(frozen=True)
class KohyaNaming:
    """How one model's adapter modules are named in a kohya file: a prefix, and the module path kohya
    uses where it differs from the diffusers one (SDXL's UNet: the original LDM path)."""

    prefix: str
    rename: Callable[[str], str] | None = None

    def stem(self, module_name: str) -> str:
        return kohya_stem(self.rename(module_name) if self.rename else module_name, self.prefix)

    def stems(self, module_name: str) -> tuple[str, ...]:
        """The stem we write first, then the diffusers-path form other trainers write for the same module."""
        ours, plain = self.stem(module_name), kohya_stem(module_name, self.prefix)
        return (ours,) if ours == plain else (ours, plain)


def as_naming(naming: "KohyaNaming | str") -> KohyaNaming:
    return naming if isinstance(naming, KohyaNaming) else KohyaNaming(naming)


def _row_norms(weight: torch.Tensor) -> torch.Tensor:
    """L2 norm of each output row (over inputs and kernel), float64, shaped to broadcast over ``weight``."""
    flat = weight.double().reshape(weight.shape[0], -1)
    return flat.norm(dim=1).reshape(weight.shape[0], *[1] * (weight.ndim - 1))


def _layer_delta(layer) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(base weight, up @ down reshaped like it, scaling), all float64 on the CPU."""
    base = layer.get_base_layer().weight.detach().double().cpu()
    down = layer.lora_A[ADAPTER_NAME].weight.detach().double().cpu()
    up = layer.lora_B[ADAPTER_NAME].weight.detach().double().cpu()
    delta = (up.flatten(1) @ down.flatten(1)).reshape(base.shape)
    return base, delta, float(layer.scaling[ADAPTER_NAME])


def _magnitude(layer) -> torch.nn.Parameter | None:
    vectors = getattr(layer, "lora_magnitude_vector", None)
    if vectors is None or ADAPTER_NAME not in vectors:
        return None
    return vectors[ADAPTER_NAME].weight


def dora_scale_for_comfyui(layer) -> torch.Tensor:
    """The ``.dora_scale`` that makes ComfyUI reproduce a peft DoRA layer exactly.

    peft computes W' = m · (W + sΔW) / ‖W + sΔW‖ with one magnitude m per output row.
    ComfyUI (comfy/weight_adapter/base.py ``weight_decompose``, output-axis branch,
    taken when dora_scale.shape[0] equals the output width) computes
    dora_scale · (W + sΔW) / ‖W‖: it divides by the base weight's row norm.
    Saving dora_scale = m · ‖W‖ / ‖W + sΔW‖ makes both equal; the shape (out, 1[, 1, 1])
    selects that branch. ``load_kohya_into`` inverts this.
    """
    base, delta, scaling = _layer_delta(layer)
    magnitude = _magnitude(layer).detach().double().cpu().reshape(base.shape[0], *[1] * (base.ndim - 1))
    return (magnitude * _row_norms(base) / _row_norms(base + scaling * delta)).float().contiguous()


def kohya_state_dict(model: torch.nn.Module, naming: KohyaNaming | str) -> dict[str, torch.Tensor]:
    naming = as_naming(naming)
    tensors = {}
    for name, layer in lora_layers(model):
        stem = naming.stem(name)
        if adapter_type(layer) != "lora":
            tensors.update(_lycoris_state(layer, stem))
            continue
        down = layer.lora_A[ADAPTER_NAME].weight.detach().float().cpu()
        up = layer.lora_B[ADAPTER_NAME].weight.detach().float().cpu()
        rank = down.shape[0]
        tensors[f"{stem}.lora_down.weight"] = down.contiguous()
        tensors[f"{stem}.lora_up.weight"] = up.contiguous()
        tensors[f"{stem}.alpha"] = torch.tensor(float(layer.scaling[ADAPTER_NAME] * rank), dtype=torch.float32)
        if _magnitude(layer) is not None:
            tensors[f"{stem}.dora_scale"] = dora_scale_for_comfyui(layer)
    return tensors


def _lycoris_state(layer, stem: str) -> dict[str, torch.Tensor]:
    """One LoHa/LoKr module in LyCORIS keys, such that ComfyUI rebuilds peft's ΔW = scaling · product.

    ComfyUI's product is (w1_a @ w1_b) * (w2_a @ w2_b) for LoHa and kron(w1, w2) for LoKr, times
    ``_lycoris_file_scale``. Where that ignores alpha (a LoKr with both factors whole), peft's
    scaling goes into lokr_w2 and alpha is written as the rank, which LyCORIS reads as scale 1 too.
    """
    state = {f"{stem}.{key}": tensor.detach().float().cpu().contiguous() for key, tensor in _lycoris_tensors(layer).items()}
    scaling = float(layer.scaling[ADAPTER_NAME])
    rank = int(layer.r[ADAPTER_NAME])
    state[f"{stem}.alpha"] = torch.tensor(float(scaling * rank), dtype=torch.float32)
    if _lycoris_file_scale(state, stem) == 1.0 and scaling != 1.0:
        state[f"{stem}.lokr_w2"] = (state[f"{stem}.lokr_w2"].double() * scaling).float()
        state[f"{stem}.alpha"] = torch.tensor(float(rank), dtype=torch.float32)
    return state


def load_kohya_into(model: torch.nn.Module, tensors: dict[str, torch.Tensor], naming: KohyaNaming | str) -> int:
    """Copy kohya-format weights into the injected adapters; returns how many modules matched.

    A file whose alpha differs from the adapter's (a LoRA trained elsewhere) is
    rescaled into ``lora_up`` so the update ΔW = (alpha/rank)·up·down is kept;
    a rank that differs is refused. A module may be named either way ``naming`` knows.
    """
    naming = as_naming(naming)
    present = file_module_stems(tensors, naming.prefix)
    matched = 0
    for name, layer in lora_layers(model):
        stems = naming.stems(name)
        stem = next((s for s in stems if s in present), stems[0])
        if adapter_type(layer) != "lora":
            matched += _load_lycoris_into(layer, stem, tensors)
            continue
        if f"{stem}.lora_down.weight" not in tensors:
            continue
        down, up = tensors[f"{stem}.lora_down.weight"], tensors[f"{stem}.lora_up.weight"]
        target_down = layer.lora_A[ADAPTER_NAME].weight
        if down.shape != target_down.shape:
            raise SettingsError(
                f"The LoRA file's {stem} has rank {down.shape[0]} but this run's adapter there has rank "
                f"{target_down.shape[0]}; set the rank (and conv rank) to the file's."
            )
        file_rank = down.shape[0]
        file_scale = float(tensors[f"{stem}.alpha"]) / file_rank if f"{stem}.alpha" in tensors else 1.0
        our_scale = float(layer.scaling[ADAPTER_NAME])
        with torch.no_grad():
            target_down.copy_(down)
            layer.lora_B[ADAPTER_NAME].weight.copy_(up.double() * (file_scale / our_scale) if file_scale != our_scale else up)
            magnitude = _magnitude(layer)
            if magnitude is not None and f"{stem}.dora_scale" in tensors:
                base, delta, scaling = _layer_delta(layer)
                saved = tensors[f"{stem}.dora_scale"].double().reshape(base.shape[0], *[1] * (base.ndim - 1))
                restored = saved * _row_norms(base + scaling * delta) / _row_norms(base)
                magnitude.copy_(restored.reshape(magnitude.shape))
        matched += 1
    return matched


def _load_lycoris_into(layer, stem: str, tensors: dict[str, torch.Tensor]) -> int:
    """Copy one module's LoHa/LoKr tensors; a file scale that differs from ours is folded into the first
    factor (hada_w1_a, lokr_w1 or lokr_w1_a), keeping ComfyUI's ΔW. Returns 1, or 0 if the file lacks the module."""
    targets = _lycoris_tensors(layer)
    if not any(f"{stem}.{key}" in tensors for key in targets):
        return 0
    kind = ADAPTER_LABELS[adapter_type(layer)]
    for key, target in targets.items():
        saved = tensors.get(f"{stem}.{key}")
        if saved is None or saved.shape != target.shape:
            found = {k.rsplit(".", 1)[1]: tuple(v.shape) for k, v in tensors.items() if k.startswith(stem + ".") and not k.endswith(".alpha")}
            raise SettingsError(
                f"The {kind} file's {stem} has {found} but this run's adapter there has "
                f"{ {k: tuple(v.shape) for k, v in targets.items()} }; set the rank (and conv rank) to the file's."
            )
    scale_ratio = _lycoris_file_scale(tensors, stem) / float(layer.scaling[ADAPTER_NAME])
    first = next(iter(targets))
    with torch.no_grad():
        for key, target in targets.items():
            value = tensors[f"{stem}.{key}"]
            target.copy_(value.double() * scale_ratio if key == first and scale_ratio != 1.0 else value)
    return 1


def file_adapter_types(tensors: dict[str, torch.Tensor]) -> set[str]:
    """Which adapter types a kohya/LyCORIS file holds (empty if none we know)."""
    return {kind for kind, markers in ADAPTER_MARKERS.items() if any(k.endswith(f".{m}") for k in tensors for m in markers)}


def file_module_stems(tensors: dict[str, torch.Tensor], prefix: str) -> set[str]:
    markers = [f".{marker}" for markers in ADAPTER_MARKERS.values() for marker in markers]
    return {k.rsplit(".", 2 if k.endswith(".weight") else 1)[0] for k in tensors if k.startswith(prefix) and any(k.endswith(m) for m in markers)}


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable adapter tensor under its peft name: the exact state a checkpoint resumes from."""
    return {name: parameter.detach().cpu().clone() for name, parameter in model.named_parameters() if parameter.requires_grad}


def load_adapter_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    parameters = {name: parameter for name, parameter in model.named_parameters() if parameter.requires_grad}
    if set(parameters) != set(state):
        raise SettingsError("The checkpoint's adapters do not match this run's (other targets, rank or adapter type).")
    with torch.no_grad():
        for name, parameter in parameters.items():
            parameter.copy_(state[name])


# --------------------------------------------------------------------------- the LoRA object and its file


@dataclass(eq=False)
class LoRAWeights:
    """A trained LoRA in kohya layout (CPU fp32 tensors) with its ``ss_*`` metadata."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def unet_modules(self) -> int:
        return len(file_module_stems(self.tensors, UNET_PREFIX))

    @property
    def text_encoder_modules(self) -> int:
        return len(file_module_stems(self.tensors, TEXT_ENCODER_PREFIXES))

    def __repr__(self) -> str:
        def field(key: str) -> str:  # metadata may come from any file: shown short, never trusted
            return str(self.metadata.get(key, "?"))[:12]

        te = f" + {self.text_encoder_modules} text-encoder" if self.text_encoder_modules else ""
        return (
            f"LoRA(rank {field('ss_network_dim')}, alpha {field('ss_network_alpha')}, "
            f"{self.unet_modules} UNet{te} modules, {field('ss_steps')} steps)"
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


MAX_METADATA_BYTES = 1024 * 1024  # kohya's ss_* metadata is a few KiB; more is not a LoRA we wrote or need


def read_lora_file(path: str | os.PathLike) -> LoRAWeights:
    """Read a LoRA file; its metadata is untrusted text, so its size is checked before it is parsed."""
    from safetensors import safe_open

    from .model_loading import read_safetensors_header

    header, header_length = read_safetensors_header(Path(path))
    if header_length > MAX_METADATA_BYTES + 64 * len(header):
        raise TrainerError(f"{Path(path).name} has {header_length // 1024} KiB of header metadata, far more than a LoRA carries; it is refused.")
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
        tensors = {key: handle.get_tensor(key).float() for key in handle.keys()}
    return LoRAWeights(tensors=tensors, metadata=metadata)


def network_args_json(settings: LoRASettings) -> str:
    args: dict[str, Any] = {"targets": settings.targets, "dropout": settings.dropout, "train_text_encoder": settings.train_text_encoder}
    if settings.train_text_encoder:
        args["text_encoder_dim"] = str(settings.effective_te_rank)
    if settings.targets == "kohya+conv" or settings.conv_rank:
        # kohya's LoCon argument names, as strings like kohya writes them.
        args["conv_dim"] = str(settings.effective_conv_rank)
        args["conv_alpha"] = f"{settings.effective_conv_alpha:g}"
    if settings.use_dora:
        # LyCORIS's name; dora_scale holds m·‖W‖/‖W+ΔW‖ per output row (see dora_scale_for_comfyui).
        args["dora_wd"] = "True"
        args["dora_scale_convention"] = "comfyui-output-axis"
    if settings.adapter != "lora":
        args["algo"] = settings.adapter  # LyCORIS's names: loha, lokr
    return json.dumps(args)


SD1_FAMILY_METADATA = {"ss_base_model_version": "sd_v1", "ss_v2": "False", "modelspec.architecture": "stable-diffusion-v1"}


def build_metadata(settings: LoRASettings, extra: dict[str, Any], family: dict[str, str] | None = None) -> dict[str, str]:
    """kohya ``ss_*`` and ``modelspec.*`` metadata; every value a string, as safetensors requires.
    ``family`` gives the base model's version fields (``ModelFamily.metadata``; SD1.x when not given)."""
    family = family or SD1_FAMILY_METADATA
    metadata = {
        "ss_network_module": "networks.lora" if settings.adapter == "lora" else "lycoris.kohya",
        "ss_network_dim": str(settings.rank),
        "ss_network_alpha": f"{settings.effective_alpha:g}",
        "ss_network_args": network_args_json(settings),
        "ss_network_dropout": f"{settings.dropout:g}",
        "ss_base_model_version": family["ss_base_model_version"],
        "ss_v2": family["ss_v2"],
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": family["modelspec.architecture"] + "/lora",
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
    }
    if not settings.train_text_encoder:
        metadata["ss_network_train_unet_only"] = "True"
    for key, value in extra.items():
        metadata[key] = value if isinstance(value, str) else json.dumps(value)
    return metadata
