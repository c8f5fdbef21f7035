"""A built-in tiny SD1.x-shaped model and synthetic captioned images.

Used by the ``demo`` command (the README's no-download main job), the test
fixtures and the benchmarks. Shapes follow the real SD1.x architecture
(LDM key layout, CLIP text encoder, 8x VAE) shrunk to a few hundred thousand
parameters; ``full_size=True`` gives the real 860M SD1.5 architecture with
random weights.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch

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


def build_base_model(tokenizer_dir: Path, seed: int = 0, full_size: bool = False) -> BaseModel:
    """Random-weight SD1.x base model (tiny by default), deterministic for a seed."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    tokenizer = load_tokenizer(tokenizer_dir)
    unet_config = load_json_config("sd15_unet.json")
    vae_config = load_json_config("sd15_vae.json")
    te_config = load_json_config("sd15_text_encoder.json")
    if not full_size:
        unet_config.update(TINY_UNET)
        vae_config.update(TINY_VAE)
        te_config.update(TINY_TEXT_ENCODER)
    te_config["vocab_size"] = len(tokenizer)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        unet = UNet2DConditionModel.from_config(unet_config)
        vae = AutoencoderKL.from_config(vae_config)
        text_encoder = text_encoder_from_config(te_config)
    finally:
        torch.random.set_rng_state(generator_state)
    return BaseModel(
        unet=unet.eval().requires_grad_(False),
        vae=vae.eval().requires_grad_(False),
        text_encoder=text_encoder.eval().requires_grad_(False),
        tokenizer=tokenizer,
        noise_scheduler=default_noise_scheduler(),
        source="built-in tiny SD1.x" if not full_size else "built-in SD1.5 architecture (random weights)",
        source_hash=f"builtin-{'full' if full_size else 'tiny'}-{seed}",
    )


def save_diffusers_folder(model: BaseModel, folder: Path, tokenizer_dir: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.unet.save_pretrained(folder / "unet", safe_serialization=True)
    model.vae.save_pretrained(folder / "vae", safe_serialization=True)
    model.text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    model.noise_scheduler.save_config(folder / "scheduler")
    (folder / "tokenizer").mkdir(exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(tokenizer_dir / name, folder / "tokenizer" / name)
    # Without a config, transformers assumes an unbounded max length; CLIP's is 77.
    tokenizer_config = {"model_max_length": model.text_encoder.config.max_position_embeddings, "bos_token": "<|startoftext|>",
                        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    (folder / "tokenizer" / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": "0.42.1",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def save_ldm_checkpoint(model: BaseModel, path: Path, dtype: torch.dtype | None = None) -> Path:
    from safetensors.torch import save_file

    from .ldm_export import components_to_ldm

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(components_to_ldm(model.unet, model.vae, model.text_encoder, dtype), str(path))
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
