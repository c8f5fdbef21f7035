"""Faster CPU kernels for the frozen parts of a model while it trains.

oneDNN, torch's CPU convolution backend, reorders a convolution's weights into
its blocked layout on every call. That costs little where the spatial grid is
large, but in an SD UNet's 8x8 and 4x4 levels (1280-2560 channels) the reorder
outweighs the arithmetic: a 2560->1280 3x3 convolution on a 4x4 grid runs at
15-20 GFLOP/s there, against ~90 as unfold + one matrix multiply. These
convolutions are rewritten as that multiply, forward and backward, for the
length of a run; the large-grid ones keep oneDNN, which wins there.
Measured with ``python -m bench --variants default,onednn-convs``.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F

# Weight elements per output position above which unfold + matmul beats oneDNN
# (measured on SD1.5's convolutions at 256 and 512 px, fp32 and bf16; anything from 5e3 to 1e5 was
# within noise of the best, 2e4 sits in the middle).
MATMUL_WEIGHT_PER_POSITION = 2e4


class MatmulConv2d(torch.nn.Conv2d):
    """A frozen ``Conv2d`` computed as unfold + matrix multiply when its weights dwarf its output grid."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if not self._use_matmul(input, weight):
            return super()._conv_forward(input, weight, bias)
        if torch.is_autocast_enabled(input.device.type):
            # F.conv2d is on autocast's lower-precision list; cast before unfold so the 9x larger columns are cast never.
            dtype = torch.get_autocast_dtype(input.device.type)
            input, weight = input.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        batch, height, width = input.shape[0], *self._output_size(input)
        if self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0):
            columns = input.flatten(2)
        else:
            columns = F.unfold(input, self.kernel_size, self.dilation, self.padding, self.stride)
        output = weight.reshape(weight.shape[0], -1) @ columns
        if bias is not None:
            output = output + bias[:, None]
        return output.view(batch, weight.shape[0], height, width)

    def _output_size(self, input: torch.Tensor) -> tuple[int, int]:
        return tuple(
            (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
            for size, pad, dilation, kernel, stride in zip(input.shape[-2:], self.padding, self.dilation, self.kernel_size, self.stride)
        )

    def _use_matmul(self, input: torch.Tensor, weight: torch.Tensor) -> bool:
        if (
            weight.requires_grad or self.groups != 1 or self.padding_mode != "zeros" or isinstance(self.padding, str)
            or input.device.type != "cpu" or input.dim() != 4
        ):
            return False
        height, width = self._output_size(input)
        return weight.numel() >= MATMUL_WEIGHT_PER_POSITION * input.shape[0] * height * width


@contextmanager
def matmul_convolutions(model: torch.nn.Module) -> Iterator[int]:
    """Within the block, the model's plain ``Conv2d`` layers choose unfold + matmul where it is faster; yields how many."""
    swapped = [module for module in model.modules() if type(module) is torch.nn.Conv2d]
    for module in swapped:
        module.__class__ = MatmulConv2d
    try:
        yield len(swapped)
    finally:
        for module in swapped:
            module.__class__ = torch.nn.Conv2d
