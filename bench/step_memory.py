"""What one steady training step would allocate on a GPU, projected from a CPU run (no GPU needed).

    python -m bench.step_memory --model sd15 --resolution 512 --rank 16 --precision bf16 [--gradient-checkpointing]

Runs our trainer on the CPU for two steps with the kernels a GPU run uses (the CPU-only
convolution, linear and attention kernels of core.cpu_kernels switched off) and records the second step
with the torch profiler's memory timeline: every tensor the step touches or creates (UNet
weights, adapters, their gradients and AdamW state, activations kept for the backward pass,
temporaries), by category. Its peak is what ``torch.cuda.max_memory_allocated`` would report
for that step, less what CUDA kernels allocate for themselves (cuDNN and attention
workspaces) and rounding by the caching allocator; the CUDA context (0.3-0.5 GiB) is never
in "allocated". The VAE and text encoder have been released after caching by then, as in the
CLI and bench runs. Prints one JSON line. fp16 shares bf16's byte sizes, so bf16 stands for both.

``--phase caching`` records the caching before the first step instead (VAE encodes of the images,
text-encoder passes over the captions): its "parameter" category is every weight on the device
then (the whole VAE and the text encoders; the UNet's training copy comes after), touched or not. ``--no-text-cache`` keeps the text encoders on the device and runs them every step;
``--optimizer adamw8bit`` measures bitsandbytes' 8-bit AdamW (it runs on the CPU too).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import warnings
from pathlib import Path

from bench.assets import ARCHITECTURES, build_data, build_model

# The columns of torch.profiler's exported memory timeline: a leading zero, then its categories.
TIMELINE_CATEGORIES = ("none", "parameter", "optimizer_state", "input", "temporary", "activation", "gradient", "autograd_detail", "unknown")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.step_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=list(ARCHITECTURES), default="tiny")
    parser.add_argument("--resolution", type=int, default=None, help="default: 64 for the tiny models, else the family's own (512, SDXL 1024)")
    parser.add_argument("--images", type=int, default=8, help="images in the synthetic dataset (cached before the steps)")
    parser.add_argument("--text-encoder", action="store_true", help="train text-encoder adapters too (turns the caption cache off)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--no-text-cache", action="store_true", help="run the frozen text encoders every step instead of caching their outputs")
    parser.add_argument("--optimizer", default="adamw", help="adamw, or adamw8bit (needs bitsandbytes)")
    parser.add_argument("--phase", default="step", choices=["step", "caching"], help="a steady training step, or the caching before the first one")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "lora_trainer_bench"))
    return parser.parse_args(argv)


def profiled(call, timeline_path: Path):
    """``call()`` under the profiler's memory timeline, written to ``timeline_path``; returns what ``call`` returns."""
    from torch.profiler import profile

    with profile(profile_memory=True, record_shapes=True, with_stack=True) as profiler:
        outcome = call()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated in favour of a CUDA-only recorder
        profiler.export_memory_timeline(str(timeline_path), device="cpu")
    return outcome


def timeline_peak(timeline_path: Path, weights_on_device: int | None = None) -> dict[str, int]:
    """The timeline's peak, total and by category. ``weights_on_device`` replaces its "parameter" category, which
    holds only the weights the profiled code touched, by every weight on the device at the time."""
    _, sizes = json.loads(timeline_path.read_text())
    if weights_on_device is not None:
        parameter = TIMELINE_CATEGORIES.index("parameter")
        sizes = [[weights_on_device if index == parameter else size for index, size in enumerate(row)] for row in sizes]
    peak_index = max(range(len(sizes)), key=lambda index: sum(sizes[index]))
    at_peak = dict(zip(TIMELINE_CATEGORIES, sizes[peak_index]))
    return {"total": sum(sizes[peak_index]), **{name: size for name, size in at_peak.items() if size}}


def profiled_step_memory(trainer, profiled_step: int, timeline_path: Path) -> dict[str, int]:
    """Runs ``trainer`` and returns the peak bytes of step ``profiled_step`` (0-based), total and by category."""
    train_step = trainer._train_step

    def step(step_index, parameters):
        if step_index != profiled_step:
            return train_step(step_index, parameters)
        return profiled(lambda: train_step(step_index, parameters), timeline_path)

    trainer._train_step = step
    trainer.run()
    return timeline_peak(timeline_path)


def profiled_caching_memory(trainer, timeline_path: Path) -> dict[str, int]:
    """Runs ``trainer`` and returns the peak bytes of its caching phase. Every weight on the device then counts,
    touched or not: the whole VAE (the decoder too), the text encoders, and the UNet if it were there already
    (the trainer caches before it puts the UNet's training copy on the device)."""
    from core import training

    fill = training.fill_caches
    weights = {}

    def fill_profiled(caches, models, *args, **kwargs):
        modules = [m for m in (models.unet, models.base.vae, *models.base.text_encoders) if m is not None]
        tensors = {t.data_ptr(): t for module in modules for t in [*module.parameters(), *module.buffers()]}
        weights["bytes"] = sum(t.numel() * t.element_size() for t in tensors.values())
        return profiled(lambda: fill(caches, models, *args, **kwargs), timeline_path)

    training.fill_caches = fill_profiled
    try:
        trainer.run()
    finally:
        training.fill_caches = fill
    return timeline_peak(timeline_path, weights["bytes"])


def main(argv=None) -> int:
    args = parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    family, full_size = ARCHITECTURES[args.model]
    resolution = args.resolution or (64 if not full_size else 1024 if family == "sdxl" else 512)
    model_dir = build_model(workdir, args.model)
    data_dir, _ = build_data(workdir, resolution, count=args.images)

    from core.cli import _quiet_libraries

    _quiet_libraries()
    from core.cpu_kernels import CpuKernelChoice
    from core.dataset import load_folder_dataset
    from core.devices import torch_dtype
    from core.lora import LoRASettings
    from core.model_loading import load_base_model
    from core.training import Trainer, TrainSettings

    settings = TrainSettings(
        steps=2 if args.phase == "step" else 1, learning_rate=1e-4, batch_size=args.batch_size, resolution=resolution, seed=0,
        lr_scheduler="constant", precision=args.precision, gradient_checkpointing=args.gradient_checkpointing, random_flip=False,
        cache_text=not args.no_text_cache, optimizer=args.optimizer,
    )
    trainer = Trainer(
        load_base_model(model_dir, dtype=torch_dtype(args.precision)), load_folder_dataset(data_dir),
        LoRASettings(rank=args.rank, train_text_encoder=args.text_encoder), settings, device="cpu", release_frozen_models=True,
        cpu_kernels=CpuKernelChoice(matmul_convolutions=False, onednn_linears=False, fp32_short_attention=False),
    )
    with tempfile.TemporaryDirectory() as scratch:
        timeline = Path(scratch) / "timeline.json"
        peak = profiled_step_memory(trainer, 1, timeline) if args.phase == "step" else profiled_caching_memory(trainer, timeline)
    print(json.dumps({
        "model": args.model, "phase": args.phase, "resolution": resolution, "batch_size": args.batch_size, "rank": args.rank,
        "precision": args.precision, "gradient_checkpointing": args.gradient_checkpointing, "text_encoder": args.text_encoder,
        "text_cache": not args.no_text_cache, "optimizer": args.optimizer, "images": args.images,
        "projected_peak_allocated_bytes": peak["total"],
        "at_peak_by_category_bytes": {name: size for name, size in peak.items() if name != "total"},
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
