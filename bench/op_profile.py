"""Where a UNet training step's time goes, by operator family, in each precision (CPU).

    python -m bench.op_profile --model sd15 --resolution 256 --precisions fp32,bf16

Builds the model if needed (random weights), puts rank-4 adapters on the attention projections
with the CPU kernels a training run uses (``core.cpu_kernels.enter_training_kernels``), and
profiles one forward + backward under each precision's autocast after two warm-up steps. Prints one JSON line per precision: the step's
wall seconds (mean of two unprofiled steps) and the profiler's self CPU seconds of the matrix
multiplies, convolutions, attention, casts and copies, norms, and every other operator.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench.assets import ARCHITECTURES, build_model

FAMILIES = {
    "matmul": ("mm", "addmm", "bmm", "baddbmm", "mkldnn_linear", "_linear_pointwise"),
    "convolution": ("mkldnn_convolution", "convolution_backward", "im2col", "col2im", "_slow_conv2d_forward", "_slow_conv2d_backward"),
    "attention": ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention_for_cpu_backward"),
    "casts and copies": ("copy_", "_to_copy", "clone"),
    "norms": ("native_group_norm", "native_group_norm_backward", "native_layer_norm", "native_layer_norm_backward"),
}
FAMILY_OF = {op: family for family, ops in FAMILIES.items() for op in ops}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.op_profile", description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=list(ARCHITECTURES), default="tiny")
    parser.add_argument("--resolution", type=int, default=None, help="default: 64 for the tiny models, else 256")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "lora_trainer_bench"))
    return parser.parse_args(argv)


def profile_step(unet, inputs, autocast: bool) -> tuple[float, dict[str, float]]:
    import torch
    from torch.profiler import profile

    def step():
        with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            output = unet(*inputs["args"], **inputs["kwargs"], return_dict=False)[0]
        torch.nn.functional.mse_loss(output.float(), inputs["target"]).backward()
        for parameter in unet.parameters():
            parameter.grad = None

    step(), step()
    with profile() as profiler:
        step()
    seconds: collections.Counter = collections.Counter()
    for event in profiler.key_averages():
        namespace, _, name = event.key.partition("::")
        if namespace in ("aten", "mkldnn"):  # oneDNN's linear is mkldnn::_linear_pointwise
            seconds[FAMILY_OF.get(name, "other")] += event.self_cpu_time_total / 1e6
    start = time.perf_counter()
    step(), step()
    return (time.perf_counter() - start) / 2, dict(seconds)


def main(argv=None) -> int:
    args = parse_args(argv)
    family, full_size = ARCHITECTURES[args.model]
    resolution = args.resolution or (256 if full_size else 64)
    model_dir = build_model(Path(args.workdir), args.model)

    from core.cli import _quiet_libraries

    _quiet_libraries()
    import torch

    from core import lora as lora_lib
    from core.cpu_kernels import enter_training_kernels
    from core.devices import keep_freed_memory_for_reuse
    from core.model_loading import load_base_model

    keep_freed_memory_for_reuse()
    for precision in args.precisions.split(","):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        unet = load_base_model(model_dir, dtype=dtype).unet
        lora_lib.inject(unet, lora_lib.target_pattern("attention"), 4, 4, 0.0, "UNet")
        for parameter in unet.parameters():
            if parameter.requires_grad:
                parameter.data = parameter.data.float()
        unet.train()
        generator = torch.Generator().manual_seed(0)
        latents = torch.randn(1, unet.config.in_channels, resolution // 8, resolution // 8, generator=generator)
        text = torch.randn(1, 77, unet.config.cross_attention_dim, generator=generator, dtype=dtype)
        kwargs = {}
        if family == "sdxl":
            kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(1, 1280, generator=generator, dtype=dtype),
                                           "time_ids": torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], dtype=dtype)}
        inputs = {"args": (latents.to(dtype), torch.tensor([500]), text), "kwargs": kwargs, "target": latents}
        with ExitStack() as kernels:
            enter_training_kernels(kernels, unet, [], dtype)
            wall, by_family = profile_step(unet, inputs, autocast=precision == "bf16")
        print(json.dumps({"model": args.model, "resolution": resolution, "precision": precision, "step_seconds": round(wall, 3),
                          "profiled_self_seconds": {name: round(value, 3) for name, value in sorted(by_family.items(), key=lambda kv: -kv[1])}}),
              flush=True)
        del unet
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
