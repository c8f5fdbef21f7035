import functools
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from core import tiny
from core.errors import ModelLoadError
from core.model_loading import CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX, load_base_model

ROOT = Path(__file__).resolve().parent.parent


def _outputs(model):
    torch.manual_seed(0)
    latents = torch.randn(1, 4, 8, 8)
    text = torch.randn(1, 77, model.unet.config.cross_attention_dim)
    pixels = torch.rand(1, 3, 64, 64) * 2 - 1
    ids = model.tokenizer(["a red circle"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        return {
            "unet": model.unet(latents, torch.tensor([500]), text).sample,
            "vae": model.vae.encode(pixels).latent_dist.mean,
            "vae_decode": model.vae.decode(latents).sample,
            "text_encoder": model.text_encoder(ids)[0],
        }


def test_ldm_file_and_diffusers_folder_load_identical_modules(tiny_assets):
    from_ldm = load_base_model(tiny_assets["ldm"], tiny_assets["tokenizer"])
    from_diffusers = load_base_model(tiny_assets["diffusers"])
    reference = _outputs(tiny_assets["model"])
    for loaded in (from_ldm, from_diffusers):
        for name, value in _outputs(loaded).items():
            assert torch.allclose(value, reference[name], atol=1e-6), name
    assert from_ldm.unet.config.block_out_channels == [32, 64]
    assert from_ldm.unet.config.down_block_types == ["CrossAttnDownBlock2D", "DownBlock2D"]
    assert from_ldm.vae_scale_factor == 8


def test_inferred_full_size_config_matches_sd15(tmp_path, tiny_assets):
    """The real SD1.5 architecture is recovered from shapes alone (weights built on the meta device)."""
    from diffusers import UNet2DConditionModel

    from core.ldm_export import unet_to_ldm
    from core.model_loading import infer_unet_config, load_json_config

    reference = load_json_config("sd15_unet.json")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(reference)
    inferred = infer_unet_config(unet_to_ldm(unet))
    for key in ("block_out_channels", "layers_per_block", "down_block_types", "up_block_types", "cross_attention_dim", "attention_head_dim"):
        assert inferred[key] == reference[key], key


def _write(path, tensors):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


@pytest.mark.parametrize(
    "keys, expected",
    [
        ({"conditioner.embedders.1.model.ln_final.weight": 2, "model.diffusion_model.label_emb.0.0.weight": 2}, "SDXL"),
        ({"double_blocks.0.img_attn.qkv.weight": 2}, "Flux"),
        ({"encoder.down.0.block.0.conv1.weight": 2, "decoder.up.0.block.0.conv1.weight": 2}, "VAE on its own"),
        ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": 2}, "LoRA file"),
        ({"lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_a": 2}, "LoRA file"),
        ({"lora_unet_down_blocks_0_attentions_0_proj_in.lokr_w1": 2}, "LoRA file"),
        ({"model.diffusion_model.input_blocks.0.0.weight": 2, "cond_stage_model.model.ln_final.weight": 2, "first_stage_model.x": 2}, "SD2.x"),
    ],
)
def test_unsupported_checkpoints_are_named(tmp_path, keys, expected):
    path = _write(tmp_path / "model.safetensors", {k: torch.zeros(v) for k, v in keys.items()})
    with pytest.raises(ModelLoadError, match=expected):
        load_base_model(path, None)


def test_truncated_checkpoint(tmp_path, tiny_assets):
    data = tiny_assets["ldm"].read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated"):
        load_base_model(path, tiny_assets["tokenizer"])


def test_text_file_renamed(tmp_path):
    path = tmp_path / "notes.safetensors"
    path.write_text("these are my notes, not a model\n" * 10)
    with pytest.raises(ModelLoadError, match="not a valid safetensors file"):
        load_base_model(path, None)


def test_empty_and_missing_checkpoint(tmp_path):
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        load_base_model(empty, None)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_base_model(tmp_path / "nope.safetensors", None)


class _Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_ckpt_with_pickled_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": _Payload()}, handle)
    with pytest.raises(ModelLoadError, match="refused"):
        load_base_model(path, None)
    assert "pickled code ran" not in capsys.readouterr().out


def test_plain_ckpt_loads_with_weights_only(tmp_path, tiny_assets):
    from safetensors.torch import load_file

    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(str(tiny_assets["ldm"]))}, path)
    model = load_base_model(path, tiny_assets["tokenizer"])
    assert model.unet.config.block_out_channels == [32, 64]


@pytest.mark.parametrize("zip_format", [True, False])
def test_ckpt_reads_each_component_in_its_dtype_and_skips_ema(tmp_path, tiny_assets, zip_format):
    from safetensors.torch import load_file

    from core.model_loading import _ldm_dtype, read_state_dict

    stored = load_file(str(tiny_assets["ldm"]))
    ema = {"model_ema." + key.split(".", 2)[-1].replace(".", ""): value for key, value in stored.items() if key.startswith(UNET_PREFIX)}
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {**stored, **ema}}, path, _use_new_zipfile_serialization=zip_format)
    state = read_state_dict(path, functools.partial(_ldm_dtype, dtype=torch.bfloat16))
    assert set(state) == set(stored)
    for key, value in state.items():
        expected = torch.float32 if key.startswith(VAE_PREFIX) else torch.bfloat16
        assert value.dtype == expected and torch.equal(value, stored[key].to(expected)), key
    model = load_base_model(path, tiny_assets["tokenizer"], dtype=torch.bfloat16)
    assert model.unet.dtype == torch.bfloat16 and model.vae.dtype == torch.float32


PEAK_RSS_WHILE_READING = """
import sys, torch
from core.model_loading import read_state_dict
def peak():
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]) * 1024
before = peak()
state = read_state_dict(__import__("pathlib").Path(sys.argv[1]), lambda key: None if key.startswith("model_ema.") else torch.float32)
print(peak() - before, sorted(state))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmHWM from /proc")
def test_ckpt_tensors_that_are_skipped_are_never_read(tmp_path):
    path = tmp_path / "with_ema.ckpt"
    kept = {f"{prefix}weight": torch.ones(8) for prefix in (UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX)}
    torch.save({**kept, **{f"model_ema.w{i}": torch.ones(8 << 20) for i in range(8)}}, path)  # 256 MiB of EMA
    process = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_WHILE_READING, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert process.returncode == 0, process.stderr
    growth, keys = process.stdout.split(maxsplit=1)
    assert keys.strip() == str(sorted(kept))
    assert int(growth) < 64 << 20, f"reading grew the peak by {int(growth) >> 20} MiB for 32 bytes kept"


def test_tokenizer_folder_missing_files(tmp_path, tiny_assets):
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "vocab.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="merges.txt"):
        load_base_model(tiny_assets["ldm"], tmp_path / "tok")
    with pytest.raises(ModelLoadError, match="--tokenizer"):
        load_base_model(tiny_assets["ldm"], None)


def test_tokenizer_must_match_text_encoder(tmp_path, tiny_assets):
    other = tiny.write_tiny_tokenizer(tmp_path / "other", words=["zebra"])
    with pytest.raises(ModelLoadError, match="tokens"):
        load_base_model(tiny_assets["ldm"], other)


def test_streamed_safetensors_read_casts_floats_only(tmp_path):
    from safetensors.torch import load_file

    from core.model_loading import read_safetensors_as

    tensors = {
        "f32": torch.randn(3, 5), "f16": torch.randn(7).half(), "bf16": torch.randn(2, 2, 2).bfloat16(),
        "i64": torch.arange(6).view(2, 3), "flag": torch.tensor([True, False]), "empty": torch.zeros(0, 4),
    }
    path = tmp_path / "mixed.safetensors"
    save_file(tensors, str(path), metadata={"note": "x"})
    streamed = read_safetensors_as(path, torch.bfloat16)
    expected = load_file(str(path))
    assert set(streamed) == set(expected)
    for key, value in expected.items():
        wanted = value.to(torch.bfloat16) if value.is_floating_point() else value
        assert streamed[key].dtype == wanted.dtype and torch.equal(streamed[key], wanted), key
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(ModelLoadError, match="truncated"):
        read_safetensors_as(path, torch.float32)


def test_diffusers_folder_in_another_dtype_is_read_streamed_and_matches_from_pretrained(tiny_assets, monkeypatch):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from core import model_loading

    streamed = []
    original = model_loading.read_safetensors_as
    monkeypatch.setattr(model_loading, "read_safetensors_as", lambda path, dtype: streamed.append(path.parent.name) or original(path, dtype))
    model = load_base_model(tiny_assets["diffusers"], dtype=torch.bfloat16)
    assert streamed == ["unet", "text_encoder"]
    folder = tiny_assets["diffusers"]
    for loaded, reference in (
        (model.unet, UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.bfloat16)),
        (model.text_encoder, CLIPTextModel.from_pretrained(folder / "text_encoder", torch_dtype=torch.bfloat16)),
    ):
        expected = reference.state_dict()
        assert set(loaded.state_dict()) == set(expected)
        for key, value in loaded.state_dict().items():
            assert value.dtype == expected[key].dtype and torch.equal(value, expected[key]), key
    assert next(model.vae.parameters()).dtype == torch.float32
    streamed.clear()
    load_base_model(tiny_assets["diffusers"], dtype=torch.float32)
    assert streamed == []  # same dtype as stored: diffusers' own zero-copy load


def test_single_file_is_read_streamed_in_each_components_dtype_skipping_unused_tensors(tiny_assets, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from core import model_loading

    state = load_file(str(tiny_assets["ldm"]))
    state["model_ema.decay"] = torch.tensor(0.9999)
    state["model_ema.diffusion_modelinput_blocks00weight"] = torch.randn(8, 4, 3, 3)
    path = tmp_path / "with_ema.safetensors"
    save_file(state, str(path))
    reads = []
    original = model_loading.read_safetensors_as
    monkeypatch.setattr(model_loading, "read_safetensors_as", lambda p, dtype: reads.append(original(p, dtype)) or reads[-1])
    model = load_base_model(path, tiny_assets["tokenizer"], dtype=torch.bfloat16)
    [read] = reads
    assert not any(key.startswith("model_ema.") for key in read)
    assert {t.dtype for k, t in read.items() if k.startswith(model_loading.VAE_PREFIX)} == {torch.float32}
    reference = load_base_model(tiny_assets["diffusers"], dtype=torch.bfloat16)
    for part in ("unet", "vae", "text_encoder"):
        expected = getattr(reference, part).state_dict()
        for key, value in getattr(model, part).state_dict().items():
            assert value.dtype == expected[key].dtype and torch.equal(value, expected[key]), (part, key)
    reads.clear()
    load_base_model(path, tiny_assets["tokenizer"], dtype=torch.float32)
    assert reads == []  # stored as wanted: memory-mapped, untouched tensors cost nothing
