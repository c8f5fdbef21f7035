"""Write diffusers SD1.x components as one LDM-layout checkpoint.

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


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    config = unet.config
    per_level = config.layers_per_block + 1
    up_has_attention = ["CrossAttn" in kind for kind in config.up_block_types]
    converted = {}
    for key, tensor in unet.state_dict().items():
        new = key
        if key.startswith("time_embedding.linear_1."):
            new = key.replace("time_embedding.linear_1.", "time_embed.0.")
        elif key.startswith("time_embedding.linear_2."):
            new = key.replace("time_embedding.linear_2.", "time_embed.2.")
        elif key.startswith("conv_in."):
            new = key.replace("conv_in.", "input_blocks.0.0.")
        elif key.startswith("conv_norm_out."):
            new = key.replace("conv_norm_out.", "out.0.")
        elif key.startswith("conv_out."):
            new = key.replace("conv_out.", "out.2.")
        elif match := re.match(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
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
            slot = 2 if up_has_attention[level] else 1
            new = f"output_blocks.{level * per_level + config.layers_per_block}.{slot}.conv.{rest}"
        converted[UNET_PREFIX + new] = tensor
    return converted


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


def text_encoder_to_ldm(text_encoder) -> dict[str, torch.Tensor]:
    converted = {}
    for key, tensor in text_encoder.state_dict().items():
        key = key if key.startswith("text_model.") else f"text_model.{key}"
        converted[CLIP_PREFIX + key] = tensor
    return converted


def components_to_ldm(unet, vae, text_encoder, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    state = {**unet_to_ldm(unet), **vae_to_ldm(vae), **text_encoder_to_ldm(text_encoder)}
    return {k: (v.to(dtype) if dtype is not None else v).contiguous() for k, v in state.items()}
