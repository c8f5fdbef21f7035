import json
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args, cwd=ROOT):
    process = subprocess.run([sys.executable, "-m", "core", *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    last_line = process.stdout.strip().splitlines()[-1] if process.stdout.strip() else "{}"
    return process, json.loads(last_line)


def test_demo_learns_and_prints_json(tmp_path):
    process, summary = run_cli("demo", "--workdir", str(tmp_path), "--steps", "80")
    assert process.returncode == 0, process.stderr
    for key in ("lora_path", "steps", "seconds_per_step", "loss_first", "loss_last", "eval_loss_before", "eval_loss_after"):
        assert key in summary, key
    assert summary["steps"] == 80
    assert summary["eval_loss_after"] < summary["eval_loss_before"]
    assert Path(summary["lora_path"]).is_file()
    assert "step 80/80" in process.stderr


def test_train_command_on_diffusers_folder_with_checkpoints(tiny_assets, dataset_dir, tmp_path, digest):
    before = digest(dataset_dir)
    output = tmp_path / "out" / "mine.safetensors"
    process, summary = run_cli(
        "train", "--base", str(tiny_assets["diffusers"]), "--data", str(dataset_dir), "--output", str(output),
        "--steps", "4", "--resolution", "64", "--rank", "2", "--save-every", "2", "--checkpoint-dir", str(tmp_path / "ck"),
    )
    assert process.returncode == 0, process.stderr
    assert output.is_file() and summary["lora_path"] == str(output)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir() if not p.name.startswith(".")) == ["checkpoint-000002", "checkpoint-000004"]
    assert digest(dataset_dir) == before, "the dataset folder must never be written"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--rank", "0"], "rank must be"),
        (["--resolution", "65"], "multiple of 64"),
        (["--steps", "0"], "steps must be at least 1"),
    ],
)
def test_bad_settings_exit_with_one_sentence_and_write_nothing(tiny_assets, dataset_dir, tmp_path, extra, message, digest):
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    process, summary = run_cli(
        "train", "--base", str(tiny_assets["ldm"]), "--tokenizer", str(tiny_assets["tokenizer"]),
        "--data", str(dataset_dir), "--output", str(output_dir / "x.safetensors"), *extra,
    )
    assert process.returncode == 2
    assert message in summary["error"]
    assert "Traceback" not in process.stderr
    assert list(output_dir.iterdir()) == []


def test_missing_checkpoint_message(dataset_dir, tmp_path):
    process, summary = run_cli("train", "--base", str(tmp_path / "none.safetensors"), "--data", str(dataset_dir), "--output", str(tmp_path / "x.safetensors"))
    assert process.returncode == 2 and "does not exist" in summary["error"]
