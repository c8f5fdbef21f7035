"""The nodes with SD2.x and SDXL bases: the family on the node, its defaults, an 8 GB card, LoRAs of another family."""
from __future__ import annotations

import shutil

import pytest
import torch

from core import tiny
from node_support import StandinComfy, load_suite

suite = load_suite()
from lora_trainer_suite.core.errors import SettingsError  # noqa: E402
from lora_trainer_suite.nodes import comfy_bridge, run_log  # noqa: E402
from lora_trainer_suite.nodes import nodes as N  # noqa: E402
from lora_trainer_suite.nodes import training_run  # noqa: E402

FAST_TRAIN = dict(steps=2, learning_rate=5e-3, batch_size=2, resolution=64, training_seed=3, save_every=0, checkpoint_folder="xl",
                  lr_scheduler="constant", warmup_steps=0, precision="fp32", gradient_checkpointing=False, random_flip=False)


@pytest.fixture(scope="module")
def family_files(tiny_assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("family_files")
    return {family: tiny.save_ldm_checkpoint(tiny.build_base_model(tiny_assets["tokenizer"], family=family), root / f"tiny_{family}.safetensors")
            for family in ("sd2", "sdxl")}


@pytest.fixture
def comfy(tmp_path, tiny_assets, family_files):
    standin = StandinComfy(tmp_path / "comfy", tiny_assets["tokenizer"])
    shutil.copy(tiny_assets["ldm"], standin.models / "checkpoints" / "tiny_sd15.safetensors")
    for path in family_files.values():
        shutil.copy(path, standin.models / "checkpoints" / path.name)
    previous = comfy_bridge.use(standin)
    run_log.clear()
    yield standin
    comfy_bridge.use(previous)


def node(name):
    return N.NODE_CLASS_MAPPINGS[N.PREFIX + name]()


def load(name, precision="auto"):
    with torch.inference_mode():  # as ComfyUI runs every node
        return node("LoadBaseCheckpoint").load(name, precision, unique_id="3")[0]


@pytest.mark.parametrize("name, label, size", [("tiny_sd15.safetensors", "SD1.x", 512), ("tiny_sd2.safetensors", "SD2.x", 512), ("tiny_sdxl.safetensors", "SDXL", 1024)])
def test_load_base_checkpoint_shows_the_family_on_the_node(comfy, name, label, size):
    base = load(name)
    assert base.model_family.label == label
    [shown] = [data for event, data in comfy.events if event == "lora_trainer.base"]
    assert shown["node"] == "3" and shown["text"].startswith(f"{label}, trains at {size} px, target epsilon")


def test_storage_precision_reaches_every_text_encoder(comfy):
    base = load("tiny_sdxl.safetensors", "bf16")
    assert {base.unet.dtype, base.text_encoder.dtype, base.text_encoder_2.dtype} == {torch.bfloat16}
    assert base.vae.dtype == torch.float32, "the VAE stays fp32: SDXL's overflows in fp16"


def test_train_lora_leaves_size_and_buckets_to_the_family(comfy, monkeypatch):
    sdxl, sd1 = load("tiny_sdxl.safetensors"), load("tiny_sd15.safetensors")
    widgets = {k: v for k, v in FAST_TRAIN.items() if k not in ("resolution", "training_seed")}
    cpu = torch.device("cpu")
    for base, size, buckets in ((sdxl, 1024, True), (sd1, 512, False)):
        settings = training_run.node_settings(base, cpu, resolution=0, aspect_buckets="auto", seed=0, **widgets).for_base(base)
        assert (settings.resolution, settings.bucket) == (size, buckets)
    forced = training_run.node_settings(sdxl, cpu, resolution=768, aspect_buckets="off", seed=0, **widgets).for_base(sdxl)
    assert (forced.resolution, forced.bucket) == (768, False)
    with pytest.raises(Exception, match="Aspect buckets must be one of auto, on, off"):
        training_run.node_settings(sdxl, cpu, resolution=0, aspect_buckets="sometimes", seed=0, **widgets)


@pytest.mark.parametrize("gib, expected", [(8, True), (12, True), (16, False), (24, False)])
def test_sdxl_on_a_small_card_turns_gradient_checkpointing_on(comfy, monkeypatch, gib, expected):
    from lora_trainer_suite.core import devices

    monkeypatch.setattr(devices, "accelerator_memory", lambda device: gib * 2**30)
    widgets = {k: v for k, v in FAST_TRAIN.items() if k not in ("resolution", "training_seed")}
    sdxl, sd1 = load("tiny_sdxl.safetensors"), load("tiny_sd15.safetensors")
    settings = training_run.node_settings(sdxl, torch.device("cpu"), resolution=0, aspect_buckets="auto", seed=0, **widgets)
    assert settings.gradient_checkpointing is expected
    assert training_run.node_settings(sd1, torch.device("cpu"), resolution=0, aspect_buckets="auto", seed=0, **widgets).gradient_checkpointing is False


def test_sdxl_trains_in_the_graph_and_its_lora_is_refused_on_an_sd1_model(comfy, tiny_assets, tmp_path):
    base = load("tiny_sdxl.safetensors")
    (data,) = node("FolderDataset").load(str(tiny.write_synthetic_dataset(tmp_path / "data", count=4, size=64)), "auto", 1)
    (config,) = node("LoRAConfig").configure(2, 0.0, 0.0, "kohya", True)
    with torch.inference_mode():
        lora, loss = node("TrainLoRA").train(base, data, config, **FAST_TRAIN, aspect_buckets="off", unique_id="7")
    assert len(loss["loss"]) == 2 and lora.metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    assert {key.split("_")[1] for key in lora} == {"unet", "te1", "te2"}
    assert lora.modules == len({k.rsplit(".", 2)[0] for k in lora if k.endswith("lora_down.weight")})
    sd1_model = tiny_assets["model"].unet
    sd1_model.lora_trainer_family = "sd1"
    try:
        with pytest.raises(SettingsError, match="The LoRA is an SDXL LoRA but the base model is SD1.x"):
            node("ApplyLoRA").apply(sd1_model, lora, 1.0, 1.0)
    finally:
        del sd1_model.lora_trainer_family
    saved = node("SaveLoRA").save(lora, "xl_lora", False)
    assert saved["result"] == ("xl_lora.safetensors",)
