"""core.cpu_kernels: frozen convolutions as unfold + matmul and fp32 linears on oneDNN, same numbers, only where it pays, undone after."""
import pytest
import torch

from core import cpu_kernels
from core.cpu_kernels import CpuKernelChoice, MatmulConv2d, matmul_convolutions
from core.lora import LoRASettings
from core.training import Trainer, TrainSettings

CONVS = [
    dict(in_channels=6, out_channels=5, kernel_size=3, padding=1),
    dict(in_channels=6, out_channels=5, kernel_size=3, padding=1, stride=2),
    dict(in_channels=6, out_channels=5, kernel_size=1),
    dict(in_channels=6, out_channels=5, kernel_size=3, padding=2, dilation=2, bias=False),
    dict(in_channels=6, out_channels=5, kernel_size=(3, 1), padding=(1, 0)),
]


def _force_matmul(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "MATMUL_THRESHOLDS", {key: 0 for key in cpu_kernels.MATMUL_THRESHOLDS})


def _pair(make, replacement):
    """Two frozen layers with the same weights, the second turned into ``replacement``."""
    torch.manual_seed(0)
    plain, rewritten = make().requires_grad_(False), make().requires_grad_(False)
    rewritten.load_state_dict(plain.state_dict())
    rewritten.__class__ = replacement
    return plain, rewritten


def _outputs_and_input_gradients(layers, x):
    outputs, gradients = [], []
    for layer in layers:
        leaf = x.clone().requires_grad_(True)
        out = layer(leaf)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        outputs.append(out)
        gradients.append(leaf.grad)
    return outputs, gradients


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("config", CONVS)
def test_matmul_convolution_matches_onednn_forward_and_input_gradient(config, batch, monkeypatch):
    _force_matmul(monkeypatch)
    onednn_calls = _count_onednn_calls(monkeypatch)
    plain, rewritten = _pair(lambda: torch.nn.Conv2d(**config), MatmulConv2d)
    x = torch.randn(batch, 6, 9, 7)
    outputs, gradients = _outputs_and_input_gradients((plain, rewritten), x)
    assert rewritten._use_matmul(x, rewritten.weight)
    assert len(onednn_calls) == (2 if cpu_kernels.onednn_linear_available() else 0), "fp32: the multiply and its gradient on oneDNN"
    assert outputs[0].shape == outputs[1].shape and outputs[1].is_contiguous()
    assert (outputs[0] - outputs[1]).abs().max() <= 1e-5
    assert (gradients[0] - gradients[1]).abs().max() <= 1e-5


def test_matmul_convolution_follows_bf16_autocast(monkeypatch):
    _force_matmul(monkeypatch)
    plain, rewritten = _pair(lambda: torch.nn.Conv2d(**CONVS[0]), MatmulConv2d)
    x = torch.randn(1, 6, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, got = plain(x), rewritten(x)
    assert got.dtype == expected.dtype == torch.bfloat16
    assert (got.float() - expected.float()).abs().max() <= 0.05 * expected.float().abs().max()


def test_only_frozen_convolutions_with_weights_larger_than_their_grid_use_the_matmul():
    conv = MatmulConv2d(1280, 1280, 3, padding=1).requires_grad_(False)  # SD1.5's deepest level
    assert conv._use_matmul(torch.empty(1, 1280, 8, 8), conv.weight)
    assert not conv._use_matmul(torch.empty(1, 1280, 64, 64), conv.weight)  # large grid: oneDNN is faster
    assert not conv._use_matmul(torch.empty(16, 1280, 8, 8), conv.weight)  # a large batch counts as a large grid
    # On a 16x16 grid the matmul wins in fp32 but not in bf16, whose oneDNN kernels are faster.
    assert conv._use_matmul(torch.empty(1, 1280, 16, 16), conv.weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not conv._use_matmul(torch.empty(1, 1280, 16, 16), conv.weight)
        assert conv._use_matmul(torch.empty(1, 1280, 8, 8), conv.weight)
    pointwise = MatmulConv2d(1280, 1280, 1).requires_grad_(False)  # no unfold to pay for: a lower threshold
    assert pointwise._use_matmul(torch.empty(1, 1280, 8, 8), pointwise.weight)
    assert not MatmulConv2d(4, 4, 3).double().requires_grad_(False)._use_matmul(torch.empty(1, 4, 3, 3).double(), torch.empty(4, 4, 3, 3).double())
    conv.weight.requires_grad_(True)
    assert not conv._use_matmul(torch.empty(1, 1280, 8, 8), conv.weight)  # a trained weight keeps oneDNN's backward
    grouped = MatmulConv2d(1280, 1280, 3, padding=1, groups=2).requires_grad_(False)
    assert not grouped._use_matmul(torch.empty(1, 1280, 4, 4), grouped.weight)


def test_matmul_convolutions_are_undone_after_the_block_even_on_error(monkeypatch):
    _force_matmul(monkeypatch)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 3), torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1)), torch.nn.Linear(3, 3))
    with pytest.raises(RuntimeError, match="boom"):
        with matmul_convolutions(model) as swapped:
            assert swapped == 2
            assert [type(m) for m in model.modules() if isinstance(m, torch.nn.Conv2d)] == [MatmulConv2d, MatmulConv2d]
            raise RuntimeError("boom")
    assert all(type(m) is torch.nn.Conv2d for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def test_only_convolutions_that_could_ever_qualify_are_swapped():
    """A layer whose weights stay under every threshold even for a one-position output keeps plain Conv2d's call."""
    small_3x3 = torch.nn.Conv2d(64, 64, 3)  # 36.9k weights, under the lowest 3x3 threshold
    small_1x1 = torch.nn.Conv2d(16, 16, 1)  # 256 weights, under the lowest 1x1 threshold
    large_3x3, large_1x1 = torch.nn.Conv2d(128, 128, 3), torch.nn.Conv2d(64, 64, 1)
    model = torch.nn.Sequential(small_3x3, small_1x1, large_3x3, large_1x1)
    with matmul_convolutions(model) as swapped:
        assert swapped == 2
        assert [type(m) for m in model] == [torch.nn.Conv2d, torch.nn.Conv2d, MatmulConv2d, MatmulConv2d]


def test_training_with_matmul_convolutions_gives_the_same_lora(base_model, dataset, monkeypatch):
    """Every UNet convolution forced onto the matmul path: the LoRA matches a oneDNN run and the base is restored."""
    settings = TrainSettings(steps=3, learning_rate=5e-3, resolution=64, batch_size=2, lr_scheduler="constant", seed=3, precision="fp32")
    onednn = Trainer(base_model, dataset, LoRASettings(rank=2, targets="kohya"), settings, cpu_kernels=CpuKernelChoice(matmul_convolutions=False)).run()
    _force_matmul(monkeypatch)
    calls = []
    original = MatmulConv2d._conv_forward
    monkeypatch.setattr(MatmulConv2d, "_conv_forward", lambda self, *args: calls.append(1) or original(self, *args))
    matmul = Trainer(base_model, dataset, LoRASettings(rank=2, targets="kohya"), settings).run()
    assert calls
    assert all(type(m) is torch.nn.Conv2d for m in base_model.unet.modules() if isinstance(m, torch.nn.Conv2d))
    # Rounding differs (~1e-7); Adam's normalised steps carry it to ~3e-5 after 3 steps of 5e-3 each.
    for key, value in onednn.lora.tensors.items():
        assert (matmul.lora.tensors[key] - value).abs().max() <= 1e-4, key


# --------------------------------------------------------------------------- fp32 linears on oneDNN

needs_onednn = pytest.mark.skipif(not cpu_kernels.onednn_linear_available(), reason="this torch has no oneDNN linear")


def _count_onednn_calls(monkeypatch) -> list:
    calls = []
    original = cpu_kernels._onednn_linear
    monkeypatch.setattr(cpu_kernels, "_onednn_linear", lambda *args: calls.append(1) or original(*args))
    return calls


@needs_onednn
@pytest.mark.parametrize("shape", [(64, 48), (2, 16, 48)])
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_matches_mkl_forward_and_input_gradient(shape, bias, monkeypatch):
    calls = _count_onednn_calls(monkeypatch)
    plain, rewritten = _pair(lambda: torch.nn.Linear(48, 40, bias=bias), cpu_kernels.OneDNNLinear)
    outputs, gradients = _outputs_and_input_gradients((plain, rewritten), torch.randn(*shape))
    assert calls == [1, 1], "forward and input gradient both went through oneDNN"
    assert (outputs[0] - outputs[1]).abs().max() <= 1e-5 * outputs[0].abs().max()
    assert (gradients[0] - gradients[1]).abs().max() <= 1e-5 * gradients[0].abs().max()


@needs_onednn
def test_onednn_linear_is_only_used_for_frozen_fp32_weights_outside_autocast(monkeypatch):
    calls = _count_onednn_calls(monkeypatch)
    layer = cpu_kernels.OneDNNLinear(8, 8)
    x = torch.randn(3, 8)
    layer(x)  # a trained weight keeps torch's own linear and its weight gradient
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer.requires_grad_(False)(x).dtype == torch.bfloat16  # bf16 already runs on oneDNN
    layer.to(torch.bfloat16)(x.bfloat16())
    assert calls == []
    layer.float()(x)
    assert calls == [1]


@needs_onednn
def test_onednn_linears_swaps_large_frozen_layers_only_and_undoes_it_even_on_error():
    large = torch.nn.Linear(320, 320).requires_grad_(False)  # SD1.5's smallest attention projection
    small = torch.nn.Linear(64, 64).requires_grad_(False)  # below the break-even size: MKL's lower call cost wins
    trained = torch.nn.Linear(320, 320)
    model = torch.nn.Sequential(large, small, trained)
    with pytest.raises(RuntimeError, match="boom"):
        with cpu_kernels.onednn_linears(model) as swapped:
            assert swapped == 1 and [type(m) for m in model] == [cpu_kernels.OneDNNLinear, torch.nn.Linear, torch.nn.Linear]
            raise RuntimeError("boom")
    assert all(type(m) is torch.nn.Linear for m in model)


@needs_onednn
def test_training_with_onednn_linears_gives_the_same_lora(base_model, dataset, monkeypatch):
    """Every frozen UNet and text-encoder linear forced onto oneDNN: the LoRA matches an MKL run and the base is restored."""
    settings = TrainSettings(steps=3, learning_rate=5e-3, resolution=64, batch_size=2, lr_scheduler="constant", seed=3, precision="fp32")
    lora_settings = LoRASettings(rank=2, targets="kohya", train_text_encoder=True)
    mkl = Trainer(base_model, dataset, lora_settings, settings, cpu_kernels=CpuKernelChoice(onednn_linears=False)).run()
    monkeypatch.setattr(cpu_kernels, "ONEDNN_LINEAR_MIN_WEIGHTS", 0)
    calls = _count_onednn_calls(monkeypatch)
    onednn = Trainer(base_model, dataset, lora_settings, settings).run()
    assert calls
    for model in (base_model.unet, base_model.text_encoder):
        assert not any(isinstance(m, cpu_kernels.OneDNNLinear) for m in model.modules())
    for key, value in mkl.lora.tensors.items():
        assert (onednn.lora.tensors[key] - value).abs().max() <= 1e-4, key


def _bf16_attention_inputs(query_positions: int, key_positions: int):
    g = torch.Generator().manual_seed(0)
    shape = lambda positions: (1, 2, positions, 16)  # noqa: E731
    return [torch.randn(shape(n), generator=g).to(torch.bfloat16).requires_grad_() for n in (query_positions, key_positions, key_positions)]


@pytest.mark.parametrize("query_positions,key_positions,in_fp32", [(64, 77, True), (256, 256, True), (257, 256, False), (1024, 77, False)])
def test_short_bf16_attentions_run_in_fp32_and_long_ones_stay_bf16(query_positions, key_positions, in_fp32):
    import torch.nn.functional as F

    query, key, value = _bf16_attention_inputs(query_positions, key_positions)
    with torch.autocast("cpu", torch.bfloat16), cpu_kernels._ShortAttentionInFp32():
        output = F.scaled_dot_product_attention(query, key, value)
    output.float().sum().backward()
    fp32 = F.scaled_dot_product_attention(query.float(), key.float(), value.float()).to(torch.bfloat16)
    fused = F.scaled_dot_product_attention(query, key, value)
    assert output.dtype == torch.bfloat16 and query.grad.dtype == torch.bfloat16
    assert torch.equal(output, fp32 if in_fp32 else fused)
    assert not torch.equal(fp32, fused)  # the two paths are told apart


def test_fp32_short_attentions_swap_every_diffusers_attention_and_restore_them(base_model):
    from diffusers.models.attention_processor import Attention

    attentions = [m for m in base_model.unet.modules() if isinstance(m, Attention)]
    with cpu_kernels.fp32_short_attentions(base_model.unet) as swapped:
        assert swapped == len(attentions) > 0
        assert all(type(m) is cpu_kernels.Fp32ShortAttention for m in attentions)
    assert all(type(m) is Attention for m in attentions)


def test_bf16_training_uses_fp32_short_attentions_and_trains_alike(base_model, dataset, monkeypatch):
    """The tiny model's attentions are all short: a bf16 run takes them to fp32, and its losses stay those of a fused-bf16 run."""
    settings = TrainSettings(steps=3, learning_rate=1e-3, resolution=64, batch_size=2, lr_scheduler="constant", seed=3, precision="bf16")
    fused = Trainer(base_model, dataset, LoRASettings(rank=2), settings, cpu_kernels=CpuKernelChoice(fp32_short_attention=False)).run()
    calls = []
    original = cpu_kernels._ShortAttentionInFp32.__torch_function__

    def counted(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.scaled_dot_product_attention and cpu_kernels._short_low_precision_attention(args, kwargs or {}):
            calls.append(1)
        return original(self, func, types, args, kwargs)

    monkeypatch.setattr(cpu_kernels._ShortAttentionInFp32, "__torch_function__", counted)
    short_in_fp32 = Trainer(base_model, dataset, LoRASettings(rank=2), settings).run()
    assert calls
    assert short_in_fp32.loss_history != fused.loss_history  # the path changed
    assert short_in_fp32.loss_history == pytest.approx(fused.loss_history, rel=0.05)
    assert all(type(m).__name__ == "Attention" for m in base_model.unet.modules() if "Attention" in type(m).__name__)
