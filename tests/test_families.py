"""SD2.x and SDXL: loading, conditioning, the kohya file, and the numbers that must hold for every family.

The merge reference follows ComfyUI's documented mapping (comfy/lora.py ``model_lora_keys_unet``/``_clip``):
``lora_unet_<path with _>`` names a UNet weight either by its original LDM path (what kohya writes
for SDXL) or by its diffusers path (SD1.x/SD2.x); ``lora_te_`` / ``lora_te1_`` / ``lora_te2_`` name the
text towers by their Hugging Face paths. A LoRA merges as W + (alpha/rank)·up·down.
"""
import copy
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

from core import tiny
from core.errors import ModelLoadError, SettingsError, TrainerError
from core.families import family_named, lora_file_family
from core.lora import LoRASettings, save_lora_file
from core.model_loading import UNET_PREFIX, load_base_model
from core.training import Trainer, TrainSettings, train
from training_support import StopAtStep

QUICK = dict(steps=3, learning_rate=2e-2, resolution=64, batch_size=2, lr_scheduler="constant", seed=3)
LAYERS = (torch.nn.Linear, torch.nn.Conv2d)


@pytest.fixture(scope="module", params=["sd2", "sdxl"])
def family_assets(request, tiny_assets, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    model = tiny.build_base_model(tiny_assets["tokenizer"], seed=1, family=request.param)
    return {
        "family": request.param, "model": model, "tokenizer": tiny_assets["tokenizer"],
        "ldm": tiny.save_ldm_checkpoint(model, root / f"tiny_{request.param}.safetensors"),
        "diffusers": tiny.save_diffusers_folder(model, root / f"tiny_{request.param}_diffusers", tiny_assets["tokenizer"]),
    }


def probe_inputs(model, seed=11):
    """A fixed latent, timestep, conditioning and token ids for comparing models of one family."""
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, 4, 8, 8, generator=generator)
    text = {"hidden": torch.randn(1, 77, model.unet.config.cross_attention_dim, generator=generator)}
    if model.family == "sdxl":
        text["pooled"] = torch.randn(1, model.text_encoder_2.config.projection_dim, generator=generator)
    sizes = torch.tensor([[96.0, 64.0, 16.0, 0.0, 64.0, 64.0]])
    ids = [tokenizer(["a red circle"], padding="max_length", max_length=77, return_tensors="pt").input_ids for tokenizer in model.tokenizers]
    return latents, text, sizes, ids


def outputs(model, text_encoders=None, unet=None):
    latents, text, sizes, ids = probe_inputs(model)
    family = model.model_family
    encoders = text_encoders or model.text_encoders
    with torch.no_grad():
        result = {"unet": family.predict(unet or model.unet, latents, torch.tensor([400]), text, sizes)}
        for index, (encoder, token_ids) in enumerate(zip(encoders, ids)):
            output = encoder(token_ids, output_hidden_states=True)
            result[f"text_{index}"] = output.hidden_states[-2]
            result[f"last_{index}"] = output[0]
            if hasattr(output, "text_embeds"):
                result[f"pooled_{index}"] = output.text_embeds
    return result


def test_file_and_folder_load_the_family_identically(family_assets):
    model = family_assets["model"]
    reference = outputs(model)
    for loaded in (load_base_model(family_assets["ldm"], family_assets["tokenizer"]), load_base_model(family_assets["diffusers"])):
        assert loaded.family == family_assets["family"]
        assert loaded.model_family.label in repr(loaded)
        for name, value in outputs(loaded).items():
            assert torch.allclose(value, reference[name], atol=1e-6), name
        pixels = torch.rand(1, 3, 64, 64) * 2 - 1
        with torch.no_grad():
            assert torch.allclose(loaded.vae.encode(pixels).latent_dist.mean, model.vae.encode(pixels).latent_dist.mean, atol=1e-6)
        assert loaded.vae.config.scaling_factor == pytest.approx(0.13025 if loaded.family == "sdxl" else 0.18215)
    assert len(reference["unet"].shape) == 4


@pytest.mark.parametrize("family", ["sd2", "sdxl"])
def test_full_size_architecture_is_recovered_from_shapes(family):
    """The published SD2.1 / SDXL UNet config back from the original-layout tensor shapes (built on the meta device)."""
    from diffusers import UNet2DConditionModel

    from core.ldm_export import unet_to_ldm
    from core.model_loading import infer_unet_config, load_json_config

    reference = load_json_config(f"{family}_unet.json")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(reference)
    inferred = infer_unet_config(unet_to_ldm(unet), f"{family}_unet.json", fixed_heads=None)
    keys = ["block_out_channels", "layers_per_block", "down_block_types", "up_block_types", "cross_attention_dim",
            "attention_head_dim", "transformer_layers_per_block", "use_linear_projection"]
    for key in keys + (["projection_class_embeddings_input_dim", "addition_embed_type"] if family == "sdxl" else []):
        expected, found = reference.get(key, 1), inferred[key]  # SD2.1 leaves transformer_layers_per_block at its default, 1
        assert (list(found) if isinstance(found, (list, tuple)) else found) == expected, key


def test_full_size_sdxl_has_kohyas_module_counts_and_every_name_is_a_checkpoint_weight():
    """kohya's default selects 722 UNet modules on SDXL, 72 on CLIP-L and 192 on bigG; each LDM-named stem
    must name a weight of the original-layout file (the only way ComfyUI maps it)."""
    from diffusers import UNet2DConditionModel

    from core import lora as lora_lib
    from core.ldm_export import unet_to_ldm
    from core.model_loading import load_json_config, text_encoder_from_config

    sdxl = family_named("sdxl")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(load_json_config("sdxl_unet.json"))
        clip_l = text_encoder_from_config(load_json_config("sd15_text_encoder.json"))
        big_g = text_encoder_from_config(load_json_config("sdxl_text_encoder_2.json"), with_projection=True)
    names = lora_lib.matching_layers(unet, lora_lib.target_pattern("kohya"))
    assert len(names) == 722
    assert len(lora_lib.matching_layers(clip_l, lora_lib.TEXT_ENCODER_TARGETS)) == 72
    assert len(lora_lib.matching_layers(big_g, lora_lib.TEXT_ENCODER_TARGETS)) == 192
    naming = lora_lib.KohyaNaming("lora_unet_", sdxl.denoiser_naming(unet))
    comfy = {"lora_unet_" + k[len(UNET_PREFIX):-len(".weight")].replace(".", "_") for k in unet_to_ldm(unet) if k.endswith(".weight")}
    conv_names = lora_lib.matching_layers(unet, lora_lib.target_pattern("kohya+conv"))
    stems = [naming.stem(name) for name in conv_names]
    assert set(stems) <= comfy and len(set(stems)) == len(conv_names)
    assert naming.stem("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q") == "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    assert naming.stem("up_blocks.0.attentions.2.proj_out") == "lora_unet_output_blocks_2_1_proj_out"
    assert naming.stem("mid_block.attentions.0.transformer_blocks.9.ff.net.2") == "lora_unet_middle_block_1_transformer_blocks_9_ff_net_2"


def test_sdxl_conditioning_is_both_penultimate_states_the_pooled_projection_and_size_ids(tiny_assets):
    model = tiny.build_base_model(tiny_assets["tokenizer"], family="sdxl")
    sdxl = model.model_family
    captions = ["a red circle", "a blue square on a white background"]
    with torch.no_grad():
        encoded = sdxl.encode_text(model.text_encoders, model.tokenizers, captions, torch.device("cpu"))
        ids_l = model.tokenizer(captions, padding="max_length", max_length=77, return_tensors="pt").input_ids
        ids_g = model.tokenizer_2(captions, padding="max_length", max_length=77, return_tensors="pt").input_ids
        out_l = model.text_encoder(ids_l, output_hidden_states=True)
        out_g = model.text_encoder_2(ids_g, output_hidden_states=True)
    assert encoded["hidden"].shape == (2, 77, 64) == (2, 77, model.unet.config.cross_attention_dim)
    assert torch.equal(encoded["hidden"], torch.cat([out_l.hidden_states[-2], out_g.hidden_states[-2]], dim=-1))
    assert torch.equal(encoded["pooled"], out_g.text_embeds)
    assert not torch.equal(out_l.hidden_states[-2], out_l.last_hidden_state), "the penultimate state, not the last"
    eos = len(model.tokenizer) - 1
    assert ids_l[0, -1] == eos and ids_g[0, -1] == 0, "CLIP-L pads with the end token, bigG with token 0 ('!')"
    latents, text, sizes, _ = probe_inputs(model)
    with torch.no_grad():
        one = sdxl.predict(model.unet, latents, torch.tensor([400]), text, sizes)
        other = sdxl.predict(model.unet, latents, torch.tensor([400]), text, sizes + torch.tensor([[0.0, 0.0, 8.0, 0.0, 0.0, 0.0]]))
    assert (one - other).abs().max() > 1e-6, "the size ids reach the UNet"


@pytest.mark.parametrize("crop, flipped", [("center", False), ("center", True), ("random", False), ("random", True)])
def test_size_ids_name_the_pixels_that_were_trained(crop, flipped):
    """Cut the crop the size ids describe out of the resized (mirrored) image: it must be the trained pixels."""
    import numpy as np
    from PIL import Image

    from core.preprocess import cover_size, prepare_image

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (72, 120, 3), dtype=np.uint8))  # 120 x 72
    target, scale = (64, 64), 8
    pixels, geometry = prepare_image(image, *target, center=crop == "center", bucket=True)
    assert geometry.original == (120, 72) and geometry.resized == cover_size((120, 72), *target)
    source = pixels.flip(-1) if flipped else pixels
    latent_left = 0 if crop == "center" else (source.shape[-1] - 64) // scale  # the furthest crop the latent grid allows
    trained = source[:, :64, latent_left * scale:latent_left * scale + 64]
    original_h, original_w, top, left, target_h, target_w = geometry.size_ids(0, latent_left, target, flipped, scale)
    assert (original_h, original_w, target_h, target_w) == (72, 120, 64, 64)
    resized = image.resize(geometry.resized, Image.Resampling.LANCZOS)
    if flipped:
        resized = resized.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    described = torch.from_numpy(np.asarray(resized, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(127.5).sub(1.0)
    assert torch.equal(trained, described[:, top:top + target_h, left:left + target_w])


def test_sdxl_training_feeds_each_image_its_own_size_ids(tiny_assets, tmp_path, monkeypatch):
    from PIL import Image

    from core.dataset import load_folder_dataset
    from core.families.sdxl import SDXL

    root = tmp_path / "mixed"
    root.mkdir()
    sizes = [(96, 64), (64, 128), (80, 80), (200, 64)]
    for i, size in enumerate(sizes):
        Image.new("RGB", size, (60 * i, 90, 160)).save(root / f"{i}.png")
        (root / f"{i}.txt").write_text(f"thing {i}")
    dataset = load_folder_dataset(root, resolution=64)
    model = tiny.build_base_model(tiny_assets["tokenizer"], family="sdxl")
    seen = []
    original = SDXL.predict
    monkeypatch.setattr(SDXL, "predict", lambda self, unet, noisy, t, text, size_ids: seen.append(size_ids.clone()) or original(self, unet, noisy, t, text, size_ids))
    trainer = Trainer(model, dataset, LoRASettings(rank=2), TrainSettings(**{**QUICK, "steps": 4, "batch_size": 1}, crop="random", bucket=True, max_area=64 * 64))
    batches = []
    batch = trainer.images.batch
    trainer.images.batch = lambda indices, rng: batches.append(list(indices)) or batch(indices, rng)
    trainer.run()
    assert len(batches) == 4 and len(seen) >= 4
    for indices, size_ids in zip(batches, seen):
        (index,) = indices
        width, height = sizes[index]
        bucket = trainer.plan.bucket_of(index)
        assert size_ids[0, :2].tolist() == [height, width] and size_ids[0, 4:].tolist() == [bucket[1], bucket[0]]
    assert len({tuple(s[0].tolist()) for s in seen[:4]}) > 1, "different images, different size ids"


class FamilyProbe(Trainer):
    """Records the trained model's outputs (UNet and every text encoder) before the adapters are removed."""

    probe = None

    def _restore_base(self):
        FamilyProbe.probe = outputs(self.base, self.models.text_encoders, self.models.unet)
        super()._restore_base()


def comfy_merge_family(family_assets, tensors):
    """Merge the way ComfyUI does; returns (unet, text encoders) and the keys it could not map."""
    model = family_assets["model"]
    merged_file = family_assets["ldm"].with_name("merged.safetensors")
    state = load_file(str(family_assets["ldm"]))
    stems = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in tensors}
    unet_stems = {"lora_unet_" + k[len(UNET_PREFIX):-len(".weight")].replace(".", "_"): k for k in state if k.startswith(UNET_PREFIX) and k.endswith(".weight")}
    if model.family != "sdxl":  # ComfyUI maps the diffusers paths too; SD2 files use them
        from core.ldm_export import unet_key_to_ldm

        unet_stems.update({"lora_unet_" + name.replace(".", "_"): unet_key_to_ldm(name + ".weight", model.unet.config)
                           for name, m in model.unet.named_modules() if isinstance(m, LAYERS)})
    encoders = [copy.deepcopy(e) for e in model.text_encoders]
    text_stems = {}
    for slot, encoder in zip(model.model_family.text_encoders, encoders):
        for name, module in encoder.named_modules():
            if isinstance(module, LAYERS):
                path = name if name.startswith("text_model.") else "text_model." + name
                text_stems[slot.kohya_prefix + path.replace(".", "_")] = module
    not_loaded = []
    with torch.no_grad():
        for stem in sorted(stems):
            up, down = tensors[f"{stem}.lora_up.weight"].double(), tensors[f"{stem}.lora_down.weight"].double()
            scale = float(tensors[f"{stem}.alpha"]) / down.shape[0]
            if stem in unet_stems:
                key = unet_stems[stem]
                state[key] = (state[key].double() + scale * (up.flatten(1) @ down.flatten(1)).reshape(state[key].shape)).float()
            elif stem in text_stems:
                weight = text_stems[stem].weight
                weight.copy_(weight.double() + scale * (up.flatten(1) @ down.flatten(1)).reshape(weight.shape))
            else:
                not_loaded.append(stem)
    save_file(state, str(merged_file))
    return load_base_model(merged_file, family_assets["tokenizer"]).unet, encoders, not_loaded


def test_saved_lora_merged_like_comfyui_reproduces_the_trained_model(family_assets, tmp_path):
    model = family_assets["model"]
    settings = LoRASettings(rank=4, targets="kohya+conv", train_text_encoder=True)
    result = FamilyProbe(model, tiny_shapes(tmp_path), settings, TrainSettings(**QUICK)).run()
    tensors = save_and_read(result.lora, tmp_path)
    prefixes = {re.match(r"lora_(unet|te\d?)_", k)[0] for k in tensors}
    assert prefixes == ({"lora_unet_", "lora_te1_", "lora_te2_"} if model.family == "sdxl" else {"lora_unet_", "lora_te_"})
    if model.family == "sdxl":
        assert any(k.startswith("lora_unet_input_blocks_") for k in tensors), "kohya's SDXL files use the original LDM names"
    unet, encoders, not_loaded = comfy_merge_family(family_assets, tensors)
    assert not_loaded == [], "ComfyUI would log 'lora key not loaded'"
    plain, merged, trained = outputs(model), outputs(model, encoders, unet), FamilyProbe.probe
    for name, value in trained.items():
        if name.startswith(("unet", "text_0")) or name.startswith("pooled") or (model.family == "sd2" and name == "last_0"):
            assert (plain[name] - value).abs().max() > 1e-4, f"training changed {name}, so the comparison means something"
        assert (merged[name] - value).abs().max() <= 1e-4, name


def tiny_shapes(tmp_path):
    from core.dataset import load_folder_dataset

    return load_folder_dataset(tiny.write_synthetic_dataset(tmp_path / "data", count=4, size=64))


def save_and_read(lora, tmp_path):
    from core.lora import read_lora_file

    path = save_lora_file(lora, tmp_path / "lora.safetensors")
    return read_lora_file(path).tensors


def test_interrupted_and_resumed_run_equals_uninterrupted(family_assets, tmp_path):
    model, data = family_assets["model"], tiny_shapes(tmp_path)
    settings = TrainSettings(**{**QUICK, "steps": 5, "lr_scheduler": "cosine", "learning_rate": 5e-3}, caption_dropout=0.3)
    lora_settings = LoRASettings(rank=2, dropout=0.1, train_text_encoder=True)
    reference = train(model, data, lora_settings, settings)
    stop = StopAtStep(2)
    first = train(model, data, lora_settings, settings, checkpoint_dir=tmp_path / "ck", progress=stop, should_stop=stop.should_stop)
    assert first.interrupted and first.steps == 2
    resumed = train(model, data, lora_settings, settings, checkpoint_dir=tmp_path / "ck", resume_from=tmp_path / "ck")
    assert resumed.resumed_from_step == 2 and resumed.steps == 5
    assert resumed.loss_history == pytest.approx(reference.loss_history, abs=1e-6)
    for key, value in reference.lora.tensors.items():
        assert (resumed.lora.tensors[key] - value).abs().max() <= 1e-6, key


def test_metadata_names_the_family(family_assets, tmp_path):
    model = family_assets["model"]
    metadata = train(model, tiny_shapes(tmp_path), LoRASettings(rank=2), TrainSettings(**QUICK)).lora.metadata
    if model.family == "sdxl":
        assert metadata["ss_base_model_version"] == "sdxl_base_v1-0" and metadata["ss_v2"] == "False"
        assert metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    else:
        assert metadata["ss_base_model_version"] == "sd_v2" and metadata["ss_v2"] == "True"
        assert metadata["modelspec.architecture"] == "stable-diffusion-v2-512/lora"
    assert lora_file_family({}, metadata).name == model.family


def test_a_lora_of_another_family_is_refused_by_name(tiny_assets, family_assets, shapes, tmp_path):
    other = family_assets["model"]
    sd1_lora = save_lora_file(train(tiny_assets["model"], shapes, LoRASettings(rank=2), TrainSettings(**QUICK)).lora, tmp_path / "sd1.safetensors")
    label = other.model_family.label
    with pytest.raises(SettingsError, match=f"sd1.safetensors is an SD1.x LoRA but the base model is {re.escape(label)}"):
        train(other, shapes, LoRASettings(rank=2), TrainSettings(**{**QUICK, "steps": 5}), init_lora=sd1_lora)
    their_lora = save_lora_file(train(other, shapes, LoRASettings(rank=2), TrainSettings(**QUICK)).lora, tmp_path / "other.safetensors")
    with pytest.raises(SettingsError, match=f"other.safetensors is an {re.escape(label)} LoRA but the base model is SD1.x"):
        train(tiny_assets["model"], shapes, LoRASettings(rank=2), TrainSettings(**{**QUICK, "steps": 5}), init_lora=their_lora)
    train(other, shapes, LoRASettings(rank=2), TrainSettings(**QUICK), checkpoint_dir=tmp_path / "ck")
    with pytest.raises(TrainerError, match=f"trained on an {re.escape(label)} base and this base model is SD1.x"):
        train(tiny_assets["model"], shapes, LoRASettings(rank=2), TrainSettings(**{**QUICK, "steps": 5}), resume_from=tmp_path / "ck")


def test_family_defaults_fill_what_the_user_left_open(tiny_assets):
    sdxl = tiny.build_base_model(tiny_assets["tokenizer"], family="sdxl")
    resolved = TrainSettings(resolution=None, bucket=None).for_base(sdxl)
    assert (resolved.resolution, resolved.bucket) == (1024, True)
    assert TrainSettings(resolution=None, bucket=None).for_base(tiny_assets["model"]).resolution == 512
    assert TrainSettings(resolution=768, bucket=False).for_base(sdxl).resolution == 768
    from core import buckets

    grid = buckets.bucket_grid(1024 * 1024)
    for size in [(1024, 1024), (1152, 896), (896, 1152), (1216, 832), (832, 1216), (1344, 768), (768, 1344), (1536, 640), (640, 1536)]:
        assert size in grid, f"SDXL's trained resolution {size} is a bucket at 1024"


def _tensors(path, shapes):
    save_file({k: torch.zeros(shape) for k, shape in shapes.items()}, str(path))
    return path


@pytest.mark.parametrize("keys, expected", [
    ({"model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight": (2,)}, "an SD3 checkpoint"),
    ({"double_blocks.0.img_attn.qkv.weight": (2,)}, "a Flux checkpoint"),
    ({"model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3), "conditioner.embedders.0.model.ln_final.weight": (2,),
      "first_stage_model.decoder.conv_in.weight": (2,)}, "an SDXL refiner"),
    ({"model.diffusion_model.input_blocks.0.0.weight": (8, 9, 3, 3), "model.diffusion_model.label_emb.0.0.weight": (2, 2),
      "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": (2,), "conditioner.embedders.1.model.ln_final.weight": (2,),
      "first_stage_model.decoder.conv_in.weight": (2,)}, "an SDXL inpainting model"),
    ({"model.diffusion_model.input_blocks.0.0.weight": (8, 9, 3, 3), "cond_stage_model.model.ln_final.weight": (2,),
      "first_stage_model.decoder.conv_in.weight": (2,)}, "an SD2.x inpainting model"),
    ({"model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3), "conditioner.embedders.1.model.ln_final.weight": (2,)}, "an SDXL checkpoint without its VAE"),
])
def test_models_we_do_not_train_are_refused_in_one_sentence(tmp_path, keys, expected):
    with pytest.raises(ModelLoadError, match=expected) as error:
        load_base_model(_tensors(tmp_path / "model.safetensors", keys), None)
    assert str(error.value).count(". ") == 0 and str(error.value).endswith("."), "one sentence"


def test_sd2_prediction_follows_metadata_then_comfyuis_rule(tiny_assets, tmp_path):
    model = tiny.build_base_model(tiny_assets["tokenizer"], family="sd2")
    plain = tiny.save_ldm_checkpoint(model, tmp_path / "plain.safetensors")
    assert load_base_model(plain, tiny_assets["tokenizer"]).prediction_type == "epsilon"
    state = load_file(str(plain))
    save_file(state, str(tmp_path / "declared.safetensors"), metadata={"modelspec.prediction_type": "v"})
    declared = load_base_model(tmp_path / "declared.safetensors", tiny_assets["tokenizer"])
    assert declared.prediction_type == "v_prediction" and "metadata" in declared.prediction_reason
    state[UNET_PREFIX + "output_blocks.11.1.transformer_blocks.0.norm1.bias"] = torch.randn(64)  # spread out, as a 768-v model's
    save_file(state, str(tmp_path / "spread.safetensors"))
    spread = load_base_model(tmp_path / "spread.safetensors", tiny_assets["tokenizer"])
    assert spread.prediction_type == "v_prediction" and "ComfyUI" in spread.prediction_reason
    assert family_named("sd2").training_resolution(spread) == 768
    forced = load_base_model(tmp_path / "spread.safetensors", tiny_assets["tokenizer"], prediction_type="epsilon")
    assert forced.prediction_type == "epsilon"
    assert family_named("sd2").metadata("v_prediction")["ss_base_model_version"] == "sd_v2_v"


class StopAfterInit(Exception):
    pass


class InitRoundTrip(Trainer):
    """Stops once the initial LoRA file is loaded, keeping the file this run would write from it."""

    exported = None

    def _fast_forward_schedule(self, step):
        from core.export import export_lora

        InitRoundTrip.exported = export_lora(self, step).tensors
        raise StopAfterInit


@pytest.mark.parametrize("adapter", [dict(use_dora=True), dict(adapter="loha"), dict(adapter="lokr")], ids=["dora", "loha", "lokr"])
def test_every_adapter_type_continues_from_its_sdxl_file(tiny_assets, tmp_path, adapter):
    """A LoCon + both-text-encoder file of each type, read back by --init-lora, is the same file again."""
    model = tiny.build_base_model(tiny_assets["tokenizer"], family="sdxl")
    settings = LoRASettings(rank=2, targets="kohya+conv", conv_rank=2, train_text_encoder=True, **adapter)
    first = train(model, tiny_shapes(tmp_path), settings, TrainSettings(**QUICK))
    path = save_lora_file(first.lora, tmp_path / "first.safetensors")
    assert {re.match(r"lora_(unet|te\d)_", k)[0] for k in first.lora.tensors} == {"lora_unet_", "lora_te1_", "lora_te2_"}
    with pytest.raises(StopAfterInit):
        InitRoundTrip(model, tiny_shapes(tmp_path), settings, TrainSettings(**{**QUICK, "steps": 5}), init_lora=path).run()
    again = InitRoundTrip.exported
    assert set(again) == set(first.lora.tensors)
    largest = max(float(value.abs().max()) for value in first.lora.tensors.values())
    for key, value in first.lora.tensors.items():
        assert (again[key] - value).abs().max() <= 1e-6 * max(1.0, largest), key


def test_a_lora_file_without_metadata_is_placed_by_its_cross_attention_width():
    stem = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    lokr_sd2 = {f"{stem}.lokr_w1": torch.zeros(16, 32), f"{stem}.lokr_w2_a": torch.zeros(40, 4), f"{stem}.lokr_w2_b": torch.zeros(4, 32)}
    assert lora_file_family(lokr_sd2, {}).name == "sd2", "a LoKr's input width is the product of its factors'"
    assert lora_file_family({f"{stem}.lora_down.weight": torch.zeros(4, 768)}, {}).name == "sd1"
    assert lora_file_family({f"{stem}.hada_w1_b": torch.zeros(4, 2048)}, {}).name == "sdxl"
    assert lora_file_family({"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 8)}, {}).name == "sdxl"
    assert lora_file_family({f"{stem}.lora_down.weight": torch.zeros(4, 32)}, {}) is None, "a width no family has says nothing"


def test_each_sdxl_text_encoder_can_have_its_own_learning_rate(tiny_assets, tmp_path):
    model = tiny.build_base_model(tiny_assets["tokenizer"], family="sdxl")
    settings = TrainSettings(**{**QUICK, "steps": 1, "learning_rate": 2e-3}, text_encoder_learning_rate=1e-3, text_encoder_2_learning_rate=5e-4)
    trainer = Trainer(model, tiny_shapes(tmp_path), LoRASettings(rank=2, train_text_encoder=True), settings)
    result = trainer.run()
    assert [group["lr"] for group in trainer.optimizer.param_groups] == [2e-3, 1e-3, 5e-4]
    assert result.lora.metadata["ss_text_encoder_lr"] == "0.001,0.0005"
    same = TrainSettings(**QUICK, text_encoder_learning_rate=1e-3).text_encoder_rates()
    assert same == (1e-3, 1e-3), "the second encoder follows the first unless told otherwise"
