"""Built-in tiny models of each family (SD1.x, SD2.x, SDXL) and synthetic captioned images.

Used by the ``demo`` command (the README's no-download main job), the test
fixtures and the benchmarks. Shapes follow the real architectures (original
key layout, CLIP/OpenCLIP text towers, 8x VAE) shrunk to a few hundred thousand
parameters; ``full_size=True`` gives the real architecture (860M-parameter SD1.5
UNet, 2.6B SDXL) with random weights.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch

from .families.ldm import heads_for
from .model_loading import BaseModel, default_noise_scheduler, load_json_config, load_tokenizer, text_encoder_from_config

TINY_UNET = {
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 32,
    "sample_size": 8,
}
TINY_VAE = {"block_out_channels": [32, 32, 32, 32], "layers_per_block": 1, "sample_size": 64}
TINY_TEXT_ENCODER = {"hidden_size": 32, "projection_dim": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 1}
# SD2.x: SD1's tiny UNet with SD2's linear projections and 64-wide heads (one head at these widths).
TINY_SD2_UNET = {**TINY_UNET, "use_linear_projection": True, "attention_head_dim": [heads_for(32), heads_for(64)]}
# SDXL: no attention on the first level, two transformer blocks on the second, size conditioning
# of 8 numbers per size (SDXL: 256) after a pooled text of 32 (SDXL: 1280); text 32 + 32 wide.
TINY_SDXL_UNET = {
    "block_out_channels": [32, 64],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 2],
    "attention_head_dim": [heads_for(32), heads_for(64)],
    "cross_attention_dim": 64,
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 32 + 6 * 8,
    "sample_size": 8,
}
FAMILY_CONFIGS = {  # unet, vae, first text encoder, second text encoder (SDXL's bigG)
    "sd1": ("sd15_unet.json", "sd15_vae.json", "sd15_text_encoder.json", None),
    "sd2": ("sd2_unet.json", "sd15_vae.json", "sd2_text_encoder.json", None),
    "sdxl": ("sdxl_unet.json", "sdxl_vae.json", "sd15_text_encoder.json", "sdxl_text_encoder_2.json"),
}
TINY_UNETS = {"sd1": TINY_UNET, "sd2": TINY_SD2_UNET, "sdxl": TINY_SDXL_UNET}
FAMILY_NAMES = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}
DEMO_WORDS = "a an the photo drawing of red green blue yellow circle square triangle on white black gray background small large".split()
SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
BACKGROUNDS = {"white": (250, 250, 250), "black": (10, 10, 10), "gray": (128, 128, 128)}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


CLIP_VOCAB_SIZE = 49408


def write_tiny_tokenizer(folder: Path, words=DEMO_WORDS, vocab_size: int | None = None) -> Path:
    """Write a small but genuine CLIP BPE tokenizer (vocab.json + merges.txt).

    ``vocab_size`` pads the vocabulary with unused tokens, so the tokenizer
    fits a full-size CLIP text encoder (49408 tokens) in benchmarks.
    """
    folder.mkdir(parents=True, exist_ok=True)
    base = list(_bytes_to_unicode().values())
    vocab_list = base + [c + "</w>" for c in base]
    merges = []
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merged = pieces[0] + pieces[1]
            merge = f"{pieces[0]} {pieces[1]}"
            if merge not in merges:
                merges.append(merge)
                vocab_list.append(merged)
            pieces = [merged] + pieces[2:]
    if vocab_size is not None:
        vocab_list += [f"<|unused{index}|>" for index in range(vocab_size - 2 - len(dict.fromkeys(vocab_list)))]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(vocab_list))}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder


def _configs(family: str, full_size: bool, vocab_size: int) -> tuple[dict, dict, list[dict]]:
    unet_name, vae_name, *text_names = FAMILY_CONFIGS[family]
    unet_config, vae_config = load_json_config(unet_name), load_json_config(vae_name)
    text_configs = [load_json_config(name) for name in text_names if name]
    if not full_size:
        unet_config.update(TINY_UNETS[family])
        vae_config.update(TINY_VAE)
        for config in text_configs:
            config.update(TINY_TEXT_ENCODER)
    for config in text_configs:
        config["vocab_size"] = vocab_size
    return unet_config, vae_config, text_configs


def build_base_model(tokenizer_dir: Path, seed: int = 0, full_size: bool = False, family: str = "sd1", dtype: torch.dtype | None = None) -> BaseModel:
    """Random-weight base model of a family (tiny by default), deterministic for a seed.

    ``dtype`` builds the UNet and text encoders in that dtype from the start (a full-size SDXL is
    10 GB in fp32); the VAE stays fp32."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from .families import family_named

    slots = family_named(family).text_encoders
    tokenizers = [load_tokenizer(tokenizer_dir, slot.pad_token) for slot in slots]
    unet_config, vae_config, text_configs = _configs(family, full_size, len(tokenizers[0]))
    generator_state = torch.random.get_rng_state()
    default_dtype = torch.get_default_dtype()
    torch.manual_seed(seed)
    try:
        torch.set_default_dtype(dtype or default_dtype)
        unet = UNet2DConditionModel.from_config(unet_config)
        torch.set_default_dtype(default_dtype)
        vae = AutoencoderKL.from_config(vae_config)
        torch.set_default_dtype(dtype or default_dtype)
        encoders = [text_encoder_from_config(config, with_projection=index == 1) for index, config in enumerate(text_configs)]
    finally:
        torch.set_default_dtype(default_dtype)
        torch.random.set_rng_state(generator_state)
    size = "tiny" if not full_size else "full-size"
    extra = {"text_encoder_2": encoders[1].eval().requires_grad_(False), "tokenizer_2": tokenizers[1]} if len(encoders) > 1 else {}
    source = "built-in tiny SD1.x" if family == "sd1" and not full_size else f"built-in {size} {FAMILY_NAMES[family]} (random weights)"
    if family == "sd1" and full_size:
        source = "built-in SD1.5 architecture (random weights)"
    return BaseModel(
        unet=unet.eval().requires_grad_(False),
        vae=vae.eval().requires_grad_(False),
        text_encoder=encoders[0].eval().requires_grad_(False),
        tokenizer=tokenizers[0],
        noise_scheduler=default_noise_scheduler(),
        family=family,
        source=source,
        source_hash=f"builtin-{'full' if full_size else 'tiny'}-{seed}" + ("" if family == "sd1" else f"-{family}"),
        **extra,
    )


def _save_tokenizer(folder: Path, tokenizer_dir: Path, max_length: int, pad_token: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(tokenizer_dir / name, folder / name)
    # Without a config, transformers assumes an unbounded max length (CLIP's is 77), and AutoTokenizer
    # (the diffusers SDXL script's) cannot tell the class; real SD folders name both.
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": max_length, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
              "unk_token": "<|endoftext|>", "pad_token": pad_token}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def save_diffusers_folder(model: BaseModel, folder: Path, tokenizer_dir: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.unet.save_pretrained(folder / "unet", safe_serialization=True)
    model.vae.save_pretrained(folder / "vae", safe_serialization=True)
    model.noise_scheduler.save_config(folder / "scheduler")
    index = {
        "_class_name": "StableDiffusionXLPipeline" if model.family == "sdxl" else "StableDiffusionPipeline",
        "_diffusers_version": "0.42.1",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDPMScheduler"],
    }
    for slot in model.model_family.text_encoders:
        encoder = getattr(model, slot.attribute)
        encoder.save_pretrained(folder / slot.attribute, safe_serialization=True)
        _save_tokenizer(folder / slot.tokenizer, tokenizer_dir, encoder.config.max_position_embeddings, slot.pad_token)
        index[slot.attribute] = ["transformers", type(encoder).__name__]
        index[slot.tokenizer] = ["transformers", "CLIPTokenizer"]
    if model.family != "sdxl":
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def save_ldm_checkpoint(model: BaseModel, path: Path, dtype: torch.dtype | None = None) -> Path:
    from safetensors.torch import save_file

    from .ldm_export import base_to_ldm

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(base_to_ldm(model, dtype), str(path))
    return path


def write_synthetic_dataset(root: Path, count: int = 8, size: int = 64, seed: int = 0, layout: str = "image-text") -> Path:
    """Coloured shapes with matching captions, in the old node's image/ + text/ layout or as sidecars."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    image_dir = root / "image" if layout == "image-text" else root
    text_dir = root / "text" if layout == "image-text" else root
    image_dir.mkdir(parents=True, exist_ok=True)
    text_dir.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        shape = SHAPES[index % len(SHAPES)]
        colour = list(COLOURS)[index % len(COLOURS)]
        background = list(BACKGROUNDS)[(index // len(SHAPES)) % len(BACKGROUNDS)]
        image = Image.new("RGB", (size, size), BACKGROUNDS[background])
        draw = ImageDraw.Draw(image)
        margin = rng.randint(size // 8, size // 4)
        box = (margin, margin, size - margin, size - margin)
        if shape == "circle":
            draw.ellipse(box, fill=COLOURS[colour])
        elif shape == "square":
            draw.rectangle(box, fill=COLOURS[colour])
        else:
            draw.polygon([(size // 2, margin), (size - margin, size - margin), (margin, size - margin)], fill=COLOURS[colour])
        image.save(image_dir / f"{index}.png")
        (text_dir / f"{index}.txt").write_text(f"a {colour} {shape} on a {background} background")
    return root


# A UNet ComfyUI accepts as SD1.5 (it detects the family from model_channels=320, context_dim=768 and
# conv proj_in/out, with any depth) but with one level, so tests of the real ComfyUI train in seconds.
# ComfyUI builds the VAE and CLIP-L from fixed configs, so those stay full size.
COMFY_SHALLOW_UNET = {
    "block_out_channels": [320],
    "layers_per_block": 1,
    "down_block_types": ["CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D"],
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "use_linear_projection": False,
}


def build_comfy_shallow_model(tokenizer_dir: Path, seed: int = 0) -> BaseModel:
    """Random-weight model ComfyUI loads as SD1.5: shallow 320-channel UNet, full-size VAE and CLIP-L.

    Pass ComfyUI's own ``comfy/sd1_tokenizer`` so the text encoder has CLIP-L's 49408-token vocabulary.
    """
    from diffusers import UNet2DConditionModel

    model = build_base_model(tokenizer_dir, seed=seed, full_size=True)
    config = {**load_json_config("sd15_unet.json"), **COMFY_SHALLOW_UNET}
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model.unet = UNet2DConditionModel.from_config(config).eval().requires_grad_(False)
    finally:
        torch.random.set_rng_state(generator_state)
    model.source, model.source_hash = "built-in shallow SD1.5 (random weights)", f"builtin-comfy-shallow-{seed}"
    return model
