"""Reading the original (LDM/SGM) single-file layout that SD1.x, SD2.x and SDXL share.

The architecture is read from key structure and tensor shapes, starting from the
family's shipped config, so a shrunken model of a family loads like the real one.
The weights are converted with diffusers' single-file utilities; only the config
inference is ours, because diffusers would otherwise fetch a YAML or a hub config.
"""
from __future__ import annotations

import re
from typing import Any

import torch

from ..errors import CheckpointLayoutError
from ..model_loading import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX, load_json_config, materialize

SD2_OPEN_CLIP_PREFIX = "cond_stage_model.model."  # SD2.x's OpenCLIP-H, OpenCLIP layout
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."  # SDXL's OpenCLIP bigG
SD1_ATTENTION_HEADS = 8  # SD1.x UNets use 8 heads whatever their width; shapes cannot tell us this
HEAD_WIDTH = 64  # SD2.x/SDXL attention heads and every CLIP/OpenCLIP text tower's heads are 64 wide


def heads_for(width: int) -> int:
    return max(1, int(width) // HEAD_WIDTH)


def _levels(state: dict[str, torch.Tensor]) -> list[dict[str, list]]:
    """The UNet's down levels from its LDM ``input_blocks``: res-block widths, attention and depth of each."""
    def has(name: str) -> bool:
        return UNET_PREFIX + name in state

    levels: list[dict[str, list]] = [{"channels": [], "attention": [], "depth": [], "linear": []}]
    index = 1
    while has(f"input_blocks.{index}.0.op.weight") or has(f"input_blocks.{index}.0.in_layers.0.weight"):
        if has(f"input_blocks.{index}.0.op.weight"):
            levels.append({"channels": [], "attention": [], "depth": [], "linear": []})
        else:
            level = levels[-1]
            level["channels"].append(state[UNET_PREFIX + f"input_blocks.{index}.0.out_layers.3.weight"].shape[0])
            has_attention = has(f"input_blocks.{index}.1.proj_in.weight")
            level["attention"].append(has_attention)
            if has_attention:
                depth = 0
                while has(f"input_blocks.{index}.1.transformer_blocks.{depth}.attn1.to_q.weight"):
                    depth += 1
                level["depth"].append(depth)
                level["linear"].append(state[UNET_PREFIX + f"input_blocks.{index}.1.proj_in.weight"].ndim == 2)
        index += 1
    return levels


def infer_unet_config(state: dict[str, torch.Tensor], base_config: str = "sd15_unet.json", fixed_heads: int | None = SD1_ATTENTION_HEADS) -> dict[str, Any]:
    """The UNet architecture from LDM key structure and tensor shapes.

    ``fixed_heads`` is SD1.x's rule (8 heads everywhere); None uses SD2.x/SDXL's 64-wide heads.
    An SDXL-style ``label_emb`` (size and pooled-text conditioning) sets the addition embedding;
    its per-number width depends on the pooled text width, which the family fills in.
    """
    levels = _levels(state)
    layers = {len(level["channels"]) for level in levels}
    if len(layers) != 1 or 0 in layers:
        raise CheckpointLayoutError(f"The UNet has an irregular block layout (res blocks per level: {[len(l['channels']) for l in levels]}).")
    block_out_channels = [int(level["channels"][0]) for level in levels]
    if int(state[UNET_PREFIX + "input_blocks.0.0.weight"].shape[0]) != block_out_channels[0]:
        raise CheckpointLayoutError("The UNet's first block width differs from its input convolution, which Stable Diffusion never has.")
    down_block_types = ["CrossAttnDownBlock2D" if any(level["attention"]) else "DownBlock2D" for level in levels]
    cross_key = next((k for k in state if k.startswith(UNET_PREFIX) and k.endswith("attn2.to_k.weight")), None)
    if cross_key is None:
        raise CheckpointLayoutError("The UNet has no cross-attention layers, so it is not a text-to-image Stable Diffusion model.")
    depths = [level["depth"][0] if level["depth"] else 1 for level in levels]
    linear = {flag for level in levels for flag in level["linear"]}
    config = load_json_config(base_config)
    config.update(
        in_channels=int(state[UNET_PREFIX + "input_blocks.0.0.weight"].shape[1]),
        out_channels=int(state[UNET_PREFIX + "out.2.weight"].shape[0]),
        block_out_channels=block_out_channels,
        layers_per_block=layers.pop(),
        down_block_types=down_block_types,
        up_block_types=["CrossAttnUpBlock2D" if kind == "CrossAttnDownBlock2D" else "UpBlock2D" for kind in reversed(down_block_types)],
        cross_attention_dim=int(state[cross_key].shape[1]),
        attention_head_dim=fixed_heads if fixed_heads is not None else [heads_for(c) for c in block_out_channels],
        transformer_layers_per_block=depths[0] if len(set(depths)) == 1 else depths,
        use_linear_projection=linear == {True},
    )
    label = state.get(UNET_PREFIX + "label_emb.0.0.weight")
    if label is not None:
        config.update(addition_embed_type="text_time", projection_class_embeddings_input_dim=int(label.shape[1]))
    return config


def infer_vae_config(state: dict[str, torch.Tensor], base_config: str = "sd15_vae.json") -> dict[str, Any]:
    prefix = VAE_PREFIX + "encoder.down."
    levels = sorted({int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)})
    if not levels:
        raise CheckpointLayoutError("The checkpoint's VAE has no encoder blocks (first_stage_model.encoder.down.*).")
    channels = [int(state[f"{prefix}{i}.block.0.conv1.weight"].shape[0]) for i in levels]
    config = load_json_config(base_config)
    config.update(
        block_out_channels=channels,
        layers_per_block=len({k.split(".")[5] for k in state if k.startswith(f"{prefix}0.block.")}),
        down_block_types=["DownEncoderBlock2D"] * len(channels),
        up_block_types=["UpDecoderBlock2D"] * len(channels),
        latent_channels=int(state[VAE_PREFIX + "post_quant_conv.weight"].shape[0]),
        in_channels=int(state[VAE_PREFIX + "encoder.conv_in.weight"].shape[1]),
    )
    return config


def infer_clip_config(state: dict[str, torch.Tensor], prefix: str = CLIP_PREFIX, base_config: str = "sd15_text_encoder.json") -> dict[str, Any]:
    """A CLIP text tower stored in the Hugging Face layout (SD1.x's, SDXL's CLIP-L)."""
    text = prefix + "text_model."
    vocab_size, hidden = state[text + "embeddings.token_embedding.weight"].shape
    config = load_json_config(base_config)
    config.update(
        vocab_size=int(vocab_size),
        hidden_size=int(hidden),
        projection_dim=int(hidden),
        num_hidden_layers=len({k[len(text):].split(".")[2] for k in state if k.startswith(text + "encoder.layers.")}),
        num_attention_heads=heads_for(hidden),
        intermediate_size=int(state[text + "encoder.layers.0.mlp.fc1.weight"].shape[0]),
        max_position_embeddings=int(state[text + "embeddings.position_embedding.weight"].shape[0]),
    )
    return config


def open_clip_layers(state: dict[str, torch.Tensor], prefix: str) -> int:
    blocks = prefix + "transformer.resblocks."
    return len({k[len(blocks):].split(".")[0] for k in state if k.startswith(blocks)})


def infer_open_clip_config(state: dict[str, torch.Tensor], prefix: str, base_config: str, layers_used: int) -> dict[str, Any]:
    """An OpenCLIP text tower (SD2.x's H, SDXL's bigG) as a transformers CLIP config of ``layers_used`` layers."""
    vocab_size, width = state[prefix + "token_embedding.weight"].shape
    projection = state.get(prefix + "text_projection")
    config = load_json_config(base_config)
    config.update(
        vocab_size=int(vocab_size),
        hidden_size=int(width),
        projection_dim=int(projection.shape[1]) if projection is not None else int(width),
        num_hidden_layers=int(layers_used),
        num_attention_heads=heads_for(width),
        intermediate_size=int(state[prefix + "transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
        max_position_embeddings=int(state[prefix + "positional_embedding"].shape[0]),
    )
    return config


def text_encoder_from_config(config: dict[str, Any], with_projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    settings = {k: v for k, v in config.items() if k not in ("architectures", "model_type")}
    vocab_size = settings["vocab_size"]
    if settings.get("eos_token_id", 0) >= vocab_size:
        # Small vocabularies (our tiny tokenizer) put the special tokens at their end.
        settings.update(bos_token_id=vocab_size - 2, eos_token_id=vocab_size - 1, pad_token_id=vocab_size - 1)
    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return model_class(CLIPTextConfig(**settings))


def match_module_keys(converted: dict[str, torch.Tensor], make_module) -> dict[str, torch.Tensor]:
    """transformers 5 dropped the ``text_model.`` level of CLIPTextModel's state dict (not of the projection
    model's); diffusers' converters always write it. Give the keys the level the module has."""
    with torch.device("meta"):
        wants_prefix = any(k.startswith("text_model.") for k in make_module().state_dict())
    if wants_prefix:
        return {k if k.startswith(("text_model.", "text_projection")) else f"text_model.{k}": v for k, v in converted.items()}
    return {re.sub(r"^text_model\.", "", k): v for k, v in converted.items()}


def build_unet(state: dict[str, torch.Tensor], config: dict[str, Any], dtype: torch.dtype):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    return materialize(lambda: UNet2DConditionModel.from_config(config), convert_ldm_unet_checkpoint(state, config), "UNet", dtype)


def build_vae(state: dict[str, torch.Tensor], config: dict[str, Any]):
    """The VAE stays fp32 whatever the training dtype: it is small, runs once per image, and overflows in fp16."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return materialize(lambda: AutoencoderKL.from_config(config), convert_ldm_vae_checkpoint(state, config), "VAE")


def build_clip(state: dict[str, torch.Tensor], prefix: str, config: dict[str, Any], dtype: torch.dtype, what: str):
    from diffusers.loaders.single_file_utils import convert_ldm_clip_checkpoint

    def make():
        return text_encoder_from_config(config)

    converted = convert_ldm_clip_checkpoint({k: v for k, v in state.items() if k.startswith(prefix)}, remove_prefix=prefix)
    return materialize(make, match_module_keys(converted, make), what, dtype)


def build_open_clip(state: dict[str, torch.Tensor], prefix: str, config: dict[str, Any], dtype: torch.dtype, what: str, with_projection: bool):
    """An OpenCLIP tower as a transformers CLIP model; resblocks past ``num_hidden_layers`` are left out
    (SD2.x conditions on the penultimate block, so its last block is never run)."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    def make():
        return text_encoder_from_config(config, with_projection=with_projection)

    layers = config["num_hidden_layers"]
    unused = re.compile(re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.")
    tower = {
        k: v for k, v in state.items()
        if k.startswith(prefix) and not ((m := unused.match(k)) and int(m[1]) >= layers)
        and (with_projection or not k.endswith("text_projection"))
    }
    with torch.device("meta"):
        shell = make()
    converted = convert_open_clip_checkpoint(shell, tower, prefix=prefix)
    if not with_projection:
        converted.pop("text_projection.weight", None)
    return materialize(make, match_module_keys(converted, make), what, dtype)
