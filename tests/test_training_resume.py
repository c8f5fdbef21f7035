"""Checkpoint housekeeping and what a resume may and may not change."""
import pytest

from core.errors import TrainerError
from core.lora import LoRASettings
from core.training import TrainSettings, train

QUICK = dict(steps=4, learning_rate=5e-3, resolution=64, batch_size=2, lr_scheduler="cosine", seed=4)


def test_keep_last_prunes_and_reports_disk_use(tiny_assets, shapes, tmp_path):
    events = []
    result = train(tiny_assets["model"], shapes, LoRASettings(rank=2), TrainSettings(**QUICK, save_every=1, keep_last=2),
                   checkpoint_dir=tmp_path / "ck", progress=events.append)
    names = sorted(p.name for p in (tmp_path / "ck").iterdir() if not p.name.startswith("."))
    assert names == ["checkpoint-000003", "checkpoint-000004"]
    on_disk = sum(f.stat().st_size for f in (tmp_path / "ck").rglob("*") if f.is_file() and f.name != ".training.lock")
    assert result.checkpoint_bytes == on_disk and result.summary()["checkpoint_megabytes"] == round(on_disk / 2**20, 2)
    assert [c.rsplit("/", 1)[-1] for c in result.checkpoints] == names
    assert "removed checkpoint-000001" in [e for e in events if e.phase == "save"][2].message


def test_resume_may_extend_the_run_and_the_schedule_follows(tiny_assets, shapes, tmp_path):
    base = tiny_assets["model"]
    train(base, shapes, LoRASettings(rank=2), TrainSettings(**QUICK), checkpoint_dir=tmp_path / "ck")
    longer = TrainSettings(**{**QUICK, "steps": 8})
    resumed = train(base, shapes, LoRASettings(rank=2), longer, checkpoint_dir=tmp_path / "ck", resume_from=tmp_path / "ck")
    reference = train(base, shapes, LoRASettings(rank=2), longer)
    assert resumed.resumed_from_step == 4 and resumed.steps == 8
    assert resumed.lr_history[4:] == pytest.approx(reference.lr_history[4:], abs=1e-12), "steps 5-8 follow the 8-step cosine"


def test_resume_with_another_optimizer_or_prediction_is_refused(tiny_assets, shapes, tmp_path):
    base = tiny_assets["model"]
    train(base, shapes, LoRASettings(rank=2), TrainSettings(**{**QUICK, "steps": 2}), checkpoint_dir=tmp_path / "ck")
    with pytest.raises(TrainerError, match="optimizer 'adamw' vs 'adafactor'"):
        train(base, shapes, LoRASettings(rank=2), TrainSettings(**QUICK, optimizer="adafactor"), resume_from=tmp_path / "ck")
    with pytest.raises(TrainerError, match="prediction target"):
        train(base, shapes, LoRASettings(rank=2), TrainSettings(**QUICK, prediction="v"), resume_from=tmp_path / "ck")
    with pytest.raises(TrainerError, match="LoRA use_dora False vs True"):
        train(base, shapes, LoRASettings(rank=2, use_dora=True), TrainSettings(**QUICK), resume_from=tmp_path / "ck")
