"""Training Options in the graph: every advanced setting from one table, validation on the chart, consistent meanings."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from core import tiny
from node_support import StandinComfy, load_suite

suite = load_suite()
from lora_trainer_suite.core import setting_table  # noqa: E402
from lora_trainer_suite.core.errors import SettingsError, TrainerError  # noqa: E402
from lora_trainer_suite.core.training import Trainer, TrainSettings  # noqa: E402
from lora_trainer_suite.nodes import comfy_bridge, run_log  # noqa: E402
from lora_trainer_suite.nodes import nodes as N  # noqa: E402

FAST_TRAIN = dict(steps=4, learning_rate=5e-3, batch_size=2, resolution=64, training_seed=3, save_every=0, checkpoint_folder="opts",
                  lr_scheduler="constant", warmup_steps=0, precision="fp32", gradient_checkpointing=False, random_flip=False)


@pytest.fixture
def comfy(tmp_path, tiny_assets):
    standin = StandinComfy(tmp_path / "comfy", tiny_assets["tokenizer"])
    shutil.copy(tiny_assets["ldm"], standin.models / "checkpoints" / "tiny_sd15.safetensors")
    previous = comfy_bridge.use(standin)
    run_log.clear()
    yield standin
    comfy_bridge.use(previous)


def node(name):
    return N.NODE_CLASS_MAPPINGS[N.PREFIX + name]()


def inputs(comfy, tmp_path, count=6):
    with torch.inference_mode():
        (base,) = node("LoadBaseCheckpoint").load("tiny_sd15.safetensors", "auto")
        (data,) = node("FolderDataset").load(str(tiny.write_synthetic_dataset(tmp_path / "data", count=count, size=64)), "auto", 1)
        (config,) = node("LoRAConfig").configure(2, 0.0, 0.0, "kohya", False)
    return base, data, config


def defaults_of_options_node():
    spec = N.NODE_CLASS_MAPPINGS["LoRATrainer_TrainingOptions"].INPUT_TYPES()["required"]
    return {name: declared[1]["default"] for name, declared in spec.items()}


def options(**changes):
    widgets = {**defaults_of_options_node(), **changes}
    return node("TrainingOptions").collect(**widgets)[0]


def train(base, data, config, **extra):
    with torch.inference_mode():
        return node("TrainLoRA").train(base, data, config, **{**FAST_TRAIN, **extra}, unique_id="7")


def test_the_options_node_is_the_settings_table_with_cli_defaults_and_tooltips():
    spec = N.NODE_CLASS_MAPPINGS["LoRATrainer_TrainingOptions"].INPUT_TYPES()["required"]
    assert list(spec) == [s.field for s in setting_table.ADVANCED_SETTINGS]
    defaults = TrainSettings()
    for setting in setting_table.ADVANCED_SETTINGS:
        kind, declared = spec[setting.field][0], spec[setting.field][1]
        assert setting.flag in declared["tooltip"], "each tooltip names the CLI flag"
        value = setting_table.from_widget(setting, declared["default"])
        assert value == getattr(defaults, setting.field), f"{setting.field}: the widget's default is core's"
        if setting.choices:
            assert kind == list(setting.choices)
    from lora_trainer_suite.core.cli import build_parser

    help_text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    assert all(setting.flag in help_text for setting in setting_table.ADVANCED_SETTINGS)


def test_a_row_added_to_the_table_appears_on_the_cli_and_in_the_node(monkeypatch):
    row = setting_table.Setting("warmup_steps", "--warmup-fraction", setting_table.OPTIMIZER, "warm-up as a fraction", minimum=0.0, maximum=1.0)
    monkeypatch.setattr(setting_table, "ADVANCED_SETTINGS", (*setting_table.ADVANCED_SETTINGS, row))
    spec = N.NODE_CLASS_MAPPINGS["LoRATrainer_TrainingOptions"].INPUT_TYPES()["required"]
    assert spec["warmup_steps"][0] == "FLOAT" and spec["warmup_steps"][1]["default"] == 0.0
    from lora_trainer_suite.core.cli import build_parser

    args = build_parser().parse_args(["demo", "--workdir", "x", "--warmup-fraction", "0.25"])
    assert args.warmup_steps == 0.25


def test_options_reach_core_and_the_lora_metadata(comfy, tmp_path):
    base, data, config = inputs(comfy, tmp_path)
    chosen = options(min_snr_gamma=5.0, noise_offset=0.05, loss="huber", shuffle_tags=True, sample_prompts="a red circle\n\n a blue square ")
    assert chosen["sample_prompts"] == ("a red circle", "a blue square") and chosen["text_encoder_learning_rate"] is None
    lora, _ = train(base, data, config, options=options(min_snr_gamma=5.0, noise_offset=0.05, loss="huber", shuffle_tags=True))
    metadata = lora.metadata
    assert (metadata["ss_min_snr_gamma"], metadata["ss_noise_offset"], metadata["ss_loss_type"], metadata["ss_shuffle_caption"]) == ("5", "0.05", "huber", "True")
    plain, _ = train(base, data, config, checkpoint_folder="plain")
    assert plain.metadata["ss_min_snr_gamma"] == "None", "without the options node: core's defaults"


def test_options_from_another_version_are_refused_in_one_sentence(comfy, tmp_path):
    base, data, config = inputs(comfy, tmp_path)
    with pytest.raises(SettingsError, match="does not come from this version's Training Options node"):
        train(base, data, config, options={"min_snr_gamma": 5.0})
    stale = options()
    stale["sharpness"] = 3
    with pytest.raises(SettingsError, match="sets sharpness, which this version of the LoRA Trainer does not know"):
        train(base, data, config, options=stale)
    with pytest.raises(SettingsError, match="sharpness, which this version"):
        node("TrainingOptions").collect(**{**defaults_of_options_node(), "sharpness": 1})


def test_validation_points_reach_the_chart_the_run_log_and_the_file(comfy, tmp_path):
    base, data, config = inputs(comfy, tmp_path)
    lora, _ = train(base, data, config, options=options(validation_split=2.0, validation_every=2))
    events = [e for name, e in comfy.events if name == "lora_trainer.progress" and e["phase"] == "validation"]
    assert [e["step"] for e in events] == [2, 4] and all(isinstance(e["validation_loss"], float) for e in events)
    status, record = run_log.handle_request({"node_id": "7"}, {})
    assert record["validation"] == [[e["step"], e["validation_loss"]] for e in events]
    assert json.loads(lora.metadata["ss_validation_losses"]) == [[e["step"], round(e["validation_loss"], 6)] for e in events]
    with torch.inference_mode():
        (separate,) = node("FolderDataset").load(str(tiny.write_synthetic_dataset(tmp_path / "val", count=2, size=64)), "auto", 1)
    with_dataset, _ = train(base, data, config, checkpoint_folder="separate", options=options(validation_every=2), validation_dataset=separate)
    assert with_dataset.metadata["ss_validation_images"] == "2" and with_dataset.metadata["ss_num_train_images"] == "6"


def test_enum_widgets_come_from_core_and_auto_precision_means_cores_auto(comfy, tmp_path):
    from lora_trainer_suite.core import dataset, devices, lora, optim

    train_inputs = N.NODE_CLASS_MAPPINGS["LoRATrainer_TrainLoRA"].INPUT_TYPES()["required"]
    assert train_inputs["lr_scheduler"][0] == list(optim.LR_SCHEDULERS) and train_inputs["precision"][0] == list(devices.PRECISIONS)
    assert N.NODE_CLASS_MAPPINGS["LoRATrainer_FolderDataset"].INPUT_TYPES()["required"]["layout"][0] == list(dataset.LAYOUTS)
    config_inputs = N.NODE_CLASS_MAPPINGS["LoRATrainer_LoRAConfig"].INPUT_TYPES()
    assert config_inputs["required"]["targets"][0] == list(lora.UNET_TARGET_PRESETS)
    assert config_inputs["optional"]["adapter"][0] == list(lora.ADAPTER_TYPES)
    base, _, _ = inputs(comfy, tmp_path)
    expected = devices.torch_dtype(devices.resolve_precision("auto", torch.device("cpu")))
    assert base.unet.dtype == expected, "Load Base Checkpoint's auto stores what core's auto trains in"


def test_out_of_memory_reaches_the_node_as_cores_advice(comfy, tmp_path, monkeypatch):
    base, data, config = inputs(comfy, tmp_path)

    def exhausted(self, step, parameters):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "_train_step", exhausted)
    with pytest.raises(TrainerError, match="^Out of memory while training at 64 px with batch size 2; use batch size 1"):
        train(base, data, config)


def test_train_lora_trains_on_the_device_chosen_and_refuses_one_that_is_not_here(comfy, tmp_path, monkeypatch):
    from lora_trainer_suite.core import devices

    choices = N.NODE_CLASS_MAPPINGS["LoRATrainer_TrainLoRA"].INPUT_TYPES()["optional"]["device"][0]
    assert choices == ["auto", *devices.device_choices()] and choices[-1] == "cpu"
    base, data, config = inputs(comfy, tmp_path)
    with pytest.raises(SettingsError, match="^Device cuda:1 is not available|^Device cuda:1 does not exist"):
        train(base, data, config, device="cuda:1")
    monkeypatch.setattr(comfy, "torch_device", lambda: torch.device("meta"))  # ComfyUI samples on another device
    comfy.calls.clear()
    lora, loss = train(base, data, config, device="cpu", checkpoint_folder="on_cpu")
    assert len(loss["loss"]) == 4 and "free_memory" not in comfy.calls, "ComfyUI's own device is left alone"
