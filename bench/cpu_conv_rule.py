"""Where unfold + matmul beats oneDNN: ``python -m bench.cpu_conv_rule`` (the data behind core.cpu_kernels' thresholds).

Times forward + input gradient of each SD1.5 convolution shape (256 and 512 px grids) both ways, in
fp32 and bf16, and prints one line per shape with its weight elements per output position, the
faster path and the threshold range the results allow. Machine-specific: rerun on another CPU.
"""
from __future__ import annotations

import argparse
import time

import torch

from core import cpu_kernels
from core.cpu_kernels import MatmulConv2d

# (input channels, output channels, kernel, grid) of the SD1.5 UNet at 256 and 512 px.
SHAPES = [
    (320, 320, 3, 64), (640, 640, 3, 32), (960, 640, 3, 16), (1280, 640, 3, 16), (1920, 640, 3, 16),
    (1280, 1280, 3, 16), (1920, 1280, 3, 16), (2560, 1280, 3, 16), (1280, 1280, 3, 8), (2560, 1280, 3, 8),
    (1280, 1280, 3, 4), (2560, 1280, 3, 4),
    (320, 320, 1, 32), (640, 640, 1, 16), (1280, 1280, 1, 16), (1280, 1280, 1, 8), (2560, 1280, 1, 8),
]


def seconds(conv: torch.nn.Conv2d, x: torch.Tensor, gradient: torch.Tensor, repeats: int) -> float:
    torch.autograd.grad(conv(x), x, gradient)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.autograd.grad(conv(x), x, gradient)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_conv_rule", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=1, help="images per call; the rule counts batch x grid positions")
    args = parser.parse_args()
    for dtype in (torch.float32, torch.bfloat16):
        bounds = {True: [0.0, float("inf")], False: [0.0, float("inf")]}
        for in_channels, out_channels, kernel, grid in SHAPES:
            conv = MatmulConv2d(in_channels, out_channels, kernel, padding=kernel // 2).to(dtype).requires_grad_(False)
            x = torch.randn(args.batch_size, in_channels, grid, grid, dtype=dtype, requires_grad=True)
            gradient = torch.randn(args.batch_size, out_channels, grid, grid, dtype=dtype)
            timings = {}
            for path, threshold in (("onednn", float("inf")), ("matmul", 0.0)):
                cpu_kernels.MATMUL_THRESHOLDS = {key: threshold for key in cpu_kernels.MATMUL_THRESHOLDS}
                timings[path] = seconds(conv, x, gradient, args.repeats)
            per_position = conv.weight.numel() / (args.batch_size * grid**2)
            faster = min(timings, key=timings.get)
            low, high = bounds[kernel == 1]
            bounds[kernel == 1] = [max(low, per_position), high] if faster == "onednn" else [low, min(high, per_position)]
            print(f"{str(dtype)[6:]:8} {in_channels:4}->{out_channels:4} {kernel}x{kernel} {grid:2}x{grid:<2} "
                  f"weight/position {per_position:9.0f}  oneDNN {timings['onednn'] * 1e3:6.1f} ms  "
                  f"matmul {timings['matmul'] * 1e3:6.1f} ms  -> {faster}", flush=True)
        for pointwise, (low, high) in bounds.items():
            print(f"{str(dtype)[6:]} {'1x1' if pointwise else '3x3'}: threshold between {low:.0f} and {high:.0f}"
                  + ("" if low < high else " (shapes disagree: pick by whole-model runs)"))


if __name__ == "__main__":
    main()
