import json
import re

import pytest
import torch

from core import lora as lora_lib
from core.errors import SettingsError
from core.lora import LoRASettings, read_lora_file, save_lora_file
from core.training import Trainer, TrainSettings, train
from training_support import ProbeTrainer, StopAtStep

FAST = dict(steps=6, learning_rate=5e-3, resolution=64, batch_size=2, lr_scheduler="constant", seed=3, precision="fp32")
KOHYA_KEY = re.compile(
    r"^(lora_unet_[a-z0-9_]+|lora_te_text_model_encoder_layers_\d+_(self_attn_(q|k|v|out)_proj|mlp_fc[12]))"
    r"\.(lora_down\.weight|lora_up\.weight|alpha)$"
)


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_saved_lora_reproduces_trained_model_in_diffusers(tiny_assets, base_model, dataset, tmp_path):
    from diffusers import StableDiffusionPipeline

    settings = LoRASettings(rank=4, alpha=2.0, targets="kohya", train_text_encoder=True)
    unet_before = _state(base_model.unet)
    result = ProbeTrainer(base_model, dataset, settings, TrainSettings(**FAST)).run()
    path = save_lora_file(result.lora, tmp_path / "trained.safetensors")

    # The base model is back to exactly what it was: no adapters left, same weights.
    assert not any("lora" in name for name, _ in base_model.unet.named_modules())
    after = base_model.unet.state_dict()
    assert all(torch.equal(unet_before[k], after[k]) for k in unet_before)

    pipe = StableDiffusionPipeline.from_pretrained(tiny_assets["diffusers"], safety_checker=None, local_files_only=True)
    probe = ProbeTrainer.probe
    with torch.no_grad():
        plain = pipe.unet(probe["latents"], torch.tensor([400]), probe["text"]).sample
    pipe.load_lora_weights(str(path))
    with torch.no_grad():
        loaded_unet = pipe.unet(probe["latents"], torch.tensor([400]), probe["text"]).sample
        loaded_te = pipe.text_encoder(probe["ids"])[0]
    assert (plain - probe["unet"]).abs().max() > 1e-3, "training changed nothing, so the comparison would prove nothing"
    assert (loaded_unet - probe["unet"]).abs().max() <= 1e-4
    assert (loaded_te - probe["text_encoder"]).abs().max() <= 1e-4


def test_saved_keys_and_metadata(base_model, dataset, tmp_path):
    result = train(base_model, dataset, LoRASettings(rank=4, targets="kohya", train_text_encoder=True), TrainSettings(**FAST))
    path = save_lora_file(result.lora, tmp_path / "x.safetensors")
    weights = read_lora_file(path)
    assert weights.tensors and all(KOHYA_KEY.match(k) for k in weights.tensors), [k for k in weights.tensors if not KOHYA_KEY.match(k)][:3]
    stems = {k.rsplit(".", 2)[0] for k in weights.tensors if k.endswith("lora_down.weight")}
    assert all(f"{stem}.alpha" in weights.tensors for stem in stems)
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj") for k in weights.tensors)
    proj_in = next(v for k, v in weights.tensors.items() if "proj_in.lora_down" in k)
    assert proj_in.ndim == 4, "1x1 conv proj_in adapters are saved 4-D"
    meta = weights.metadata
    for key in ("ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args", "ss_base_model_version", "ss_v2",
                "ss_steps", "ss_learning_rate", "ss_resolution", "ss_seed", "ss_num_train_images", "ss_output_name",
                "ss_training_started_at", "ss_training_finished_at", "modelspec.architecture", "modelspec.title"):
        assert key in meta, key
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_network_dim"] == "4" and meta["ss_steps"] == "6"
    assert json.loads(meta["ss_network_args"])["targets"] == "kohya"
    assert int(meta["ss_num_train_images"]) == len(dataset)
    assert not any(".lora_A." in k or "lora_B" in k for k in weights.tensors), "peft key names must never be saved"


def test_target_presets_match_kohya_counts(base_model):
    from diffusers import UNet2DConditionModel

    from core.model_loading import load_json_config

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(load_json_config("sd15_unet.json"))
    names = [n for n, _ in unet.named_modules()]
    assert sum(bool(re.fullmatch(lora_lib.UNET_TARGET_PRESETS["kohya"], n)) for n in names) == 192
    assert sum(bool(re.fullmatch(lora_lib.UNET_TARGET_PRESETS["attention"], n)) for n in names) == 128


def test_same_seed_same_lora_and_seed_matters(base_model, dataset):
    settings = LoRASettings(rank=4, dropout=0.1)
    first = train(base_model, dataset, settings, TrainSettings(**FAST)).lora.tensors
    second = train(base_model, dataset, settings, TrainSettings(**FAST)).lora.tensors
    other = train(base_model, dataset, settings, TrainSettings(**{**FAST, "seed": 4})).lora.tensors
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first if "lora_up" in k)


def test_eval_runs_after_training_and_measures_the_base_model(base_model, dataset, monkeypatch):
    """The base model's eval loss is taken at the end, so the first step starts sooner; it is the same number."""
    from core.training import Trainer

    order = []
    original = Trainer.evaluate
    monkeypatch.setattr(Trainer, "evaluate", lambda self, *args: order.append("eval") or original(self, *args))
    record = lambda event: order.append("train") if event.phase == "train" else None  # noqa: E731
    short = train(base_model, dataset, LoRASettings(rank=2), TrainSettings(**{**FAST, "steps": 2}), progress=record)
    assert order == ["train", "train", "eval", "eval"]
    longer = train(base_model, dataset, LoRASettings(rank=2), TrainSettings(**{**FAST, "steps": 5, "learning_rate": 1e-2}))
    assert short.eval_loss_before == longer.eval_loss_before, "measured on the base, whatever was trained"
    assert longer.eval_loss_after < longer.eval_loss_before and short.eval_loss_after != longer.eval_loss_after
    stop = StopAtStep(1)
    cancelled = train(base_model, dataset, LoRASettings(rank=2), TrainSettings(**FAST), progress=stop, should_stop=stop.should_stop)
    assert cancelled.interrupted and cancelled.eval_loss_before is None and cancelled.eval_loss_after is None


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_interrupted_and_resumed_run_equals_uninterrupted(base_model, dataset, tmp_path, grad_accum):
    settings = TrainSettings(**{**FAST, "steps": 7, "grad_accum": grad_accum, "lr_scheduler": "cosine", "warmup_steps": 2})
    lora_settings = LoRASettings(rank=4, dropout=0.1)
    reference = train(base_model, dataset, lora_settings, settings)

    for stop_at in (2, 5):  # inside the warm-up and after it
        checkpoint_dir = tmp_path / f"ck{stop_at}"
        stop = StopAtStep(stop_at)
        first = train(base_model, dataset, lora_settings, settings, checkpoint_dir=checkpoint_dir, progress=stop, should_stop=stop.should_stop)
        assert first.interrupted and first.steps == stop_at
        steps_seen = []
        resumed = train(
            base_model, dataset, lora_settings, settings, checkpoint_dir=checkpoint_dir, resume_from=checkpoint_dir,
            progress=lambda event: steps_seen.append(event.step) if event.phase == "train" else None,
        )
        assert resumed.resumed_from_step == stop_at and resumed.steps == 7
        assert steps_seen == list(range(stop_at + 1, 8)), "the step counter continues from k, neither reset nor double-counted"
        assert len(resumed.loss_history) == 7 and len(resumed.lr_history) == 7
        assert resumed.loss_history[:stop_at] == first.loss_history
        assert resumed.lr_history == pytest.approx(reference.lr_history, abs=1e-12), "the schedule continues from k"
        for key, value in reference.lora.tensors.items():
            assert (resumed.lora.tensors[key] - value).abs().max() <= 1e-6, (stop_at, key)
        assert resumed.loss_history == pytest.approx(reference.loss_history, abs=1e-6)
        assert resumed.lora.metadata["ss_steps"] == "7"


def test_resume_with_other_rank_is_refused(base_model, dataset, tmp_path):
    from core.errors import TrainerError

    settings = TrainSettings(**{**FAST, "steps": 2})
    train(base_model, dataset, LoRASettings(rank=4), settings, checkpoint_dir=tmp_path / "ck")
    with pytest.raises(TrainerError, match="rank 4 vs 8"):
        train(base_model, dataset, LoRASettings(rank=8), settings, checkpoint_dir=tmp_path / "ck2", resume_from=tmp_path / "ck")


def test_save_every_writes_loadable_checkpoints(base_model, dataset, tmp_path):
    result = train(base_model, dataset, LoRASettings(rank=2), TrainSettings(**{**FAST, "save_every": 2}), checkpoint_dir=tmp_path / "ck")
    names = sorted(p.name for p in (tmp_path / "ck").iterdir() if not p.name.startswith("."))
    assert names == ["checkpoint-000002", "checkpoint-000004", "checkpoint-000006"]
    assert read_lora_file(tmp_path / "ck" / "checkpoint-000004" / "lora.safetensors").metadata["ss_steps"] == "4"
    assert len(result.checkpoints) == 3


def test_uncached_training_matches_cached(base_model, dataset):
    """Caching is an optimisation only: the same run without caches gives the same LoRA."""
    cached = train(base_model, dataset, LoRASettings(rank=2), TrainSettings(**{**FAST, "steps": 3}))
    uncached = train(base_model, dataset, LoRASettings(rank=2), TrainSettings(**{**FAST, "steps": 3, "cache_latents": False, "cache_text": False}))
    for key, value in cached.lora.tensors.items():
        assert (uncached.lora.tensors[key] - value).abs().max() <= 1e-5, key


def test_gradient_checkpointing_gives_same_gradients(base_model, dataset):
    plain = train(base_model, dataset, LoRASettings(rank=2), TrainSettings(**{**FAST, "steps": 2}))
    checkpointed = train(base_model, dataset, LoRASettings(rank=2), TrainSettings(**{**FAST, "steps": 2, "gradient_checkpointing": True}))
    for key, value in plain.lora.tensors.items():
        assert (checkpointed.lora.tensors[key] - value).abs().max() <= 1e-5, key


@pytest.mark.parametrize(
    "lora_kwargs, train_kwargs, message",
    [
        ({"rank": 0}, {}, "rank must be"),
        ({"rank": 4096}, {}, "larger than the UNet layer"),
        ({"alpha": -1.0}, {}, "alpha must be positive"),
        ({}, {"steps": 0}, "steps must be at least 1"),
        ({}, {"learning_rate": 0.0}, "Learning rate"),
        ({}, {"learning_rate": float("nan")}, "Learning rate"),
        ({}, {"resolution": 100}, "multiple of 64"),
        ({}, {"resolution": 0}, "multiple of 64"),
        ({}, {"batch_size": 64}, "larger than the dataset"),
    ],
)
def test_bad_settings_are_refused(base_model, dataset, lora_kwargs, train_kwargs, message):
    with pytest.raises(SettingsError, match=message):
        train(base_model, dataset, LoRASettings(**lora_kwargs), TrainSettings(**{**FAST, **train_kwargs}))


def test_bf16_on_cpu_trains_a_copy_and_leaves_the_base_untouched(base_model, dataset):
    before = _state(base_model.unet)
    result = train(base_model, dataset, LoRASettings(rank=2), TrainSettings(**{**FAST, "steps": 3, "precision": "bf16"}))
    assert result.lora.metadata["ss_mixed_precision"] == "bf16"
    assert all(v.dtype == torch.float32 for v in result.lora.tensors.values()), "adapters train and save in fp32"
    after = base_model.unet.state_dict()
    assert all(after[k].dtype == torch.float32 and torch.equal(before[k], after[k]) for k in before)
    assert result.eval_loss_after < result.eval_loss_before


def test_images_encode_in_bf16_only_when_training_in_bf16(base_model, dataset, monkeypatch):
    """bf16 runs encode their images in bf16 (about twice as fast on the CPU); the latents stay fp32 and close to an fp32 encode."""
    pixels = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    seen, encode = [], base_model.vae.encode

    def spy(images):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else images.dtype)
        return encode(images)

    monkeypatch.setattr(base_model.vae, "encode", spy)
    latents = {
        precision: Trainer(base_model, dataset, LoRASettings(rank=2), TrainSettings(**{**FAST, "precision": precision}))._encode_images(pixels, seed=0)
        for precision in ("fp32", "bf16")
    }
    assert seen == [torch.float32, torch.bfloat16]
    assert all(value.dtype == torch.float32 for value in latents.values())
    error = (latents["bf16"] - latents["fp32"]).norm() / latents["fp32"].norm()
    assert 0 < error < 0.05


def test_auto_precision_on_cpu_follows_bf16_support(monkeypatch):
    from core.devices import cpu_has_native_bf16, resolve_precision

    for flag, expected in (("1", "bf16"), ("0", "fp32")):
        monkeypatch.setenv("LORA_TRAINER_CPU_BF16", flag)
        cpu_has_native_bf16.cache_clear()
        assert resolve_precision("auto", torch.device("cpu")) == expected
    cpu_has_native_bf16.cache_clear()


def test_models_run_every_step_are_phases_of_their_own_and_counted_once(base_model, dataset, monkeypatch):
    """Without caches the VAE and text encoder run inside the data phase; their time moves out of it, not copied."""
    import time

    from core.training import STEP_PHASES

    original_images, original_text = Trainer._encode_images, Trainer._encode_text
    monkeypatch.setattr(Trainer, "_encode_images", lambda self, *a: time.sleep(0.03) or original_images(self, *a))
    monkeypatch.setattr(Trainer, "_encode_text", lambda self, *a: time.sleep(0.02) or original_text(self, *a))
    settings = TrainSettings(**{**FAST, "steps": 3, "batch_size": 1}, cache_latents=False, cache_text=False)
    phases = train(base_model, dataset, LoRASettings(rank=2), settings).phase_seconds
    assert 3 * 0.03 <= phases["vae"] < 3 * 0.03 + 0.3 and 3 * 0.02 <= phases["text_encoder"] < 3 * 0.02 + 0.3
    assert phases["data"] < 0.05, "the encoders' time is no longer inside the data phase"
    assert phases["eval"] >= 2 * 4 * 0.05, "the eval's own encodes stay in the eval"
    assert set(STEP_PHASES) <= set(phases)


def test_a_device_is_checked_before_anything_runs_on_it(monkeypatch):
    from core.devices import usable_device
    from core.errors import SettingsError

    assert usable_device("cpu") == torch.device("cpu") and usable_device(None).type in ("cpu", "cuda", "xpu", "mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SettingsError, match="finds no cuda device"):
        usable_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert usable_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(SettingsError, match=r"2 cuda device\(s\) found, cuda:0 to cuda:1"):
        usable_device("cuda:2")


def test_seeding_the_training_device_seeds_the_stream_dropout_draws_from():
    """The per-step seed of LoRA dropout reaches the CPU's default generator without torch.manual_seed's lazy seeding of other backends."""
    from core.devices import seed_device_generator

    seed_device_generator(torch.device("cpu"), 1234)
    first = torch.nn.functional.dropout(torch.ones(64), 0.5)
    seed_device_generator(torch.device("cpu"), 1234)
    assert torch.equal(torch.nn.functional.dropout(torch.ones(64), 0.5), first)
    seed_device_generator(torch.device("cpu"), 1235)
    assert not torch.equal(torch.nn.functional.dropout(torch.ones(64), 0.5), first)


def test_resume_with_buckets_switched_on_is_refused(base_model, dataset, tmp_path):
    from core.errors import TrainerError

    settings = TrainSettings(**{**FAST, "steps": 2})
    train(base_model, dataset, LoRASettings(rank=2), settings, checkpoint_dir=tmp_path / "ck")
    with pytest.raises(TrainerError, match="bucket False vs True"):
        train(base_model, dataset, LoRASettings(rank=2), TrainSettings(**{**FAST, "steps": 3, "bucket": True}),
              checkpoint_dir=tmp_path / "ck", resume_from=tmp_path / "ck")
