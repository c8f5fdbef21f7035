"""Worker: run our trainer once and print one JSON line (run in its own process for a clean peak RSS)."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

PROCESS_START = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--resolution", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--targets", default="attention")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument("--optimizer", default="adamw")
    parser.add_argument("--device", default=None)
    parser.add_argument("--onednn-convs", action="store_true", help="keep every convolution on oneDNN (measures core.cpu_kernels)")
    parser.add_argument("--mkl-linears", action="store_true", help="keep fp32 linears on MKL (measures core.cpu_kernels)")
    parser.add_argument("--bf16-attention", action="store_true", help="keep every bf16 attention in bf16 (measures core.cpu_kernels)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet step (core.compiling)")
    parser.add_argument("--buckets", action="store_true", help="aspect-ratio buckets over the same images at three aspect ratios")
    args = parser.parse_args()

    from core.cli import _quiet_libraries

    _quiet_libraries()
    from bench.measure import StepPhases, peak_memory_bytes, steady_seconds
    import torch

    from core.cpu_kernels import CpuKernelChoice
    from core.dataset import load_folder_dataset
    from core.devices import torch_dtype, usable_device
    from core.lora import LoRASettings
    from core.model_loading import load_base_model
    from core.training import STEP_PHASES, Trainer, TrainSettings

    step_ends: list[float] = []
    trainer = None
    step_phases = StepPhases(lambda: trainer.timer.seconds)

    def record(event):
        if event.phase == "train":
            step_ends.append(time.perf_counter())
            step_phases.step_ended()

    device = usable_device(args.device)
    dtype = torch_dtype(args.precision) if device.type == "cpu" else torch.float32
    base = load_base_model(args.model_dir, dtype=dtype)
    if args.buckets:
        from bench.assets import build_aspect_data

        args.data = build_aspect_data(Path(args.data), args.resolution)
    dataset = load_folder_dataset(args.data)
    settings = TrainSettings(
        steps=args.steps, learning_rate=1e-4, batch_size=args.batch_size, resolution=args.resolution, seed=0,
        lr_scheduler="constant", precision=args.precision, gradient_checkpointing=args.gradient_checkpointing,
        cache_latents=not args.no_cache, cache_text=not args.no_cache, random_flip=False, optimizer=args.optimizer,
        compile=args.compile, bucket=args.buckets,
    )
    trainer = Trainer(
        base, dataset, LoRASettings(rank=args.rank, targets=args.targets), settings,
        device=device, progress=record, release_frozen_models=True,
        cpu_kernels=CpuKernelChoice(
            matmul_convolutions=not args.onednn_convs, onednn_linears=not args.mkl_linears, fp32_short_attention=not args.bf16_attention,
        ),
    )
    result = trainer.run()
    step_seconds = [b - a for a, b in zip(step_ends, step_ends[1:])]
    steady_from = max(0, args.warmup - 1)
    per_step = steady_seconds(step_seconds, steady_from)
    print(json.dumps({
        "trainer": "ours",
        "seconds_per_step": per_step,
        "images_per_second": args.batch_size / per_step if per_step else None,
        "seconds_to_first_step": step_ends[0] - PROCESS_START if step_ends else None,
        "peak_memory_bytes": peak_memory_bytes(trainer.device.type),
        "phase_seconds_per_step": step_phases.steady_medians(steady_from, STEP_PHASES),
        "phase_seconds_once": {k: round(v, 3) for k, v in result.phase_seconds.items() if k not in STEP_PHASES},
        "precision": trainer.precision,
        "compiled_graphs": result.compiled_graphs,
    }))


if __name__ == "__main__":
    main()
