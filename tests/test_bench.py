import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_smoke_on_tiny_model(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "REFERENCE_SCRIPT"}
    process = subprocess.run(
        [sys.executable, "-m", "bench", "--model", "tiny", "--steps", "2", "--warmup", "0", "--workdir", str(tmp_path),
         "--variants", "default,no-cache,onednn-convs"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env,
    )
    assert process.returncode == 0, process.stderr
    lines = [json.loads(line) for line in process.stdout.splitlines() if line.startswith("{")]
    assert [line["variant"] for line in lines] == ["default", "no-cache", "onednn-convs"]
    for line in lines:
        assert "error" not in line, line
        assert line["seconds_per_step"] > 0 and line["peak_memory_bytes"] > 0
        assert set(line["phase_seconds_per_step"]) == {"data", "forward", "backward", "optimizer"}
    assert "vae_cache" in lines[0]["phase_seconds_once"] and "vae_cache" not in lines[1]["phase_seconds_once"]


def test_bench_refuses_an_unknown_variant(tmp_path):
    process = subprocess.run(
        [sys.executable, "-m", "bench", "--model", "tiny", "--workdir", str(tmp_path), "--variants", "default,onednn-conv"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert process.returncode == 2 and "unknown variant onednn-conv" in process.stderr
    assert not any(tmp_path.iterdir())  # refused before building anything
