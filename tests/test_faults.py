"""Faults: SIGKILL at random points, full disks, concurrent runs on one checkpoint folder."""
import errno
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from core.checkpoints import find_checkpoints, read_checkpoint
from core.errors import OutputPathError, TrainerError
from core.locking import FolderLock
from core.lora import read_lora_file, save_lora_file

ROOT = Path(__file__).resolve().parent.parent
STEPS = 12


def _train_command(tiny_assets, dataset_dir, workdir: Path, *extra):
    return [
        sys.executable, "-m", "core", "train", "--base", str(tiny_assets["ldm"]), "--tokenizer", str(tiny_assets["tokenizer"]),
        "--data", str(dataset_dir), "--output", str(workdir / "final.safetensors"), "--steps", str(STEPS),
        "--save-every", "2", "--checkpoint-dir", str(workdir / "ck"), "--resolution", "64", "--rank", "2",
        "--precision", "fp32", "--lr-scheduler", "cosine", "--seed", "5", *extra,
    ]


def _run(command):
    process = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr
    return json.loads(process.stdout.strip().splitlines()[-1])


def _assert_everything_on_disk_is_whole(workdir: Path):
    for checkpoint in find_checkpoints(workdir / "ck"):
        state, weights, training_state = read_checkpoint(checkpoint)
        assert int(weights.metadata["ss_steps"]) == state["step"]
        assert len(training_state["loss_history"]) == state["step"]
    final = workdir / "final.safetensors"
    if final.exists():
        assert read_lora_file(final).metadata["ss_steps"] == str(STEPS)


def test_sigkill_at_random_points_then_resume_equals_uninterrupted(tiny_assets, dataset_dir, tmp_path):
    reference = _run(_train_command(tiny_assets, dataset_dir, tmp_path / "reference"))
    expected = read_lora_file(reference["lora_path"]).tensors
    rng = random.Random(1234)
    for attempt, trigger in enumerate(["saved checkpoint-000002", "saved checkpoint-000004", "saved checkpoint-000010"]):
        workdir = tmp_path / f"killed{attempt}"
        process = subprocess.Popen(_train_command(tiny_assets, dataset_dir, workdir), cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        for line in process.stderr:
            if trigger in line:
                time.sleep(rng.uniform(0.0, 0.3))  # land anywhere in the next steps or writes
                process.send_signal(signal.SIGKILL)
                break
        process.wait(timeout=600)
        _assert_everything_on_disk_is_whole(workdir)
        assert find_checkpoints(workdir / "ck"), "at least the triggering checkpoint survives"
        resumed = _run(_train_command(tiny_assets, dataset_dir, workdir, "--resume", str(workdir / "ck")))
        assert resumed["steps"] == STEPS and resumed["resumed_from_step"] >= 2
        tensors = read_lora_file(resumed["lora_path"]).tensors
        worst = max(float((tensors[k] - v).abs().max()) for k, v in expected.items())
        assert worst <= 1e-6, (attempt, worst)
        _assert_everything_on_disk_is_whole(workdir)


def test_disk_full_during_save_keeps_previous_file(tmp_path, monkeypatch):
    from core.lora import LoRAWeights

    target = tmp_path / "mine.safetensors"
    first = LoRAWeights({"lora_unet_x.lora_down.weight": torch.ones(2, 2), "lora_unet_x.lora_up.weight": torch.ones(2, 2), "lora_unet_x.alpha": torch.tensor(2.0)}, {"ss_steps": "1"})
    save_lora_file(first, target)
    before = target.read_bytes()

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", no_space)
    with pytest.raises(OutputPathError, match="No space left"):
        save_lora_file(LoRAWeights(dict(first.tensors), {"ss_steps": "2"}), target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.safetensors"], "no temp file left behind"


def test_second_training_on_same_checkpoint_folder_is_refused(tmp_path):
    with FolderLock(tmp_path / "ck"):
        with pytest.raises(TrainerError, match="Another training is already using"):
            with FolderLock(tmp_path / "ck"):
                pass
    with FolderLock(tmp_path / "ck"):  # released on exit
        pass


def test_lock_dies_with_its_process(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys,time; from core.locking import FolderLock; l=FolderLock(sys.argv[1]).__enter__(); print('held', flush=True); time.sleep(60)", str(tmp_path / "ck")],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(TrainerError):
        with FolderLock(tmp_path / "ck"):
            pass
    holder.kill()
    holder.wait()
    with FolderLock(tmp_path / "ck"):
        pass


def test_out_of_memory_gives_advice_and_restores_the_base(base_model, dataset, monkeypatch):
    from core.lora import LoRASettings
    from core.training import Trainer, TrainSettings

    def exhausted(self, step, parameters):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "_train_step", exhausted)
    settings = TrainSettings(steps=3, resolution=64, batch_size=2, precision="fp32")
    with pytest.raises(TrainerError, match="Out of memory.*batch size 1.*gradient checkpointing.*lower the resolution"):
        Trainer(base_model, dataset, LoRASettings(rank=2), settings).run()
    assert not any("lora" in name for name, _ in base_model.unet.named_modules())


def test_leftovers_of_a_killed_save_are_cleaned_and_checkpoints_kept(base_model, dataset, tmp_path):
    from core.lora import LoRASettings
    from core.training import train, TrainSettings

    checkpoint_dir = tmp_path / "ck"
    settings = TrainSettings(steps=2, resolution=64, batch_size=2, precision="fp32", save_every=1)
    train(base_model, dataset, LoRASettings(rank=2), settings, checkpoint_dir=checkpoint_dir)
    (checkpoint_dir / ".checkpoint-000003.partial").mkdir()
    (checkpoint_dir / ".checkpoint-000003.partial" / "lora.safetensors").write_bytes(b"half")
    (checkpoint_dir / ".lora.safetensors.abc.tmp").write_bytes(b"half")
    resumed = train(base_model, dataset, LoRASettings(rank=2), TrainSettings(**{**settings.__dict__, "steps": 3}),
                    checkpoint_dir=checkpoint_dir, resume_from=checkpoint_dir)
    assert resumed.resumed_from_step == 2
    names = sorted(p.name for p in checkpoint_dir.iterdir() if p.name != ".training.lock")
    assert names == ["checkpoint-000001", "checkpoint-000002", "checkpoint-000003"]
