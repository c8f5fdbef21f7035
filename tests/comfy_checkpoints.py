"""Build a random-weight, full-size SDXL or SD2.x single-file checkpoint with ComfyUI's own code.

Not a test module: a standalone script for ComfyUI's Python, so that tests can obtain a checkpoint
that no code of this project wrote. The components are made by diffusers (UNet, VAE) and
transformers (text towers) from the published configs in core/configs, with random fp16 weights,
then loaded with ComfyUI's own loaders and written with ``comfy.sd.save_checkpoint`` (what the
Save Checkpoint node calls):

    COMFYUI_DIR=/tmp/comfyui /tmp/comfyvenv/bin/python tests/comfy_checkpoints.py sdxl OUT.safetensors
    COMFYUI_DIR=/tmp/comfyui /tmp/comfyvenv/bin/python tests/comfy_checkpoints.py sd2  OUT.safetensors

ComfyUI's Python needs diffusers for this (``pip install diffusers`` into its venv, torch pinned).
Modules are built on the meta device and their weights drawn directly in fp16, so no fp32 copy is
ever held. Measured on 2 CPU cores: SDXL 6.94 GB written in about 75 s, peak RSS 11.7 GiB (the UNet is
held twice while ComfyUI copies it into its own model); SD2.x 2.61 GB in about 30 s, peak RSS 4.5 GiB.
Norm layers get weight 1 and bias 0, so ComfyUI's SD2 v-prediction rule (spread of
output_blocks.11.1.transformer_blocks.0.norm1.bias) takes the SD2.x file as an epsilon model.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent.parent / "core" / "configs"
SEED = 1234
WEIGHT_STD = 0.02  # for every weight and bias that is not a norm's; norms get weight 1, bias 0


def config(name: str) -> dict:
    return json.loads((CONFIGS / name).read_text())


def import_comfy():
    """Import ComfyUI from COMFYUI_DIR, on the CPU (its argument parser reads --cpu from sys.argv)."""
    comfy_dir = os.environ.get("COMFYUI_DIR")
    if not comfy_dir:
        raise SystemExit("Set COMFYUI_DIR to a ComfyUI checkout (and run with its Python).")
    sys.path.insert(0, comfy_dir)
    saved, sys.argv = sys.argv, [sys.argv[0], "--cpu"]
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.sd  # noqa: F401

    sys.argv = saved
    return comfy


def random_state(make_module, generator, dtype) -> dict:
    """The state dict ``make_module()`` would have, filled with random ``dtype`` values (module built on meta)."""
    import torch

    with torch.device("meta"):
        module = make_module()
    norms = {name for name, m in module.named_modules() if isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm))}
    state = {}
    for key, meta in module.state_dict().items():
        owner, _, leaf = key.rpartition(".")
        tensor = torch.empty(meta.shape, dtype=dtype if meta.is_floating_point() else meta.dtype)
        if not meta.is_floating_point():
            tensor.zero_()
        elif owner in norms:
            tensor.fill_(1.0 if leaf == "weight" else 0.0)
        else:
            tensor.normal_(0.0, WEIGHT_STD, generator=generator)
        state[key] = tensor
    del module
    return state


def clip_state(text_config: dict, generator, dtype, layers: int | None = None, with_projection: bool = False) -> dict:
    """A transformers CLIP text tower's state dict, keys with the ``text_model.`` level ComfyUI's detection needs
    (transformers 5's CLIPTextModel drops it; the projection model keeps it)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    settings = {k: v for k, v in text_config.items() if k not in ("architectures", "model_type")}
    if layers is not None:
        settings["num_hidden_layers"] = layers
    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    clip_config = CLIPTextConfig(**settings)
    state = random_state(lambda: model_class(clip_config), generator, dtype)
    return {k if k.startswith(("text_model.", "text_projection")) else f"text_model.{k}": v for k, v in state.items() if not k.endswith("position_ids")}


def unet_state(name: str, generator, dtype) -> dict:
    from diffusers import UNet2DConditionModel

    unet_config = config(name)
    return random_state(lambda: UNet2DConditionModel.from_config(unet_config), generator, dtype)


def vae_state(name: str, generator, dtype) -> dict:
    from diffusers import AutoencoderKL

    vae_config = config(name)
    return random_state(lambda: AutoencoderKL.from_config(vae_config), generator, dtype)


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def build(family: str, output: Path) -> None:
    import torch

    comfy = import_comfy()
    import comfy.sd

    dtype = torch.float16
    options = {"dtype": dtype}
    generator = torch.Generator().manual_seed(SEED)
    started = time.perf_counter()

    # Text encoders first (smaller), then the UNet, each handed to ComfyUI and dropped at once.
    if family == "sdxl":
        clip_l = clip_state(config("sd15_text_encoder.json"), generator, dtype)
        clip_g = clip_state(config("sdxl_text_encoder_2.json"), generator, dtype, with_projection=True)
        clip = comfy.sd.load_text_encoder_state_dicts([clip_l, clip_g], model_options=options)
        del clip_l, clip_g
        vae_sd = vae_state("sdxl_vae.json", generator, dtype)
        unet_sd = unet_state("sdxl_unet.json", generator, dtype)
    elif family == "sd2":
        # SD2.x files carry all 24 OpenCLIP-H blocks (the config's 23 are those SD2 conditions on).
        clip_h = clip_state(config("sd2_text_encoder.json"), generator, dtype, layers=24)
        clip = comfy.sd.load_text_encoder_state_dicts([clip_h], model_options=options)
        del clip_h
        vae_sd = vae_state("sd15_vae.json", generator, dtype)
        unet_sd = unet_state("sd2_unet.json", generator, dtype)
    else:
        raise SystemExit(f"Unknown family {family!r}: use sdxl or sd2.")
    built = time.perf_counter()

    vae = comfy.sd.VAE(sd=vae_sd, dtype=dtype)
    del vae_sd
    model = comfy.sd.load_diffusion_model_state_dict(unet_sd, model_options=options)
    del unet_sd
    if model is None:
        raise SystemExit("ComfyUI did not recognise the diffusers UNet.")
    loaded = time.perf_counter()
    print(f"ComfyUI model class: {type(model.model).__name__}, model type: {model.model.model_type.name}", flush=True)

    output.parent.mkdir(parents=True, exist_ok=True)
    temp = output.with_name(output.name + ".tmp.safetensors")
    comfy.sd.save_checkpoint(str(temp), model, clip, vae)
    del model, clip, vae
    if family == "sd2":
        rename_sd2_text_tower(temp)
    os.replace(temp, output)
    done = time.perf_counter()
    size = output.stat().st_size
    print(
        f"{family}: {output} {size / 1e9:.2f} GB ({size} bytes); random components {built - started:.1f} s, "
        f"ComfyUI load {loaded - built:.1f} s, save {done - loaded:.1f} s, total {done - started:.1f} s; peak RSS {rss_gib():.1f} GiB",
        flush=True,
    )


def rename_sd2_text_tower(path: Path) -> None:
    """Some ComfyUI versions' save_checkpoint wrote SD2's OpenCLIP-H tower under ``clip_l.`` where SD2 files (and
    ComfyUI's own loader) put ``cond_stage_model.model.``; rename such keys. (v0.8.x at 618b803 writes
    ``cond_stage_model.model.`` itself, so this does nothing there.)"""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
    if not any(k.startswith("clip_l.") for k in keys):
        return
    from safetensors.torch import load_file

    state = load_file(str(path))  # memory-mapped: untouched tensors cost no RAM
    renamed = {("cond_stage_model.model." + k[len("clip_l."):] if k.startswith("clip_l.") else k): v for k, v in state.items()}
    fixed = path.with_name(path.name + ".renamed")
    save_file(renamed, str(fixed), metadata=metadata)
    del state, renamed
    os.replace(fixed, path)
    print(f"renamed {sum(k.startswith('clip_l.') for k in keys)} clip_l.* keys to cond_stage_model.model.*", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("sdxl", "sd2"):
        raise SystemExit(f"usage: {Path(sys.argv[0]).name} {{sdxl|sd2}} OUTPUT.safetensors")
    build(sys.argv[1], Path(sys.argv[2]))
