"""The node layer against a stand-in of ComfyUI: every node, the full graph, cancel + resume, names, events."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from core import tiny
from node_support import ROOT, Interrupted, StandinComfy, load_suite

suite = load_suite()
from lora_trainer_suite.core.errors import DatasetError, OutputPathError, SettingsError, TrainerError  # noqa: E402
from lora_trainer_suite.nodes import comfy_bridge, run_log  # noqa: E402
from lora_trainer_suite.nodes import nodes as N  # noqa: E402

COMFY_CORE_IDS = {"SaveLoRA", "TrainLoraNode", "LoraModelLoader", "LossGraphNode", "LoraLoader", "LoraLoaderModelOnly", "CheckpointLoaderSimple"}
FAST_TRAIN = dict(steps=6, learning_rate=5e-3, batch_size=2, resolution=64, training_seed=3, save_every=0, checkpoint_folder="run",
                  lr_scheduler="constant", warmup_steps=0, precision="fp32", gradient_checkpointing=False, random_flip=False)


@pytest.fixture
def comfy(tmp_path, tiny_assets):
    standin = StandinComfy(tmp_path / "comfy", tiny_assets["tokenizer"])
    shutil.copy(tiny_assets["ldm"], standin.models / "checkpoints" / "tiny_sd15.safetensors")
    tiny.save_diffusers_folder(tiny_assets["model"], standin.models / "diffusers" / "tiny_folder", tiny_assets["tokenizer"])
    previous = comfy_bridge.use(standin)
    run_log.clear()
    yield standin
    comfy_bridge.use(previous)


@pytest.fixture
def dataset_dir(tmp_path):
    """Four images keep the many short trainings here fast (the shared fixture has six)."""
    return tiny.write_synthetic_dataset(tmp_path / "data", count=4, size=64)


def node(name):
    return N.NODE_CLASS_MAPPINGS[N.PREFIX + name]()


def build_inputs(comfy, dataset_dir, rank=4):
    with torch.inference_mode():  # as ComfyUI runs every node
        (base,) = node("LoadBaseCheckpoint").load("tiny_sd15.safetensors", "auto")
        (data,) = node("FolderDataset").load(str(dataset_dir), "auto", 1)
        (config,) = node("LoRAConfig").configure(rank, 0.0, 0.0, "kohya", False)
    return base, data, config


def train(base, data, config, unique_id="7", **overrides):
    with torch.inference_mode():  # as ComfyUI runs every node: training must step out of it itself
        return node("TrainLoRA").train(base, data, config, **{**FAST_TRAIN, **overrides}, unique_id=unique_id)


# --------------------------------------------------------------------------- interface


def test_every_node_has_prefixed_id_description_and_tooltips():
    assert set(suite.NODE_CLASS_MAPPINGS) == set(suite.NODE_DISPLAY_NAME_MAPPINGS)
    assert suite.WEB_DIRECTORY == "./web"
    assert len(suite.NODE_CLASS_MAPPINGS) == 11  # 8 + CompareGrid, DatasetPreview (nodes/compare.py) + the Training Options node (nodes/options.py)
    for node_id, cls in suite.NODE_CLASS_MAPPINGS.items():
        assert node_id.startswith("LoRATrainer_") and node_id not in COMFY_CORE_IDS
        assert cls.CATEGORY == "LoRA Trainer" and len(cls.DESCRIPTION) > 40
        assert callable(getattr(cls, cls.FUNCTION))
        assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, declared in spec.get(section, {}).items():
                assert declared[1].get("tooltip"), f"{node_id}.{name} has no tooltip"


def test_lora_and_loss_use_comfyui_type_names():
    train_cls = suite.NODE_CLASS_MAPPINGS["LoRATrainer_TrainLoRA"]
    assert train_cls.RETURN_TYPES == ("LORA_MODEL", "LOSS_MAP")
    assert suite.NODE_CLASS_MAPPINGS["LoRATrainer_SaveLoRA"].INPUT_TYPES()["required"]["lora"][0] == "LORA_MODEL"
    seed = train_cls.INPUT_TYPES()["required"]["training_seed"][1]
    assert seed["control_after_generate"] is False, "a randomizing seed widget would retrain on every queue"
    assert not hasattr(train_cls, "IS_CHANGED"), "TrainLoRA must stay cacheable"


def test_import_is_cheap_and_pulls_no_heavy_library():
    code = (
        "import sys, time; sys.path.insert(0, 'tests'); t = time.perf_counter();"
        "from node_support import load_suite; s = load_suite(); dt = time.perf_counter() - t;"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers', 'peft', 'datasets', 'folder_paths') if m in sys.modules];"
        "print(dt, heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split(" ", 1)
    assert out[1].strip() == "[]", f"importing the suite imported {out[1]}"
    assert float(out[0]) < 1.0


# --------------------------------------------------------------------------- the graph


def test_full_graph_from_checkpoint_to_saved_lora(comfy, dataset_dir):
    from safetensors import safe_open

    assert "tiny_sd15.safetensors" in N.checkpoint_choices() and "[diffusers] tiny_folder" in N.checkpoint_choices()
    base, data, config = build_inputs(comfy, dataset_dir)
    (captioned,) = node("Captioner").caption(data, "keep", "sks shapes")
    assert all(entry.caption.startswith("sks shapes, ") for entry in captioned.entries)
    lora, loss = train(base, captioned, config)
    assert comfy.calls.index("free_memory") < comfy.calls.index("empty_cache")
    assert len(loss["loss"]) == 6 and all(isinstance(v, float) for v in loss["loss"])
    bar = comfy.bars[-1]
    assert bar.node_id == "7" and [u[0] for u in bar.updates] == [1, 2, 3, 4, 5, 6]
    events = [data for name, data in comfy.events if name == "lora_trainer.progress"]
    train_events = [e for e in events if e["phase"] == "train"]
    assert events[0]["phase"] == "start" and events[-1]["phase"] == "done"
    assert sum(len(e["losses"]) for e in train_events) == 6, "throttling must not drop points of the curve"
    assert {"step", "total", "loss", "smoothed_loss", "lr", "seconds_per_step", "eta_seconds"} <= set(train_events[0])
    assert all(e["node"] == "7" for e in events)

    result = node("SaveLoRA").save(lora, "shapes/first", False)
    assert result["result"] == ("shapes/first.safetensors",)
    path = comfy.models / "loras" / "shapes" / "first.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
    assert keys and all(k.startswith("lora_unet_") for k in keys)
    assert metadata["ss_network_dim"] == "4" and metadata["ss_steps"] == "6"
    assert '"sks shapes"' in metadata["ss_tag_frequency"]
    # The base model the graph keeps cached is unchanged: no adapters left behind.
    assert not any("lora" in name for name, _ in base.unet.named_modules())
    status, body = run_log.handle_request({"node_id": "7"}, {})
    assert status == 200 and body["points"] == 6 and body["status"] == "done"


def test_diffusers_folder_checkpoint_loads(comfy):
    (base,) = node("LoadBaseCheckpoint").load("[diffusers] tiny_folder", "fp32")
    assert base.unet.config.cross_attention_dim == 32
    with pytest.raises(OutputPathError):
        N.resolve_checkpoint("[diffusers] ../checkpoints")


def test_cancel_then_resume_reaches_the_uninterrupted_lora(comfy, dataset_dir):
    base, data, config = build_inputs(comfy, dataset_dir)
    full_lora, full_loss = train(base, data, config, checkpoint_folder="straight", steps=8)

    comfy.interrupt_at_step = 3
    with pytest.raises(Interrupted):
        train(base, data, config, checkpoint_folder="cancelled", steps=8)
    saved = sorted(p.name for p in (comfy.models / "lora_logs" / "cancelled").iterdir() if not p.name.startswith("."))
    assert saved == ["checkpoint-000003"]
    assert [e["phase"] for _, e in comfy.events][-1] == "interrupted"

    comfy.interrupt_at_step = None
    resumed_lora, resumed_loss = train(base, data, config, checkpoint_folder="cancelled", steps=8)
    assert comfy.bars[-1].updates[0][0] == 3, "the bar starts where the checkpoint left off"
    status, record = run_log.handle_request({"node_id": "7"}, {})
    assert record["resumed_from"] == 3 and record["points"] == 8, "the recorded curve continues the cancelled one"
    assert set(resumed_lora) == set(full_lora)
    assert max(float((resumed_lora[k] - full_lora[k]).abs().max()) for k in full_lora) <= 1e-6
    assert resumed_loss["loss"] == pytest.approx(full_loss["loss"], abs=1e-6)

    # Queued again after it finished (e.g. after a restart): no training, the same LoRA back.
    comfy.bars.clear()
    again, _ = train(base, data, config, checkpoint_folder="cancelled", steps=8)
    assert comfy.bars[-1].updates == [(8, 8, None)]
    assert all(torch.equal(again[k], resumed_lora[k]) for k in again)


def test_resume_refuses_another_runs_checkpoint_folder(comfy, dataset_dir):
    base, data, config = build_inputs(comfy, dataset_dir)
    train(base, data, config, checkpoint_folder="shared", steps=4)
    (other_config,) = node("LoRAConfig").configure(8, 0.0, 0.0, "kohya", False)
    with pytest.raises(TrainerError, match="different run.*rank 4 vs 8"):
        train(base, data, other_config, checkpoint_folder="shared", steps=4)
    with pytest.raises(TrainerError, match="beyond the 2 steps"):
        train(base, data, config, checkpoint_folder="shared", steps=2)


@pytest.mark.parametrize("folder", ["../escape", "/etc", "a/../../b", "", ".hidden", "a\\b"])
def test_checkpoint_folder_cannot_leave_lora_logs(comfy, dataset_dir, folder):
    base, data, config = build_inputs(comfy, dataset_dir)
    with pytest.raises(OutputPathError):
        train(base, data, config, checkpoint_folder=folder)
    assert "free_memory" not in comfy.calls, "bad names are refused before any model is unloaded"


# --------------------------------------------------------------------------- SaveLoRA and ApplyLoRA


@pytest.mark.parametrize("name", ["../outside", "/abs/path", "sub/../../x", "", "  ", ".hidden", "con", "a:b", "a/./b"])
def test_save_lora_refuses_names_that_leave_the_folder(comfy, name):
    with pytest.raises(OutputPathError):
        node("SaveLoRA").save({"lora_unet_x.lora_down.weight": torch.ones(1, 2)}, name, True)
    written = [p for p in comfy.root.rglob("*.safetensors") if not {"checkpoints", "diffusers"} & set(p.parts)]
    assert written == []


def test_save_lora_never_silently_overwrites(comfy):
    first = {"lora_unet_x.lora_down.weight": torch.ones(1, 2)}
    second = {"lora_unet_x.lora_down.weight": torch.zeros(1, 2)}
    save = node("SaveLoRA").save
    assert save(first, "mine.safetensors", False)["result"] == ("mine.safetensors",)
    assert save(first, "mine", False)["result"] == ("mine.safetensors",), "the same LoRA again is not an error"
    with pytest.raises(OutputPathError, match="already exists"):
        save(second, "mine", False)
    save(second, "mine", True)
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(comfy.models / "loras" / "mine.safetensors"))["lora_unet_x.lora_down.weight"], second["lora_unet_x.lora_down.weight"])
    assert [p.name for p in (comfy.models / "loras").iterdir()] == ["mine.safetensors"], "no temp files left behind"


def test_apply_lora_changes_the_model_and_maps_every_key(comfy, dataset_dir, tiny_assets):
    base, data, config = build_inputs(comfy, dataset_dir)
    lora, _ = train(base, data, config, steps=3)
    model = tiny_assets["model"].unet
    patched, clip = node("ApplyLoRA").apply(model, lora, 1.0, 1.0)
    assert clip is None and comfy.unloaded_keys == []
    torch.manual_seed(0)
    sample, text = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 32)
    with torch.no_grad():
        before = model(sample, torch.tensor([500]), text).sample
        after = patched(sample, torch.tensor([500]), text).sample
    assert (after - before).abs().max() > 1e-4
    unchanged, _ = node("ApplyLoRA").apply(model, lora, 0.0, 1.0)
    with torch.no_grad():
        assert torch.allclose(unchanged(sample, torch.tensor([500]), text).sample, before)


@pytest.mark.parametrize("adapter, prefix", [("loha", "hada_"), ("lokr", "lokr_")])
def test_lora_config_trains_lycoris_adapters_when_asked(comfy, dataset_dir, adapter, prefix):
    base, data, _ = build_inputs(comfy, dataset_dir)
    (config,) = node("LoRAConfig").configure(2, 0.0, 0.0, "attention", False, adapter=adapter)
    lora, _ = train(base, data, config, steps=2)
    assert lora.modules > 0 and all(key.rsplit(".", 1)[1].startswith(prefix) or key.endswith(".alpha") for key in lora)
    assert lora.metadata["ss_network_module"] == "lycoris.kohya"
    with pytest.raises(SettingsError, match="adapters have no input dropout"):
        node("LoRAConfig").configure(2, 0.0, 0.1, "kohya", False, adapter=adapter)


def test_lora_config_reaches_dora_locon_and_text_encoder_rank(comfy, dataset_dir):
    base, data, _ = build_inputs(comfy, dataset_dir)
    (config,) = node("LoRAConfig").configure(2, 0.0, 0.0, "kohya+conv", True, dora=True, conv_rank=3, text_encoder_rank=4)
    assert (config.use_dora, config.effective_conv_rank, config.effective_te_rank) == (True, 3, 4)
    lora, _ = train(base, data, config, steps=1)
    assert lora["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight"].shape[:2] == (3, 32), "3x3 convs get the conv rank"
    assert lora["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"].shape[0] == 4
    assert "lora_unet_down_blocks_0_attentions_0_proj_in.dora_scale" in lora
    (defaults,) = node("LoRAConfig").configure(2, 0.0, 0.0, "kohya", False)
    assert (defaults.adapter, defaults.use_dora, defaults.conv_rank, defaults.text_encoder_rank) == ("lora", False, None, None)


# --------------------------------------------------------------------------- datasets and captions


def test_folder_dataset_fingerprint_changes_only_with_the_files(comfy, dataset_dir):
    first = N.FolderDataset.IS_CHANGED(str(dataset_dir), "auto", 1)
    assert N.FolderDataset.IS_CHANGED(str(dataset_dir), "auto", 1) == first
    (dataset_dir / "text" / "0.txt").write_text("a different caption that is longer")
    assert N.FolderDataset.IS_CHANGED(str(dataset_dir), "auto", 1) != first


def test_folder_dataset_relative_to_input_and_errors_are_one_sentence(comfy, dataset_dir):
    shutil.copytree(dataset_dir, comfy.input_dir / "mine")
    (data,) = node("FolderDataset").load("mine", "auto", 2)
    assert data.num_samples == 8
    with pytest.raises(DatasetError) as error:
        node("FolderDataset").load(str(dataset_dir / "nope"), "auto", 1)
    assert "\n" not in str(error.value) and str(error.value).endswith(".")


def test_captioner_methods(comfy, dataset_dir):
    (data,) = node("FolderDataset").load(str(dataset_dir), "auto", 1)
    (named,) = node("Captioner").caption(data, "from file name", "sks")
    assert [e.caption for e in named.entries] == ["sks"] * 4, "bare numbers (0.png) say nothing; the trigger stays"
    (only,) = node("Captioner").caption(data, "trigger word only", "  sks  ")
    assert {e.caption for e in only.entries} == {"sks"} and only.content_hash != data.content_hash
    (kept,) = node("Captioner").caption(data, "keep", "")
    assert [e.caption for e in kept.entries] == [e.caption for e in data.entries]
    with pytest.raises(DatasetError):
        node("Captioner").caption(data, "trigger word only", "")


def _write_hf_dataset(folder, rows=5):
    import datasets
    from PIL import Image

    images = [Image.new("RGB", (16, 16), (i * 40, 0, 0)) for i in range(rows)]
    table = datasets.Dataset.from_dict(
        {"image": images, "id": list(range(rows)), "en_text": [f"red square {i}" for i in range(rows)], "zh_text": ["x"] * rows},
        features=datasets.Features({"image": datasets.Image(), "id": datasets.Value("int32"), "en_text": datasets.Value("string"), "zh_text": datasets.Value("string")}),
    )
    table.save_to_disk(str(folder / "saved"))
    table.to_parquet(str(folder / "rows.parquet"))
    return folder


def test_hf_dataset_reads_saved_folders_and_parquet(comfy, tmp_path):
    _write_hf_dataset(tmp_path)
    (saved,) = node("HFDataset").load(str(tmp_path / "saved"), "train", "auto", "auto", 3)
    assert len(saved) == 3 and saved.entries[1].caption == "red square 1" and "save_to_disk" in saved.layout
    assert saved.entries[2].open_image().getpixel((0, 0)) == (80, 0, 0)
    (parquet,) = node("HFDataset").load(str(tmp_path / "rows.parquet"), "train", "image", "zh_text", 0)
    assert len(parquet) == 5 and parquet.entries[0].caption == "x"
    with pytest.raises(DatasetError, match="Caption column 'nope'"):
        node("HFDataset").load(str(tmp_path / "saved"), "train", "auto", "nope", 0)


# --------------------------------------------------------------------------- the route


def test_last_run_route_validates_ids():
    run_log.clear()
    assert run_log.handle_request({"node_id": "../../etc/passwd"}, {})[0] == 400
    assert run_log.handle_request({"node_id": "12"}, {})[0] == 404
    run_log.start("12", 10)
    run_log.record("12", 1, 0.5, {"total": 10})
    status, body = run_log.handle_request({"node_id": "12"}, {})
    assert status == 200 and body["loss"] == [0.5] and json.dumps(body)


def test_cancel_twice_then_resume_loses_and_repeats_no_step(comfy, dataset_dir):
    base, data, config = build_inputs(comfy, dataset_dir)
    full_lora, full_loss = train(base, data, config, checkpoint_folder="straight_twice", steps=8)
    for stop_at in (3, 5):
        comfy.interrupt_at_step = stop_at
        with pytest.raises(Interrupted):
            train(base, data, config, checkpoint_folder="twice", steps=8)
    comfy.interrupt_at_step = None
    saved = sorted(p.name for p in (comfy.models / "lora_logs" / "twice").iterdir() if not p.name.startswith("."))
    assert saved == ["checkpoint-000003", "checkpoint-000005"]
    resumed_lora, resumed_loss = train(base, data, config, checkpoint_folder="twice", steps=8)
    assert len(resumed_loss["loss"]) == 8, "no step lost or counted twice"
    assert resumed_loss["loss"] == pytest.approx(full_loss["loss"], abs=1e-6)
    assert max(float((resumed_lora[k] - full_lora[k]).abs().max()) for k in full_lora) <= 1e-6
