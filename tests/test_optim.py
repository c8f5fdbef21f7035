"""Optimizers, learning-rate schedules, loss options and non-finite-loss handling.

Each option is run for a few steps on the tiny model and checked for an effect
that would be missing if the option were ignored.
"""
import math
import warnings

import pytest
import torch

from core import optim
from core.errors import SettingsError, TrainerError
from core.losses import add_noise_offset, denoising_loss, min_snr_weights, resolve_prediction_type, signal_to_noise, training_target
from core.lora import LoRASettings
from core.model_loading import default_noise_scheduler
from core.training import Trainer, TrainSettings, train
from training_support import StopAtStep

QUICK = dict(steps=3, learning_rate=5e-3, resolution=64, batch_size=2, lr_scheduler="constant", seed=5)


@pytest.fixture(scope="module")
def baseline(tiny_base, shapes):
    return train(tiny_base, shapes, LoRASettings(rank=2), TrainSettings(**QUICK))


def max_difference(first, second):
    return max(float((first.lora.tensors[k] - second.lora.tensors[k]).abs().max()) for k in first.lora.tensors)


# --------------------------------------------------------------------------- optimizers


def test_adafactor_trains_and_differs_from_adamw(tiny_base, shapes, baseline):
    result = train(tiny_base, shapes, LoRASettings(rank=2), TrainSettings(**QUICK, optimizer="adafactor"))
    ups = [v for k, v in result.lora.tensors.items() if "lora_up" in k]
    assert max(float(v.abs().max()) for v in ups) > 0, "Adafactor made no update"
    assert max_difference(result, baseline) > 1e-5
    assert result.lora.metadata["ss_optimizer"] == "transformers.optimization.Adafactor"


@pytest.mark.skipif(not optim.optimizer_available("prodigy"), reason="prodigyopt is not installed")
def test_prodigy_trains_and_differs_from_adamw(tiny_base, shapes, baseline):
    result = train(tiny_base, shapes, LoRASettings(rank=2), TrainSettings(**{**QUICK, "learning_rate": 1.0}, optimizer="prodigy"))
    assert all(torch.isfinite(v).all() for v in result.lora.tensors.values())
    assert max_difference(result, baseline) > 1e-5
    assert result.lora.metadata["ss_optimizer"] == "prodigyopt.Prodigy"


@pytest.mark.parametrize("name, package", [("adamw8bit", "bitsandbytes"), ("prodigy", "prodigyopt")])
def test_missing_optional_optimizer_is_a_clear_message(monkeypatch, name, package):
    real_find_spec = optim.importlib.util.find_spec
    monkeypatch.setattr(optim.importlib.util, "find_spec", lambda module: None if module == package else real_find_spec(module))
    with pytest.raises(SettingsError, match=f"needs the {package} package.*pip install {package}"):
        TrainSettings(**QUICK, optimizer=name).validate()


def test_unknown_optimizer_is_refused():
    with pytest.raises(SettingsError, match="Optimizer must be one of"):
        TrainSettings(**QUICK, optimizer="sgd").validate()


def test_adamw_is_fused_on_cpu_and_steps_like_the_plain_one():
    torch.manual_seed(0)
    start, gradients = torch.randn(5, 3), [torch.randn(5, 3) for _ in range(3)]
    results = []
    for device in ("cpu", "mps"):  # mps: built on the CPU here, but never asked for a fused kernel
        parameter = torch.nn.Parameter(start.clone())
        optimizer = optim.build_optimizer("adamw", [{"params": [parameter], "lr": 1e-2}], torch.device(device))
        assert bool(optimizer.defaults.get("fused")) == (device == "cpu")
        for gradient in gradients:
            parameter.grad = gradient.clone()
            optimizer.step()
        results.append(parameter.detach())
    assert not torch.equal(results[0], start)
    assert (results[0] - results[1]).abs().max() <= 1e-6


def test_text_encoder_has_its_own_learning_rate(tiny_base, shapes):
    lora_settings = LoRASettings(rank=2, train_text_encoder=True)
    same = train(tiny_base, shapes, lora_settings, TrainSettings(**QUICK))
    slow = train(tiny_base, shapes, lora_settings, TrainSettings(**QUICK, text_encoder_learning_rate=1e-12))
    te_up = lambda result: max(float(v.abs().max()) for k, v in result.lora.tensors.items() if k.startswith("lora_te_") and "lora_up" in k)
    unet_up = lambda result: max(float(v.abs().max()) for k, v in result.lora.tensors.items() if k.startswith("lora_unet_") and "lora_up" in k)
    assert te_up(same) > 1e-3, "with the shared learning rate the text encoder trains"
    assert te_up(slow) < 1e-9, "a 1e-12 text-encoder learning rate barely moves it"
    assert unet_up(slow) == pytest.approx(unet_up(same), rel=0.5), "the UNet keeps its own rate"
    assert slow.lora.metadata["ss_text_encoder_lr"] == "1e-12"


# --------------------------------------------------------------------------- schedules


def expected_lr(name, step, total, warmup, cycles=1, peak=1.0):
    """Closed forms of the schedules (transformers/diffusers definitions), for the lr used at ``step`` (0-based)."""
    if name == "constant":
        return peak
    if step < warmup:
        return peak * step / max(1, warmup)
    if name == "constant_with_warmup":
        return peak
    progress = (step - warmup) / max(1, total - warmup)
    if name == "linear":
        return peak * max(0.0, 1 - progress)
    if name == "cosine":
        return peak * max(0.0, 0.5 * (1 + math.cos(math.pi * progress)))
    if name == "cosine_with_restarts":
        if progress >= 1.0:
            return 0.0
        return peak * max(0.0, 0.5 * (1 + math.cos(math.pi * ((cycles * progress) % 1.0))))
    if name == "polynomial":
        end = optim.POLYNOMIAL_LR_END
        return (peak - end) * (1 - progress) + end
    raise AssertionError(name)


@pytest.mark.parametrize("name", optim.LR_SCHEDULERS)
@pytest.mark.parametrize("warmup", [3, 0.25])
def test_schedule_trace_follows_its_formula(name, warmup):
    total = 12
    settings = TrainSettings(steps=total, learning_rate=1.0, lr_scheduler=name, warmup_steps=warmup, lr_cycles=2)
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer, scheduler, _ = optim.make_optimizer([parameter], settings, torch.device("cpu"), torch.float32)
    trace = []
    for _ in range(total):
        trace.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    warmup_steps = optim.warmup_step_count(warmup, total)
    assert warmup_steps == 3
    assert trace == pytest.approx([expected_lr(name, s, total, warmup_steps, cycles=2) for s in range(total)], abs=1e-9)


def test_training_lr_history_follows_cosine_with_restarts(tiny_base, shapes):
    settings = TrainSettings(**{**QUICK, "steps": 6, "lr_scheduler": "cosine_with_restarts"}, warmup_steps=0.34, lr_cycles=2)
    result = train(tiny_base, shapes, LoRASettings(rank=2), settings)
    # lr_history holds the lr after each step's scheduler update, i.e. the one step s+1 will use.
    expected = [expected_lr("cosine_with_restarts", s + 1, 6, 3, cycles=2, peak=5e-3) for s in range(6)]
    assert result.lr_history == pytest.approx(expected, abs=1e-12)
    assert result.lora.metadata["ss_lr_warmup_steps"] == "3"


def test_bad_warmup_is_refused():
    with pytest.raises(SettingsError, match="Warm-up"):
        TrainSettings(steps=10, warmup_steps=2.5).validate()
    with pytest.raises(SettingsError, match="longer than the run"):
        TrainSettings(steps=10, warmup_steps=20, lr_scheduler="cosine").validate()


# --------------------------------------------------------------------------- losses


def test_prediction_auto_follows_the_scheduler_and_can_be_overridden():
    assert resolve_prediction_type("auto", default_noise_scheduler("epsilon")) == "epsilon"
    assert resolve_prediction_type("auto", default_noise_scheduler("v_prediction")) == "v_prediction"
    assert resolve_prediction_type("v", default_noise_scheduler("epsilon")) == "v_prediction"
    scheduler = default_noise_scheduler()
    latents, noise, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    assert torch.equal(training_target(scheduler, latents, noise, t, "epsilon"), noise)
    assert torch.allclose(training_target(scheduler, latents, noise, t, "v_prediction"), scheduler.get_velocity(latents, noise, t))


def test_v_prediction_training_differs_and_is_recorded(tiny_base, shapes, baseline):
    result = train(tiny_base, shapes, LoRASettings(rank=2), TrainSettings(**QUICK, prediction="v"))
    assert max_difference(result, baseline) > 1e-5
    assert result.lora.metadata["ss_prediction_type"] == "v_prediction"
    assert result.lora.metadata["modelspec.prediction_type"] == "v"


def test_min_snr_weights_and_gradient():
    scheduler = default_noise_scheduler()
    t = torch.tensor([5, 500, 990])
    snr = signal_to_noise(scheduler, t)
    weights = min_snr_weights(scheduler, t, 5.0, "epsilon")
    assert snr[0] > 5 > snr[2], "the timesteps straddle gamma"
    assert weights[0] == pytest.approx(5.0 / float(snr[0]), rel=1e-5) and weights[2] == pytest.approx(1.0)
    v_weights = min_snr_weights(scheduler, t, 5.0, "v_prediction")
    assert v_weights[2] == pytest.approx(float(snr[2] / (snr[2] + 1)), rel=1e-5)
    prediction = torch.randn(3, 4, 8, 8, requires_grad=True)
    target = torch.randn(3, 4, 8, 8)
    plain_grad, = torch.autograd.grad(denoising_loss(prediction, target), prediction)
    weighted_grad, = torch.autograd.grad(denoising_loss(prediction, target, weights=weights), prediction)
    ratio = (weighted_grad / plain_grad).flatten(1)
    assert torch.allclose(ratio, weights[:, None].expand_as(ratio), rtol=1e-4), "each image's gradient scales by its weight"


def test_min_snr_changes_training(tiny_base, shapes, baseline):
    result = train(tiny_base, shapes, LoRASettings(rank=2), TrainSettings(**QUICK, min_snr_gamma=1.0))
    assert max_difference(result, baseline) > 1e-6
    assert result.loss_history[0] < baseline.loss_history[0], "weights <= 1 lower the reported loss"
    assert result.lora.metadata["ss_min_snr_gamma"] == "1"


def test_noise_offset_shifts_each_channel_mean():
    noise = torch.randn(8, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    shifted = add_noise_offset(noise, 0.1, torch.Generator().manual_seed(1))
    shift = (shifted - noise)
    assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift), atol=1e-6), "one constant per image and channel"
    assert 0.03 < float(shift[:, :, 0, 0].abs().mean()) < 0.2
    assert add_noise_offset(noise, 0.0, torch.Generator()) is noise


def test_noise_offset_changes_training(tiny_base, shapes, baseline):
    zero = train(tiny_base, shapes, LoRASettings(rank=2), TrainSettings(**QUICK, noise_offset=0.0))
    # Same random stream: equal up to float reduction order (runs far apart in one process may differ in the last bit).
    assert max_difference(zero, baseline) <= 1e-6, "offset 0 keeps the random stream"
    result = train(tiny_base, shapes, LoRASettings(rank=2), TrainSettings(**QUICK, noise_offset=0.2))
    assert max_difference(result, baseline) > 1e-4
    assert result.lora.metadata["ss_noise_offset"] == "0.2"


def test_huber_matches_mse_for_small_residuals_and_is_linear_for_large():
    target = torch.zeros(1, 4, 2, 2)
    small, large = torch.full_like(target, 1e-3), torch.full_like(target, 10.0)
    assert float(denoising_loss(small, target, "huber")) == pytest.approx(float(denoising_loss(small, target)), rel=1e-3)
    assert float(denoising_loss(large, target, "huber")) == pytest.approx(2 * 0.1 * (math.sqrt(100 + 0.01) - 0.1), rel=1e-5)
    assert float(denoising_loss(large, target, "huber")) < float(denoising_loss(large, target)) / 10


def test_huber_changes_training(tiny_base, shapes, baseline):
    result = train(tiny_base, shapes, LoRASettings(rank=2), TrainSettings(**QUICK, loss="huber"))
    assert max_difference(result, baseline) > 1e-6
    assert result.loss_history[0] < baseline.loss_history[0]
    assert result.lora.metadata["ss_loss_type"] == "huber"


# --------------------------------------------------------------------------- non-finite losses


class PoisonedTrainer(Trainer):
    """The training loss is NaN at the given (0-based) steps; evaluation is untouched."""

    poisoned: set = set()

    def _train_step(self, step, parameters):
        self._poison_now = step in self.poisoned
        return super()._train_step(step, parameters)

    def batch_loss(self, *args, **kwargs):
        loss = super().batch_loss(*args, **kwargs)
        return loss * float("nan") if getattr(self, "_poison_now", False) and not kwargs.get("plain") else loss


def test_one_nan_step_is_skipped_with_one_warning(tiny_base, shapes, tmp_path):
    PoisonedTrainer.poisoned = {1}
    events = []
    settings = TrainSettings(**{**QUICK, "steps": 4}, save_every=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = PoisonedTrainer(tiny_base, shapes, LoRASettings(rank=2), settings, checkpoint_dir=tmp_path / "ck", progress=events.append).run()
    assert result.steps == 4 and result.skipped_steps == [2]
    assert len(result.loss_history) == 3 and all(math.isfinite(v) for v in result.loss_history)
    assert sum("was skipped" in str(w.message) for w in caught) == 1
    assert [e.step for e in events if e.phase == "skip"] == [2]
    from core.lora import read_lora_file

    before = read_lora_file(tmp_path / "ck" / "checkpoint-000001" / "lora.safetensors").tensors
    after = read_lora_file(tmp_path / "ck" / "checkpoint-000002" / "lora.safetensors").tensors
    assert all(torch.equal(before[k], after[k]) for k in before), "a skipped step makes no update"


def test_nan_steps_in_a_row_stop_with_advice_and_keep_the_good_adapters(tiny_base, shapes, tmp_path):
    PoisonedTrainer.poisoned = {2, 3, 4, 5}
    settings = TrainSettings(**{**QUICK, "steps": 8}, save_every=1, max_bad_steps=3)
    with pytest.raises(TrainerError, match=r"3 steps in a row.*step 2 are saved in .*checkpoint-000005.*learning rate.*bf16/fp32") as error:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            PoisonedTrainer(tiny_base, shapes, LoRASettings(rank=2), settings, checkpoint_dir=tmp_path / "ck").run()
    assert "Training stopped at step 5" in str(error.value)
    from core.lora import read_lora_file

    good = read_lora_file(tmp_path / "ck" / "checkpoint-000002" / "lora.safetensors").tensors
    kept = read_lora_file(tmp_path / "ck" / "checkpoint-000005" / "lora.safetensors").tensors
    assert all(torch.equal(good[k], kept[k]) for k in good)
    assert not any("lora" in name for name, _ in tiny_base.unet.named_modules()), "the base model is restored after the error"


# --------------------------------------------------------------------------- fp16 loss scaling
# fp16 is what GPUs without bf16 (and Macs) train in; torch runs fp16 autocast and its GradScaler on the CPU
# too, so these tests lift the CPU's refusal of fp16 to run that code path here.


@pytest.fixture
def fp16_on_cpu(monkeypatch):
    from core import training

    resolve = training.resolve_precision
    monkeypatch.setattr(training, "resolve_precision", lambda precision, device: "fp16" if precision == "fp16" else resolve(precision, device))


def start_loss_scale_at(monkeypatch, scale):
    grad_scaler = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device: grad_scaler(device, init_scale=scale))


class FirstGradientTrainer(Trainer):
    """Keeps the gradients that the first optimizer step receives (after the fp16 loss scale is taken out)."""

    first_gradients = None

    def _train_step(self, step, parameters):
        if step == 0:
            def record(optimizer, args, kwargs):
                if self.first_gradients is None:
                    self.first_gradients = torch.cat([p.grad.detach().flatten() for p in parameters])

            self.optimizer.register_step_pre_hook(record)
        return super()._train_step(step, parameters)


def test_fp16_gives_the_gradients_and_losses_of_fp32(tiny_base, shapes, fp16_on_cpu):
    runs = {}
    for precision in ("fp32", "fp16"):
        trainer = FirstGradientTrainer(tiny_base, shapes, LoRASettings(rank=2), TrainSettings(**{**QUICK, "precision": precision}))
        runs[precision] = (trainer.run(), trainer.first_gradients)
    (full, full_gradients), (half, half_gradients) = runs["fp32"], runs["fp16"]
    assert half.skipped_steps == [] and all(t.dtype == torch.float32 for t in half.lora.tensors.values())
    difference = float((half_gradients - full_gradients).norm() / full_gradients.norm())
    assert 0 < difference < 0.01, f"fp16 gradients differ from fp32 by {difference:.2%} (a loss scale left in would be 65536x)"
    assert half.loss_history == pytest.approx(full.loss_history, rel=2e-3)


def test_fp16_overflow_skips_lower_the_loss_scale_without_stopping_the_run(tiny_base, shapes, fp16_on_cpu, monkeypatch, tmp_path):
    start_loss_scale_at(monkeypatch, 2.0**30)  # far too high: the first steps overflow until the scale has come down
    events = []
    settings = TrainSettings(**{**QUICK, "steps": 12}, precision="fp16", save_every=1, max_bad_steps=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = Trainer(tiny_base, shapes, LoRASettings(rank=2), settings, checkpoint_dir=tmp_path / "ck", progress=events.append).run()
    leading = next(k for k in range(len(result.skipped_steps) + 1) if k + 1 not in result.skipped_steps)
    assert leading > settings.max_bad_steps, result.skipped_steps
    assert result.steps == 12 and len(result.loss_history) == 12 - len(result.skipped_steps)
    assert not any("was skipped" in str(w.message) for w in caught), "calibrating the loss scale is normal, not a warning"
    skips = [e.message for e in events if e.phase == "skip"]
    assert len(skips) == len(result.skipped_steps) and "loss scale was lowered to 536870912" in skips[0]
    from core.lora import read_lora_file

    def lora_at(step):
        return read_lora_file(tmp_path / "ck" / f"checkpoint-{step:06d}" / "lora.safetensors").tensors

    untouched, first_update = lora_at(1), lora_at(leading + 1)
    assert all(torch.equal(untouched[k], lora_at(leading)[k]) for k in untouched), "skipped steps make no update"
    assert not all(torch.equal(untouched[k], first_update[k]) for k in untouched)


def test_fp16_resume_restores_the_loss_scale(tiny_base, shapes, fp16_on_cpu, monkeypatch, tmp_path):
    start_loss_scale_at(monkeypatch, 2.0**24)
    settings = TrainSettings(**{**QUICK, "steps": 8}, precision="fp16")
    reference = train(tiny_base, shapes, LoRASettings(rank=2), settings)
    assert reference.skipped_steps[:1] == [1], "the run starts by calibrating the scale"
    for stop_at in (1, 4):
        stop = StopAtStep(stop_at)
        checkpoint_dir = tmp_path / f"ck{stop_at}"
        train(tiny_base, shapes, LoRASettings(rank=2), settings, checkpoint_dir=checkpoint_dir, progress=stop, should_stop=stop.should_stop)
        resumed = train(tiny_base, shapes, LoRASettings(rank=2), settings, checkpoint_dir=checkpoint_dir, resume_from=checkpoint_dir)
        assert resumed.skipped_steps == reference.skipped_steps, "a resumed run must not calibrate the scale again"
        assert resumed.loss_history == pytest.approx(reference.loss_history, abs=1e-6)
        assert max_difference(resumed, reference) <= 1e-6


class OverflowingTrainer(Trainer):
    """Every gradient is infinite, whatever the loss scale: fp16 overflow that scaling cannot cure."""

    def batch_loss(self, *args, **kwargs):
        loss = super().batch_loss(*args, **kwargs)
        return loss if kwargs.get("plain") else _InfiniteGradient.apply(loss)


class _InfiniteGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, value):
        return value.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def test_fp16_overflow_at_a_loss_scale_of_one_stops_the_run(tiny_base, shapes, fp16_on_cpu, monkeypatch):
    start_loss_scale_at(monkeypatch, 4.0)  # scales 4 and 2 calibrate; 1, 0.5 and 0.25 count
    settings = TrainSettings(**{**QUICK, "steps": 8}, precision="fp16", max_bad_steps=3)
    with pytest.raises(TrainerError, match=r"Training stopped at step 5: 3 steps in a row.*overflowed fp16 even at a loss scale of 0\.25.*bf16/fp32"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            OverflowingTrainer(tiny_base, shapes, LoRASettings(rank=2), settings).run()
    assert not any("lora" in name for name, _ in tiny_base.unet.named_modules()), "the base model is restored after the error"
