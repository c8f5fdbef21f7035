"""Adapter types (LoRA, LoCon, DoRA, LoHa, LoKr, regex targets): saved keys and round trips.

The reference loader below is written from ComfyUI's documented behaviour, not
from our exporter: ComfyUI maps ``lora_unet_<diffusers module path with _>``
and ``lora_te_text_model_<path with _>`` onto modules and merges
W + (alpha/rank)·up·down; for LoHa (comfy/weight_adapter/loha.py) W + (alpha/r)·
(hada_w1_a @ hada_w1_b) * (hada_w2_a @ hada_w2_b) reshaped like W, r = hada_w1_b's
first dimension; for LoKr (lokr.py) W + s·kron(w1, w2) reshaped like W, where each factor
is lokr_wN or lokr_wN_a @ lokr_wN_b, w1 gets two trailing axes when w2 is 4-D, and s is
alpha / (w2_b's, else w1_b's, first dimension), or 1 when both factors are whole; for DoRA ``weight_decompose`` in
comfy/weight_adapter/base.py: dora_scale·(W + sΔW)/‖W‖ when dora_scale has one
row per output (its output-axis branch), else dora_scale·(W + sΔW)/‖W + sΔW‖
per input column. A key it cannot map is "lora key not loaded".
"""
import copy
import re

import pytest
import torch

from core import lora as lora_lib
from core.errors import SettingsError, TrainerError
from core.lora import LoRASettings, read_lora_file, save_lora_file
from core.training import Trainer, TrainSettings, train
from training_support import ProbeTrainer

QUICK = dict(steps=3, learning_rate=2e-2, resolution=64, batch_size=2, lr_scheduler="constant", seed=9)
LAYERS = (torch.nn.Linear, torch.nn.Conv2d)


def comfy_names(unet, text_encoder) -> dict[str, torch.nn.Module]:
    """Stem → module, by ComfyUI's documented SD1.5 naming."""
    names = {"lora_unet_" + name.replace(".", "_"): m for name, m in unet.named_modules() if isinstance(m, LAYERS)}
    for name, module in text_encoder.named_modules():
        if isinstance(module, LAYERS):
            path = name if name.startswith("text_model.") else "text_model." + name  # transformers 5 dropped this level
            names["lora_te_" + path.replace(".", "_")] = module
    return names


def comfy_merge(unet, text_encoder, tensors, dora_scale_override=None) -> list[str]:
    """Merge a kohya-format LoRA the way ComfyUI does; returns the keys it could not map."""
    modules = comfy_names(unet, text_encoder)
    stems = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in tensors}
    not_loaded = []
    with torch.no_grad():
        for stem in sorted(stems):
            if stem not in modules:
                not_loaded += [k for k in tensors if k.startswith(stem + ".")]
                continue
            weight = modules[stem].weight
            if f"{stem}.hada_w1_a" in tensors:
                w1a, w1b, w2a, w2b = (tensors[f"{stem}.hada_{k}"].double() for k in ("w1_a", "w1_b", "w2_a", "w2_b"))
                scale = float(tensors[f"{stem}.alpha"]) / w1b.shape[0] if f"{stem}.alpha" in tensors else 1.0
                diff = ((w1a @ w1b) * (w2a @ w2b)).reshape(weight.shape)
            elif f"{stem}.lokr_w1" in tensors or f"{stem}.lokr_w1_a" in tensors:
                scale, diff = comfy_lokr(tensors, stem, weight.shape)
            else:
                up, down = tensors[f"{stem}.lora_up.weight"].double(), tensors[f"{stem}.lora_down.weight"].double()
                scale = float(tensors[f"{stem}.alpha"]) / down.shape[0] if f"{stem}.alpha" in tensors else 1.0
                diff = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape)
            original = weight.double()
            dora_scale = (dora_scale_override or {}).get(stem, tensors.get(f"{stem}.dora_scale"))
            if dora_scale is None:
                merged = original + scale * diff
            else:
                combined = original + scale * diff
                dora_scale = dora_scale.double()
                if dora_scale.shape[0] == weight.shape[0]:  # output axis: ComfyUI divides by the *base* weight's norm
                    norm = original.reshape(weight.shape[0], -1).norm(dim=1).reshape(weight.shape[0], *[1] * (weight.ndim - 1))
                else:
                    norm = combined.transpose(0, 1).reshape(weight.shape[1], -1).norm(dim=1, keepdim=True)
                    norm = norm.reshape(weight.shape[1], *[1] * (weight.ndim - 1)).transpose(0, 1)
                merged = combined * (dora_scale / norm)
            weight.copy_(merged.to(weight.dtype))
    return not_loaded


def comfy_lokr(tensors, stem, shape):
    """(scale, kron(w1, w2) reshaped) as comfy/weight_adapter/lokr.py computes them."""
    factors, rank = [], None
    for n in ("1", "2"):
        if f"{stem}.lokr_w{n}" in tensors:
            factors.append(tensors[f"{stem}.lokr_w{n}"].double())
        else:
            rank = tensors[f"{stem}.lokr_w{n}_b"].shape[0]
            factors.append(tensors[f"{stem}.lokr_w{n}_a"].double() @ tensors[f"{stem}.lokr_w{n}_b"].double())
    w1, w2 = factors
    if w2.ndim == 4:
        w1 = w1[:, :, None, None]
    scale = float(tensors[f"{stem}.alpha"]) / rank if rank is not None and f"{stem}.alpha" in tensors else 1.0
    return scale, torch.kron(w1, w2).reshape(shape)


def kohya_expected_stems(unet, conv: bool) -> list[str]:
    """kohya's module selection by block class: every Linear/Conv2d in Transformer2DModel (+ ResNet, Down/Upsample)."""
    classes = {"Transformer2DModel"} | ({"ResnetBlock2D", "Downsample2D", "Upsample2D"} if conv else set())
    stems = []
    for name, block in unet.named_modules():
        if type(block).__name__ in classes:
            stems += ["lora_unet_" + f"{name}.{child}".replace(".", "_") for child, m in block.named_modules() if child and isinstance(m, LAYERS)]
    return sorted(stems)


def saved_stems(tensors, prefix="lora_unet_", marker=".lora_down.weight"):
    return sorted(k[: -len(marker)] for k in tensors if k.startswith(prefix) and k.endswith(marker))


def compare_round_trip(tiny_base, lora_file_tensors, probe):
    unet, text_encoder = copy.deepcopy(tiny_base.unet), copy.deepcopy(tiny_base.text_encoder)
    with torch.no_grad():
        plain = unet(probe["latents"], torch.tensor([400]), probe["text"]).sample
    assert comfy_merge(unet, text_encoder, lora_file_tensors) == [], "ComfyUI would log 'lora key not loaded'"
    with torch.no_grad():
        merged = unet(probe["latents"], torch.tensor([400]), probe["text"]).sample
        merged_te = text_encoder(probe["ids"])[0]
    assert (plain - probe["unet"]).abs().max() > 1e-3, "training changed nothing, so the comparison would prove nothing"
    return merged, merged_te


# --------------------------------------------------------------------------- key names


def test_full_size_presets_match_kohya_module_selection():
    from diffusers import UNet2DConditionModel

    from core.model_loading import load_json_config

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(load_json_config("sd15_unet.json"))
    for preset, conv, count in (("kohya", False, 192), ("kohya+conv", True, 278)):
        ours = sorted(lora_lib.kohya_stem(n, "lora_unet_") for n in lora_lib.matching_layers(unet, lora_lib.target_pattern(preset)))
        assert ours == kohya_expected_stems(unet, conv) and len(ours) == count, preset
    spatial = [n for n in lora_lib.matching_layers(unet, lora_lib.target_pattern("kohya+conv")) if lora_lib.is_spatial_conv(unet.get_submodule(n))]
    assert len(spatial) == 22 * 2 + 6, "conv1/conv2 of 22 ResNets + 3 down- and 3 upsamplers get the conv rank"


@pytest.mark.parametrize(
    "settings, expected",
    [
        (LoRASettings(rank=2, targets="attention"), lambda unet: sorted(s for s in kohya_expected_stems(unet, False) if re.search(r"attn[12]_(to_q|to_k|to_v|to_out_0)$", s))),
        (LoRASettings(rank=2, targets="kohya+conv", conv_rank=3, conv_alpha=1.5), lambda unet: kohya_expected_stems(unet, True)),
        (LoRASettings(rank=2, targets=r".*attn2\.to_(k|v)"), lambda unet: sorted(s for s in kohya_expected_stems(unet, False) if re.search(r"attn2_to_(k|v)$", s))),
    ],
    ids=["attention", "kohya+conv", "regex"],
)
def test_round_trip_and_saved_stems(tiny_base, shapes, tmp_path, settings, expected):
    result = ProbeTrainer(tiny_base, shapes, settings, TrainSettings(**QUICK)).run()
    weights = read_lora_file(save_lora_file(result.lora, tmp_path / "x.safetensors"))
    assert saved_stems(weights.tensors) == expected(tiny_base.unet)
    merged, _ = compare_round_trip(tiny_base, weights.tensors, ProbeTrainer.probe)
    assert (merged - ProbeTrainer.probe["unet"]).abs().max() <= 1e-4
    if settings.conv_rank:
        conv_down = weights.tensors["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"]
        assert conv_down.shape[:2] == (3, 32) and conv_down.shape[2:] == (3, 3), "3x3 conv adapters have the conv rank and kernel"
        assert float(weights.tensors["lora_unet_down_blocks_0_resnets_0_conv1.alpha"]) == 1.5
        assert weights.tensors["lora_unet_up_blocks_0_resnets_0_conv_shortcut.lora_down.weight"].shape[0] == 2, "1x1 convs keep the rank"
        assert weights.tensors["lora_unet_down_blocks_0_resnets_0_time_emb_proj.lora_down.weight"].shape[0] == 2


def test_locon_loads_in_diffusers(tiny_assets, tiny_base, shapes, tmp_path):
    from diffusers import StableDiffusionPipeline

    result = ProbeTrainer(tiny_base, shapes, LoRASettings(rank=2, targets="kohya+conv", conv_rank=3), TrainSettings(**QUICK)).run()
    path = save_lora_file(result.lora, tmp_path / "locon.safetensors")
    pipe = StableDiffusionPipeline.from_pretrained(tiny_assets["diffusers"], safety_checker=None, local_files_only=True)
    pipe.load_lora_weights(str(path))
    probe = ProbeTrainer.probe
    with torch.no_grad():
        loaded = pipe.unet(probe["latents"], torch.tensor([400]), probe["text"]).sample
    assert (loaded - probe["unet"]).abs().max() <= 1e-4


def test_dora_round_trip_through_comfyui_formula(tiny_base, shapes, tmp_path):
    settings = LoRASettings(rank=2, targets="kohya", use_dora=True, train_text_encoder=True)
    result = ProbeTrainer(tiny_base, shapes, settings, TrainSettings(**QUICK)).run()
    weights = read_lora_file(save_lora_file(result.lora, tmp_path / "dora.safetensors"))
    stems = saved_stems(weights.tensors) + saved_stems(weights.tensors, "lora_te_")
    assert all(f"{stem}.dora_scale" in weights.tensors for stem in stems)
    scale = weights.tensors["lora_unet_down_blocks_0_attentions_0_proj_in.dora_scale"]
    assert scale.shape == (32, 1, 1, 1), "one magnitude per output row selects ComfyUI's output-axis branch"
    merged, merged_te = compare_round_trip(tiny_base, weights.tensors, ProbeTrainer.probe)
    assert (merged - ProbeTrainer.probe["unet"]).abs().max() <= 1e-4
    assert (merged_te - ProbeTrainer.probe["text_encoder"]).abs().max() <= 1e-4
    assert '"dora_wd": "True"' in weights.metadata["ss_network_args"]


def test_dora_resume_is_exact(tiny_base, shapes, tmp_path):
    """LoCon + DoRA + text encoder: the checkpoint's exact adapter state resumes to the uninterrupted result."""
    lora_settings = LoRASettings(rank=2, targets="kohya+conv", use_dora=True, train_text_encoder=True, dropout=0.1)
    settings = TrainSettings(**{**QUICK, "steps": 4, "learning_rate": 5e-3})
    reference = train(tiny_base, shapes, lora_settings, settings)
    stopped = {"flag": False}
    train(tiny_base, shapes, lora_settings, settings, checkpoint_dir=tmp_path / "ck",
          progress=lambda e: stopped.update(flag=stopped["flag"] or (e.phase == "train" and e.step >= 2)), should_stop=lambda: stopped["flag"])
    resumed = train(tiny_base, shapes, lora_settings, settings, checkpoint_dir=tmp_path / "ck", resume_from=tmp_path / "ck")
    assert resumed.resumed_from_step == 2
    for key, value in reference.lora.tensors.items():
        assert (resumed.lora.tensors[key] - value).abs().max() <= 1e-6, key


LYCORIS_KEYS = {"loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"},
                "lokr": {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "alpha"}}
MARKER = {"loha": ".hada_w1_a", "lokr": ".alpha"}


@pytest.mark.parametrize("adapter", ["loha", "lokr"])
def test_lycoris_round_trip_through_comfyui_formula(tiny_base, shapes, tmp_path, adapter):
    settings = LoRASettings(rank=2, alpha=1.0, targets="kohya+conv", conv_rank=4, conv_alpha=1.5, adapter=adapter, train_text_encoder=True)
    result = ProbeTrainer(tiny_base, shapes, settings, TrainSettings(**QUICK)).run()
    weights = read_lora_file(save_lora_file(result.lora, tmp_path / f"{adapter}.safetensors"))
    unet_stems = saved_stems(weights.tensors, marker=MARKER[adapter])
    te_stems = saved_stems(weights.tensors, "lora_te_", marker=MARKER[adapter])
    assert unet_stems == kohya_expected_stems(tiny_base.unet, True) and len(te_stems) == 12
    assert {key.rsplit(".", 1)[1] for key in weights.tensors} <= LYCORIS_KEYS[adapter]
    assert result.lora.unet_modules == len(unet_stems) and result.lora.text_encoder_modules == 12
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    if adapter == "loha":
        assert weights.tensors[f"{conv}.hada_w1_b"].shape == (4, 32 * 9), "3x3 convs: conv rank, flattened like ComfyUI reshapes"
        assert float(weights.tensors[f"{conv}.alpha"]) == 1.5
    else:  # both forms of LoKr's second factor occur, so both of ComfyUI's scale rules are exercised
        assert f"{conv}.lokr_w2" in weights.tensors and weights.tensors[f"{conv}.lokr_w2"].ndim == 4, "rank 4 >= half the factor: w2 whole"
        assert "lora_unet_down_blocks_0_attentions_0_proj_in.lokr_w2_a" in weights.tensors, "rank 2: w2 as a low-rank pair"
    merged, merged_te = compare_round_trip(tiny_base, weights.tensors, ProbeTrainer.probe)
    assert (merged - ProbeTrainer.probe["unet"]).abs().max() <= 1e-4
    assert (merged_te - ProbeTrainer.probe["text_encoder"]).abs().max() <= 1e-4
    assert weights.metadata["ss_network_module"] == "lycoris.kohya" and f'"algo": "{adapter}"' in weights.metadata["ss_network_args"]


@pytest.mark.parametrize("adapter", ["loha", "lokr"])
def test_lycoris_resume_is_exact(tiny_base, shapes, tmp_path, adapter):
    lora_settings = LoRASettings(rank=2, targets="kohya+conv", adapter=adapter, train_text_encoder=True)
    settings = TrainSettings(**{**QUICK, "steps": 4, "learning_rate": 5e-3})
    reference = train(tiny_base, shapes, lora_settings, settings)
    stopped = {"flag": False}
    train(tiny_base, shapes, lora_settings, settings, checkpoint_dir=tmp_path / "ck",
          progress=lambda e: stopped.update(flag=stopped["flag"] or (e.phase == "train" and e.step >= 2)), should_stop=lambda: stopped["flag"])
    with pytest.raises(TrainerError, match=f"LoRA adapter '{adapter}' vs 'lora'"):
        train(tiny_base, shapes, LoRASettings(rank=2, targets="kohya+conv", train_text_encoder=True), settings, resume_from=tmp_path / "ck")
    resumed = train(tiny_base, shapes, lora_settings, settings, checkpoint_dir=tmp_path / "ck", resume_from=tmp_path / "ck")
    assert resumed.resumed_from_step == 2
    for key, value in reference.lora.tensors.items():
        assert (resumed.lora.tensors[key] - value).abs().max() <= 1e-6, key


# --------------------------------------------------------------------------- starting from a LoRA file


class LoadedOnly(Exception):
    pass


class InitProbe(Trainer):
    """Stops right after the initial LoRA is loaded, keeping the adapters' ΔW per stem."""

    deltas = None

    def _fast_forward_schedule(self, step):
        InitProbe.deltas = {}
        for name, layer in lora_lib.lora_layers(self.unet):
            base, delta, scaling = lora_lib._layer_delta(layer)
            InitProbe.deltas[lora_lib.kohya_stem(name, "lora_unet_")] = scaling * delta
        raise LoadedOnly


def file_deltas(tensors):
    return {
        stem: float(tensors[f"{stem}.alpha"]) / tensors[f"{stem}.lora_down.weight"].shape[0]
        * (tensors[f"{stem}.lora_up.weight"].double().flatten(1) @ tensors[f"{stem}.lora_down.weight"].double().flatten(1))
        for stem in saved_stems(tensors)
    }


def test_init_lora_continues_step_count_and_keeps_the_update(tiny_base, shapes, tmp_path):
    first = train(tiny_base, shapes, LoRASettings(rank=2), TrainSettings(**QUICK))
    path = save_lora_file(first.lora, tmp_path / "first.safetensors")
    # The same update written by another trainer with alpha 1 (kohya's default): up is scaled to compensate.
    foreign = {k: v.clone() for k, v in first.lora.tensors.items()}
    for stem in saved_stems(foreign):
        foreign[f"{stem}.lora_up.weight"] *= 2.0
        foreign[f"{stem}.alpha"] = torch.tensor(1.0)
    foreign_path = save_lora_file(lora_lib.LoRAWeights(foreign, {"ss_steps": "3"}), tmp_path / "foreign.safetensors")
    for source in (path, foreign_path):
        with pytest.raises(LoadedOnly):
            InitProbe(tiny_base, shapes, LoRASettings(rank=2), TrainSettings(**{**QUICK, "steps": 5}), init_lora=source).run()
        expected = file_deltas(read_lora_file(source).tensors)
        for stem, delta in expected.items():
            assert (InitProbe.deltas[stem].flatten(1) - delta).abs().max() <= 1e-6, stem
    continued = train(tiny_base, shapes, LoRASettings(rank=2), TrainSettings(**{**QUICK, "steps": 5}), init_lora=path)
    assert continued.resumed_from_step == 3 and continued.steps == 5 and len(continued.loss_history) == 2
    assert continued.lora.metadata["ss_steps"] == "5" and continued.lora.metadata["ss_network_weights"] == "first.safetensors"


class LycorisInitProbe(Trainer):
    """Stops right after the initial LoHa/LoKr file is loaded, keeping each adapter's ΔW (peft's own computation)."""

    deltas = None

    def _fast_forward_schedule(self, step):
        LycorisInitProbe.deltas = {
            lora_lib.kohya_stem(name, "lora_unet_"): layer.get_delta_weight(lora_lib.ADAPTER_NAME).detach().double()
            for name, layer in lora_lib.lora_layers(self.unet)
        }
        raise LoadedOnly


@pytest.mark.parametrize("adapter", ["loha", "lokr"])
def test_init_lycoris_keeps_the_update_of_a_file_with_another_alpha(tiny_base, shapes, tmp_path, adapter):
    settings = LoRASettings(rank=2, targets="kohya+conv", conv_rank=4, adapter=adapter)
    first = train(tiny_base, shapes, settings, TrainSettings(**QUICK))
    foreign = {k: v.clone() for k, v in first.lora.tensors.items()}
    for stem in saved_stems(foreign, marker=".alpha"):  # the same update as written with alpha 1
        old_scale = lora_lib._lycoris_file_scale(foreign, stem)
        foreign[f"{stem}.alpha"] = torch.tensor(1.0)
        first_key = next(k for k in (".hada_w1_a", ".lokr_w1", ".lokr_w1_a") if stem + k in foreign)
        foreign[stem + first_key] *= old_scale / lora_lib._lycoris_file_scale(foreign, stem)
    path = save_lora_file(lora_lib.LoRAWeights(foreign, {"ss_steps": "3"}), tmp_path / "foreign.safetensors")
    with pytest.raises(LoadedOnly):
        LycorisInitProbe(tiny_base, shapes, settings, TrainSettings(**{**QUICK, "steps": 5}), init_lora=path).run()
    largest = 0.0
    for stem, delta in LycorisInitProbe.deltas.items():
        if adapter == "loha":
            w1a, w1b, w2a, w2b = (first.lora.tensors[f"{stem}.hada_{k}"].double() for k in ("w1_a", "w1_b", "w2_a", "w2_b"))
            expected = lora_lib._lycoris_file_scale(first.lora.tensors, stem) * ((w1a @ w1b) * (w2a @ w2b)).reshape(delta.shape)
        else:
            scale, product = comfy_lokr(first.lora.tensors, stem, delta.shape)
            expected = scale * product
        assert (delta - expected).abs().max() <= 1e-6, stem
        largest = max(largest, float(expected.abs().max()))
    assert largest > 0, "the trained update is not zero, so the comparison means something"
    lora_file = save_lora_file(train(tiny_base, shapes, LoRASettings(rank=2), TrainSettings(**QUICK)).lora, tmp_path / "lora.safetensors")
    with pytest.raises(SettingsError, match=f"holds lora adapters but this run trains {adapter}; set the adapter type to lora"):
        train(tiny_base, shapes, settings, TrainSettings(**{**QUICK, "steps": 5}), init_lora=lora_file)
    with pytest.raises(SettingsError, match=f"holds {adapter} adapters but this run trains lora"):
        train(tiny_base, shapes, LoRASettings(rank=2, targets="kohya+conv"), TrainSettings(**{**QUICK, "steps": 5}), init_lora=path)


def test_init_lora_mismatches_are_refused(tiny_base, shapes, tmp_path):
    first = train(tiny_base, shapes, LoRASettings(rank=2, targets="kohya"), TrainSettings(**QUICK))
    path = save_lora_file(first.lora, tmp_path / "first.safetensors")
    with pytest.raises(SettingsError, match="has rank 2 but this run's adapter there has rank 4"):
        train(tiny_base, shapes, LoRASettings(rank=4), TrainSettings(**{**QUICK, "steps": 5}), init_lora=path)
    with pytest.raises(SettingsError, match="targets do not include"):
        train(tiny_base, shapes, LoRASettings(rank=2, targets="attention"), TrainSettings(**{**QUICK, "steps": 5}), init_lora=path)
    with pytest.raises(SettingsError, match="already been trained for 3 steps; set the total steps above 3"):
        train(tiny_base, shapes, LoRASettings(rank=2), TrainSettings(**QUICK), init_lora=path)


def test_bad_targets_are_refused():
    with pytest.raises(SettingsError, match="Unknown LoRA target preset 'kohya_conv'"):
        LoRASettings(targets="kohya_conv").validate()
    with pytest.raises(SettingsError, match="not a valid regular expression"):
        LoRASettings(targets="attn(").validate()
    with pytest.raises(SettingsError, match="Conv rank must be"):
        LoRASettings(targets="kohya+conv", conv_rank=0).validate()
    with pytest.raises(SettingsError, match="adapter type must be one of lora, loha, lokr, got 'locon'"):
        LoRASettings(adapter="locon").validate()
    with pytest.raises(SettingsError, match="cannot be combined with LoHa"):
        LoRASettings(adapter="loha", use_dora=True).validate()
    with pytest.raises(SettingsError, match="LoHa adapters have no input dropout"):
        LoRASettings(adapter="loha", dropout=0.1).validate()
    with pytest.raises(SettingsError, match="cannot be combined with LoKr"):
        LoRASettings(adapter="lokr", use_dora=True).validate()


def test_regex_that_also_matches_containers_adapts_only_layers(tiny_base):
    unet = copy.deepcopy(tiny_base.unet)
    names = lora_lib.inject(unet, lora_lib.target_pattern(r".*attn2.*"), 2, 2.0, 0.0, "UNet")
    assert names and all(isinstance(tiny_base.unet.get_submodule(n), LAYERS) for n in names)
    assert sorted(n for n, _ in lora_lib.lora_layers(unet)) == sorted(names)
    lora_lib.remove(unet)
    assert not any("lora" in n for n, _ in unet.named_modules())
