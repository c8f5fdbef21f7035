"""Write diffusers SD1.x, SD2.x and SDXL components as one single file in the original layout.

diffusers ships only the LDM → diffusers direction in its package, and the
built-in demo, the test fixtures and the ComfyUI integration test all need a
single-file checkpoint of a model we build ourselves, in the layout ComfyUI
and A1111 read. The mapping follows the LDM module names of the original
Stable Diffusion repository.
"""
from __future__ import annotations

import re

import torch

from .model_loading import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX

_RESNET_RENAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION_RENAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename_resnet(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_RESNET_RENAMES.get(head, head)}.{tail}"


_UNET_TOP_LEVEL = {
    "time_embedding.linear_1.": "time_embed.0.",
    "time_embedding.linear_2.": "time_embed.2.",
    "add_embedding.linear_1.": "label_emb.0.0.",  # SDXL's pooled-text and size conditioning
    "add_embedding.linear_2.": "label_emb.0.2.",
    "conv_in.": "input_blocks.0.0.",
    "conv_norm_out.": "out.0.",
    "conv_out.": "out.2.",
}


def unet_key_to_ldm(key: str, config) -> str:
    """A diffusers UNet state-dict key as the original LDM key (with its ``model.diffusion_model.`` prefix)."""
    per_level = config.layers_per_block + 1
    new = key
    for old_prefix, ldm_prefix in _UNET_TOP_LEVEL.items():
        if key.startswith(old_prefix):
            return UNET_PREFIX + ldm_prefix + key[len(old_prefix):]
    if match := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        level, layer, rest = int(match[1]), int(match[2]), match[3]
        new = f"input_blocks.{1 + level * per_level + layer}.0.{_rename_resnet(rest)}"
    elif match := re.match(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", key):
        level, layer, rest = int(match[1]), int(match[2]), match[3]
        new = f"input_blocks.{1 + level * per_level + layer}.1.{rest}"
    elif match := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        level, rest = int(match[1]), match[2]
        new = f"input_blocks.{1 + level * per_level + config.layers_per_block}.0.op.{rest}"
    elif match := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
        new = f"middle_block.{2 * int(match[1])}.{_rename_resnet(match[2])}"
    elif match := re.match(r"mid_block\.attentions\.0\.(.*)", key):
        new = f"middle_block.1.{match[1]}"
    elif match := re.match(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        level, layer, rest = int(match[1]), int(match[2]), match[3]
        new = f"output_blocks.{level * per_level + layer}.0.{_rename_resnet(rest)}"
    elif match := re.match(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", key):
        level, layer, rest = int(match[1]), int(match[2]), match[3]
        new = f"output_blocks.{level * per_level + layer}.1.{rest}"
    elif match := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        level, rest = int(match[1]), match[2]
        slot = 2 if "CrossAttn" in config.up_block_types[level] else 1
        new = f"output_blocks.{level * per_level + config.layers_per_block}.{slot}.conv.{rest}"
    return UNET_PREFIX + new


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    return {unet_key_to_ldm(key, unet.config): tensor for key, tensor in unet.state_dict().items()}


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    levels = len(vae.config.block_out_channels)
    converted = {}
    for key, tensor in vae.state_dict().items():
        new = key.replace("conv_shortcut", "nin_shortcut")
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)", r"encoder.down.\1.block.\2", new)
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0", r"encoder.down.\1.downsample", new)
        new = re.sub(
            r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)",
            lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}",
            new,
        )
        new = re.sub(
            r"decoder\.up_blocks\.(\d+)\.upsamplers\.0",
            lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample",
            new,
        )
        new = re.sub(r"mid_block\.resnets\.(\d+)", lambda m: f"mid.block_{int(m[1]) + 1}", new)
        if match := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", new):
            part, rest = match[1], match[2]
            for old_name, ldm_name in _VAE_ATTENTION_RENAMES.items():
                if rest.startswith(old_name + "."):
                    rest = ldm_name + rest[len(old_name):]
                    break
            new = f"{part}.mid.attn_1.{rest}"
            if tensor.ndim == 2:  # LDM stores the attention projections as 1x1 convolutions
                tensor = tensor[:, :, None, None]
        new = new.replace("conv_norm_out", "norm_out")
        converted[VAE_PREFIX + new] = tensor
    return converted


def text_encoder_to_ldm(text_encoder, prefix: str = CLIP_PREFIX) -> dict[str, torch.Tensor]:
    """A CLIP text tower in the Hugging Face layout (SD1.x's; SDXL's CLIP-L), under ``prefix``."""
    converted = {}
    for key, tensor in text_encoder.state_dict().items():
        if key.endswith("position_ids"):
            continue
        key = key if key.startswith("text_model.") else f"text_model.{key}"
        converted[prefix + key] = tensor
    return converted


_OPEN_CLIP_RENAMES = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
_OPEN_CLIP_BLOCK_RENAMES = {
    "self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
}


def open_clip_to_ldm(text_encoder, prefix: str, extra_block: bool = False) -> dict[str, torch.Tensor]:
    """A transformers CLIP tower in OpenCLIP's layout (SD2.x's H, SDXL's bigG): q/k/v joined as in_proj,
    the projection transposed. ``extra_block`` appends one more block, as SD2.x files carry a 24th block
    that their penultimate-layer conditioning never runs."""
    state = {re.sub(r"^text_model\.", "", k): v for k, v in text_encoder.state_dict().items() if not k.endswith("position_ids")}
    converted: dict[str, torch.Tensor] = {}
    layers = sorted({int(m[1]) for k in state if (m := re.match(r"encoder\.layers\.(\d+)\.", k))})
    for layer in layers + ([layers[-1] + 1] if extra_block else []):
        source = f"encoder.layers.{min(layer, layers[-1])}."
        target = f"{prefix}transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            converted[f"{target}attn.in_proj_{kind}"] = torch.cat([state[f"{source}self_attn.{p}_proj.{kind}"] for p in "qkv"])
            for old, new in _OPEN_CLIP_BLOCK_RENAMES.items():
                converted[f"{target}{new}.{kind}"] = state[f"{source}{old}.{kind}"].clone()
    for old, new in _OPEN_CLIP_RENAMES.items():
        converted[prefix + new] = state[old]
    projection = state.get("text_projection.weight")
    width = converted[prefix + "ln_final.weight"].shape[0]
    converted[prefix + "text_projection"] = projection.T.contiguous() if projection is not None else torch.eye(width)
    return converted


def base_to_ldm(model, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """A base model of any family as one single-file state dict in its original layout."""
    state = {**unet_to_ldm(model.unet), **vae_to_ldm(model.vae)}
    if model.family == "sdxl":
        state.update(text_encoder_to_ldm(model.text_encoder, "conditioner.embedders.0.transformer."))
        state.update(open_clip_to_ldm(model.text_encoder_2, "conditioner.embedders.1.model."))
    elif model.family == "sd2":
        state.update(open_clip_to_ldm(model.text_encoder, "cond_stage_model.model.", extra_block=True))
    else:
        state.update(text_encoder_to_ldm(model.text_encoder))
    return {k: (v.to(dtype) if dtype is not None else v).contiguous() for k, v in state.items()}


def components_to_ldm(unet, vae, text_encoder, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    state = {**unet_to_ldm(unet), **vae_to_ldm(vae), **text_encoder_to_ldm(text_encoder)}
    return {k: (v.to(dtype) if dtype is not None else v).contiguous() for k, v in state.items()}
