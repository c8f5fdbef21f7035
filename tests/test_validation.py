"""Validation while training: held-out images never trained on, a loss curve at fixed noises, the best checkpoint kept."""
import json

import pytest

from core import tiny
from core.dataset import load_folder_dataset
from core.errors import SettingsError
from core.lora import LoRASettings
from core.training import Trainer, TrainSettings, train
from training_support import StopAtStep

QUICK = dict(steps=6, learning_rate=5e-3, resolution=64, batch_size=2, lr_scheduler="constant", seed=4)


@pytest.fixture(scope="module")
def eight(tmp_path_factory):
    return load_folder_dataset(tiny.write_synthetic_dataset(tmp_path_factory.mktemp("eight") / "data", count=8, size=64))


def test_held_out_images_are_never_trained_on_and_the_choice_follows_the_seed(tiny_base, eight):
    settings = TrainSettings(**QUICK, validation_split=0.25, validation_every=2)
    trainer = Trainer(tiny_base, eight, LoRASettings(rank=2), settings)
    held = {entry.name for entry in trainer.validation.dataset.entries}
    assert len(held) == 2 and len(trainer.dataset) == 6
    assert held.isdisjoint(entry.name for entry in trainer.dataset.entries)
    trained = []
    batch = trainer.images.batch
    trainer.images.batch = lambda indices, rng: trained.extend(trainer.dataset.entries[i].name for i in indices) or batch(indices, rng)
    result = trainer.run()
    assert trained and held.isdisjoint(trained), "a held-out image reached a training step"
    assert [step for step, _ in result.validation_losses] == [2, 4, 6]
    again = Trainer(tiny_base, eight, LoRASettings(rank=2), settings)
    assert {e.name for e in again.validation.dataset.entries} == held, "the same seed holds out the same images"
    assert len(Trainer(tiny_base, eight, LoRASettings(rank=2), TrainSettings(**QUICK, validation_split=3)).validation.dataset) == 3


def test_the_curve_is_measured_at_fixed_noises(tiny_base, eight):
    """With nothing learned every point is the same number; with learning it moves."""
    still = train(tiny_base, eight, LoRASettings(rank=2), TrainSettings(**{**QUICK, "learning_rate": 1e-12}, validation_split=0.25, validation_every=2))
    losses = [loss for _, loss in still.validation_losses]
    assert len(losses) == 3 and max(losses) - min(losses) < 1e-6
    moving = train(tiny_base, eight, LoRASettings(rank=2), TrainSettings(**{**QUICK, "learning_rate": 3e-2}, validation_split=0.25, validation_every=2))
    assert abs(moving.validation_losses[-1][1] - moving.validation_losses[0][1]) > 1e-4


def test_validation_points_reach_the_callback_metadata_and_summary(tiny_base, eight):
    events = []
    result = train(tiny_base, eight, LoRASettings(rank=2), TrainSettings(**QUICK, validation_split=2, validation_every=3), progress=events.append)
    points = [(e.step, e.loss) for e in events if e.phase == "validation"]
    assert points == result.validation_losses and [s for s, _ in points] == [3, 6]
    metadata = result.lora.metadata
    assert json.loads(metadata["ss_validation_losses"]) == [[s, round(v, 6)] for s, v in points]
    assert metadata["ss_validation_images"] == "2"
    best = min(points, key=lambda p: p[1])
    assert metadata["ss_validation_best_step"] == str(best[0]) and result.best_validation == best
    summary = result.summary()
    assert summary["validation_losses"] == [list(p) for p in points] and summary["best_validation_step"] == best[0]
    plain = train(tiny_base, eight, LoRASettings(rank=2), TrainSettings(**QUICK))
    assert plain.validation_losses == [] and "ss_validation_losses" not in plain.lora.metadata


def test_keep_best_keeps_the_best_checkpoint_whatever_keep_last_prunes(tiny_base, eight, tmp_path):
    settings = TrainSettings(**{**QUICK, "steps": 8, "learning_rate": 4e-2}, validation_split=0.25, validation_every=1, keep_best=True,
                             save_every=1, keep_last=1)
    result = train(tiny_base, eight, LoRASettings(rank=2), settings, checkpoint_dir=tmp_path / "ck")
    best_step, _ = result.best_validation
    kept = sorted(p.name for p in (tmp_path / "ck").iterdir() if p.name.startswith("checkpoint-"))
    assert f"checkpoint-{best_step:06d}" in kept and "checkpoint-000008" in kept and len(kept) <= 2
    assert result.best_checkpoint.endswith(f"checkpoint-{best_step:06d}")
    state = json.loads((tmp_path / "ck" / f"checkpoint-{best_step:06d}" / "state.json").read_text())
    assert state["step"] == best_step


def test_a_resumed_run_continues_the_same_validation_curve(tiny_base, eight, tmp_path):
    settings = TrainSettings(**{**QUICK, "steps": 6, "lr_scheduler": "cosine"}, validation_split=0.25, validation_every=2)
    reference = train(tiny_base, eight, LoRASettings(rank=2), settings)
    stop = StopAtStep(3)
    first = train(tiny_base, eight, LoRASettings(rank=2), settings, checkpoint_dir=tmp_path / "ck", progress=stop, should_stop=stop.should_stop)
    assert first.interrupted and [s for s, _ in first.validation_losses] == [2]
    resumed = train(tiny_base, eight, LoRASettings(rank=2), settings, checkpoint_dir=tmp_path / "ck", resume_from=tmp_path / "ck")
    assert [s for s, _ in resumed.validation_losses] == [2, 4, 6]
    for (step, loss), (ref_step, ref_loss) in zip(resumed.validation_losses, reference.validation_losses):
        assert step == ref_step and abs(loss - ref_loss) <= 1e-6


def test_a_separate_validation_dataset_is_measured_and_the_whole_dataset_trains(tiny_base, eight, shapes):
    trainer = Trainer(tiny_base, eight, LoRASettings(rank=2), TrainSettings(**QUICK, validation_every=3), validation_dataset=shapes)
    assert len(trainer.dataset) == 8 and trainer.validation.dataset is shapes
    assert [s for s, _ in trainer.run().validation_losses] == [3, 6]


@pytest.mark.parametrize("settings, separate, message", [
    (dict(validation_split=8), False, "holds out 8 of the 8 images and leaves none to train on"),
    (dict(validation_split=0.999), False, "leaves none to train on"),
    (dict(validation_split=1.5), False, "a fraction below 1 or a whole number of images"),
    (dict(validation_split=-0.1), False, "a fraction below 1 or a whole number"),
    (dict(validation_split=0.25), True, "either a validation split or a validation dataset, not both"),
    (dict(validation_split=6, batch_size=4), False, "Batch size 4 is larger than the dataset (2 images"),
])
def test_bad_validation_settings_are_one_sentence(tiny_base, eight, shapes, settings, separate, message):
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        Trainer(tiny_base, eight, LoRASettings(rank=2), TrainSettings(**{**QUICK, **settings}), validation_dataset=shapes if separate else None)


def test_keep_best_without_validation_or_folder_is_refused(tiny_base, eight, tmp_path):
    with pytest.raises(SettingsError, match="needs validation .* and a checkpoint folder"):
        Trainer(tiny_base, eight, LoRASettings(rank=2), TrainSettings(**QUICK, keep_best=True), checkpoint_dir=tmp_path / "ck")
    with pytest.raises(SettingsError, match="needs validation .* and a checkpoint folder"):
        Trainer(tiny_base, eight, LoRASettings(rank=2), TrainSettings(**QUICK, keep_best=True, validation_split=2))


def test_the_cli_trains_with_validation_and_reports_it(tiny_assets, tmp_path, capsys):
    from core.cli import main

    data = tiny.write_synthetic_dataset(tmp_path / "data", count=6, size=64)
    output = tmp_path / "out" / "lora.safetensors"
    status = main(["train", "--base", str(tiny_assets["ldm"]), "--tokenizer", str(tiny_assets["tokenizer"]), "--data", str(data),
                   "--output", str(output), "--steps", "4", "--resolution", "64", "--rank", "2", "--validation-split", "2",
                   "--validation-every", "2", "--keep-best", "--min-snr-gamma", "5"])
    assert status == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [step for step, _ in summary["validation_losses"]] == [2, 4] and summary["best_checkpoint"]
    assert (tmp_path / "out" / "lora_checkpoints").is_dir(), "--keep-best gets the default checkpoint folder"
