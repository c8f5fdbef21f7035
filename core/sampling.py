"""Preview images during training, from the components already in memory.

A diffusers StableDiffusionPipeline is assembled around the very UNet (with
its live adapters), VAE and text encoder the trainer holds, so no second copy
of any weight is made. Sampling draws only from its own seeded generator and
puts the global torch RNG back afterwards, so a run with previews trains the
same LoRA as one without.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch


@contextmanager
def eval_mode(*modules: torch.nn.Module):
    """Switch modules to eval (no dropout) and restore each one's previous mode."""
    modes = [(module, module.training) for module in modules]
    try:
        for module, _ in modes:
            module.eval()
        yield
    finally:
        for module, was_training in modes:
            module.train(was_training)


def preview_scheduler(noise_scheduler):
    """Euler (a common ComfyUI default) built from the base model's own noise schedule."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler.from_config(noise_scheduler.config)


def generate_previews(
    unet,
    vae,
    text_encoder,
    tokenizer,
    noise_scheduler,
    prompts: list[str],
    seed: int,
    steps: int,
    size: int,
    guidance: float,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
):
    """One PIL image per prompt from SD1.x/SD2.x-style components, each from generator seed ``seed + index``."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=preview_scheduler(noise_scheduler), safety_checker=None, feature_extractor=None,
        image_encoder=None, requires_safety_checker=False,
    )
    return pipeline_previews(pipe, [tokenizer], [unet, vae, text_encoder], prompts, seed, steps, size, guidance, device, dtype)


def family_previews(family, unet, base, text_encoders, prompts, seed, steps, size, guidance, device, dtype=torch.float32):
    """Previews through the family's own pipeline, around the very modules the trainer holds."""
    pipe = family.preview_pipeline(unet, base, text_encoders, preview_scheduler(base.noise_scheduler))
    return pipeline_previews(pipe, base.tokenizers, [unet, base.vae, *text_encoders], prompts, seed, steps, size, guidance, device, dtype)


def training_previews(family, models, settings, device: torch.device, dtype: torch.dtype):
    """The run's preview prompts with its current adapters; the VAE and text encoders visit the device only for this."""
    base, encoders = models.base, models.text_encoders
    prompts = [p for p in settings.sample_prompts if p.strip()]
    moved = [m for m in (base.vae, *encoders) if next(m.parameters()).device != device]
    for module in moved:
        module.to(device)
    try:
        return family_previews(
            family, models.unet, base, encoders, prompts, seed=settings.sample_seed, steps=settings.sample_steps,
            size=settings.sample_size or settings.resolution, guidance=settings.sample_guidance, device=device, dtype=dtype,
        )
    finally:
        for module in moved:
            models.offload(module)


def pipeline_previews(pipe, tokenizers, modules, prompts, seed, steps, size, guidance, device, dtype):
    pipe.set_progress_bar_config(disable=True)
    # Tokenizers read from bare vocab/merges files have no length limit; the pipeline needs CLIP's (77).
    saved_lengths = [tokenizer.model_max_length for tokenizer in tokenizers]
    encoders = [m for m in modules if hasattr(getattr(m, "config", None), "max_position_embeddings")]
    for tokenizer, encoder in zip(tokenizers, encoders):
        tokenizer.model_max_length = min(tokenizer.model_max_length, encoder.config.max_position_embeddings)
    rng_state = torch.random.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    images = []
    autocast = torch.autocast(device_type=device.type, dtype=dtype) if dtype != torch.float32 else _nothing()
    try:
        with eval_mode(*modules), torch.no_grad(), autocast:
            for index, prompt in enumerate(prompts):
                generator = torch.Generator("cpu").manual_seed(seed + index)
                result = pipe(
                    prompt, height=size, width=size, num_inference_steps=steps, guidance_scale=guidance,
                    generator=generator, output_type="pil",
                )
                images.append(result.images[0])
    finally:
        for tokenizer, length in zip(tokenizers, saved_lengths):
            tokenizer.model_max_length = length
        torch.random.set_rng_state(rng_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)
    return images


@contextmanager
def _nothing():
    yield


def save_previews(images, folder: Path, step: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(images):
        path = folder / f"step-{step:06d}-{index}.png"
        image.save(path)
        paths.append(path)
    return paths
