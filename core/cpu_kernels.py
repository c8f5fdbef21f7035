"""Faster CPU kernels for the frozen parts of a model while it trains.

oneDNN, torch's CPU convolution backend, reorders a convolution's weights into
its blocked layout on every call. That costs little where the spatial grid is
large, but in an SD UNet's 8x8 and 4x4 levels (1280-2560 channels) the reorder
outweighs the arithmetic: a 2560->1280 3x3 convolution on a 4x4 grid runs at
15-20 GFLOP/s there, against ~90 as unfold + one matrix multiply. These
convolutions are rewritten as that multiply, forward and backward, for the
length of a run; the large-grid ones keep oneDNN, which wins there.
Measured with ``python -m bench --variants default,onednn-convs``.

Matrix multiplies go the other way in fp32: torch sends them to MKL, whose
kernels are slow for the short sides an SD UNet has at 256 px (16-256 tokens
or grid positions), while oneDNN's fp32 linear, at full fp32 precision, runs
those 1.3-1.75x faster. Frozen fp32 linears, and the fp32 multiplies of the
convolutions above, use oneDNN while training on the CPU (bf16 multiplies
already go to oneDNN). Measured with ``--variants default,mkl-linears``.

Short attentions go to fp32 in bf16 runs: torch's fused CPU attention kernel is 1.1-3x slower in bf16
than in fp32 while a query's and key's positions multiply to 256 x 256 or fewer (every attention of
SDXL at 256 px, the 16x16 and 8x8 levels at 512 px), and faster above that. Those attentions take
their bf16 inputs to fp32, which is also the more exact product. Measured with
``--variants default,bf16-attention``.
"""
from __future__ import annotations

import functools
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch.overrides import TorchFunctionMode


@dataclass(frozen=True)
class CpuKernelChoice:
    """Which of this module's kernels a CPU run uses: all of them, unless a benchmark turns one off to measure it."""

    matmul_convolutions: bool = True
    onednn_linears: bool = True
    fp32_short_attention: bool = True


ALL_KERNELS = CpuKernelChoice()

# Weight elements per output position above which unfold + matmul beats oneDNN, by compute dtype and
# by whether the kernel is 1x1 (no unfold to pay for); ``python -m bench.cpu_conv_rule`` measures
# forward + input gradient of every SD1.5 convolution shape at 256 and 512 px. bf16 3x3 switches
# between 57.6k (oneDNN faster) and 86.4k (matmul faster); fp32 3x3 is a tie from 43k to 58k between
# runs, so its threshold sits there; 1x1 kernels favour the matmul from about 1.6k (fp32) or less (bf16).
MATMUL_THRESHOLDS = {
    (torch.float32, False): 5e4, (torch.float32, True): 4e3,
    (torch.bfloat16, False): 7e4, (torch.bfloat16, True): 1e3,
}


# Query positions x key positions up to which a bf16 attention runs faster in fp32 (torch 2.13 on AVX512-BF16:
# fp32 wins 1.1-3x from 64x64 to 256x256 and loses 10-20 % at 512x512 and 1024x77).
SHORT_ATTENTION_POSITIONS = 256 * 256

# oneDNN's call costs ~100 us more than MKL's (forward + backward), which the faster kernel repays from about
# 100k weights (64 tokens by 320x320 breaks even; 64 by 640x640 is 20 % faster); smaller layers keep MKL.
ONEDNN_LINEAR_MIN_WEIGHTS = 100_000


@functools.lru_cache(maxsize=1)
def onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _onednn_linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(input, weight, bias, "none", [], "")


class _FrozenLinear(torch.autograd.Function):
    """``input @ weight.T + bias`` by oneDNN for a weight that is not trained: the backward gives the input's gradient only."""

    @staticmethod
    def forward(ctx, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return _onednn_linear(input, weight, bias)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (weight,) = ctx.saved_tensors
        return _onednn_linear(grad_output, weight.t(), None), None, None


def _frozen_fp32_on_cpu(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return (
        input.device.type == "cpu" and input.dtype == weight.dtype == torch.float32 and not weight.requires_grad
        and (bias is None or not bias.requires_grad) and not torch.is_autocast_enabled("cpu") and onednn_linear_available()
    )


class OneDNNLinear(torch.nn.Linear):
    """A frozen fp32 ``Linear`` on the CPU computed by oneDNN instead of MKL (1.3-1.75x faster below ~256 tokens)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if _frozen_fp32_on_cpu(input, self.weight, self.bias):
            return _FrozenLinear.apply(input, self.weight, self.bias)
        return super().forward(input)


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
        if self._pointwise():
            columns = input.flatten(2)
        else:
            columns = F.unfold(input, self.kernel_size, self.dilation, self.padding, self.stride)
        # One 2-D multiply over the whole batch: a broadcast (batched) multiply repacks the weights once per
        # image, which made batch 2 in bf16 three times slower than oneDNN.
        columns = columns[0] if batch == 1 else columns.transpose(0, 1).reshape(columns.shape[1], -1)
        weight = weight.reshape(weight.shape[0], -1)
        if _frozen_fp32_on_cpu(columns, weight, bias):
            output = _FrozenLinear.apply(columns.t(), weight, bias)  # positions x out channels
            return output.view(batch, height, width, -1).permute(0, 3, 1, 2).contiguous()
        output = weight @ columns
        if bias is not None:
            output = output + bias[:, None]
        return output.view(weight.shape[0], batch, height, width).transpose(0, 1).contiguous()  # no copy at batch 1

    def _output_size(self, input: torch.Tensor) -> tuple[int, int]:
        return tuple(
            (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
            for size, pad, dilation, kernel, stride in zip(input.shape[-2:], self.padding, self.dilation, self.kernel_size, self.stride)
        )

    def _use_matmul(self, input: torch.Tensor, weight: torch.Tensor) -> bool:
        # Decided once per input shape and dtype: on small models this check cost 3-4 % of a step.
        device = input.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype
        key = (input.shape, device, dtype, weight.requires_grad)
        choices = self.__dict__.setdefault("_matmul_choices", {})
        choice = choices.get(key)
        if choice is None:
            choice = choices[key] = self._matmul_is_faster(input, weight, dtype)
        return choice

    def _matmul_is_faster(self, input: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> bool:
        if (
            weight.requires_grad or self.groups != 1 or self.padding_mode != "zeros" or isinstance(self.padding, str)
            or input.device.type != "cpu" or input.dim() != 4
        ):
            return False
        threshold = MATMUL_THRESHOLDS.get((dtype, self._pointwise()))
        height, width = self._output_size(input)
        return threshold is not None and weight.numel() >= threshold * input.shape[0] * height * width

    def _pointwise(self) -> bool:
        return self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)


def _short_low_precision_attention(args: tuple, kwargs: dict) -> bool:
    query, key = args[0], args[1]
    return (
        query.device.type == "cpu" and query.dtype in (torch.bfloat16, torch.float16)
        and query.shape[-2] * key.shape[-2] <= SHORT_ATTENTION_POSITIONS
        and kwargs.get("attn_mask", args[3] if len(args) > 3 else None) is None
    )


class _ShortAttentionInFp32(TorchFunctionMode):
    """Runs short low-precision CPU attentions in fp32 (outside autocast, which would cast them back)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and _short_low_precision_attention(args, kwargs):
            query, key, value, *rest = args
            with torch.autocast("cpu", enabled=False):
                output = func(query.float(), key.float(), value.float(), *rest, **kwargs)
            return output.to(query.dtype)
        return func(*args, **kwargs)


class Fp32ShortAttention(Attention):
    """A diffusers ``Attention`` whose short bf16 attention products run in fp32 on the CPU."""

    def forward(self, *args, **kwargs):
        with _ShortAttentionInFp32():
            return super().forward(*args, **kwargs)


def _large_enough_for_matmul(module: torch.nn.Conv2d) -> bool:
    """Whether the weights pass a threshold for even a one-position output; smaller layers stay plain ``Conv2d``."""
    pointwise = MatmulConv2d._pointwise(module)
    return module.weight.numel() >= min(threshold for (_, is_pointwise), threshold in MATMUL_THRESHOLDS.items() if is_pointwise == pointwise)


@contextmanager
def _swap_class(modules: list[torch.nn.Module], replacement: type, instance_state: tuple[str, ...] = ()) -> Iterator[int]:
    """Within the block each module is a ``replacement`` (a subclass of its own class); yields how many.

    Afterwards each gets its own class back, without the ``instance_state`` attributes the replacement kept.
    """
    originals = [type(module) for module in modules]
    for module in modules:
        module.__class__ = replacement
    try:
        yield len(modules)
    finally:
        for module, original in zip(modules, originals):
            module.__class__ = original
            for name in instance_state:
                module.__dict__.pop(name, None)


def onednn_linears(model: torch.nn.Module) -> AbstractContextManager[int]:
    """Within the block, the model's large frozen ``Linear`` layers use oneDNN whenever they run in fp32 on the CPU; yields how many."""
    swapped = [
        module for module in model.modules()
        if type(module) is torch.nn.Linear and not module.weight.requires_grad and module.weight.numel() >= ONEDNN_LINEAR_MIN_WEIGHTS
    ] if onednn_linear_available() else []
    return _swap_class(swapped, OneDNNLinear)


def matmul_convolutions(model: torch.nn.Module) -> AbstractContextManager[int]:
    """Within the block, the model's plain ``Conv2d`` layers choose unfold + matmul where it is faster; yields how many."""
    swapped = [module for module in model.modules() if type(module) is torch.nn.Conv2d and _large_enough_for_matmul(module)]
    return _swap_class(swapped, MatmulConv2d, instance_state=("_matmul_choices",))


def fp32_short_attentions(model: torch.nn.Module) -> AbstractContextManager[int]:
    """Within the block, the model's diffusers attentions run short bf16 products in fp32 on the CPU; yields how many."""
    return _swap_class([module for module in model.modules() if type(module) is Attention], Fp32ShortAttention)


def enter_training_kernels(stack: ExitStack, unet: torch.nn.Module, text_encoders: list, dtype: torch.dtype,
                           choice: CpuKernelChoice = ALL_KERNELS) -> None:
    """Enters on ``stack`` the kernels a CPU run trains with (``choice`` leaves some out): matmul convolutions in the
    UNet, oneDNN linears in the UNet and text encoders, and short attentions in fp32 when the run is not fp32."""
    if choice.matmul_convolutions:
        stack.enter_context(matmul_convolutions(unet))
    if choice.onednn_linears:
        for model in dict.fromkeys([unet, *text_encoders]):
            stack.enter_context(onednn_linears(model))
    if choice.fp32_short_attention and dtype != torch.float32:
        stack.enter_context(fp32_short_attentions(unet))
