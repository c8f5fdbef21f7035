"""SDXL in a real ComfyUI server (skipped unless COMFYUI_DIR points at a ComfyUI checkout).

The checkpoint is a random-weight, full-size SDXL file written by ComfyUI's own code
(``tests/comfy_checkpoints.py``, run with COMFYUI_PYTHON, which needs diffusers), so no code of
ours made the file our loader reads. Load Base Checkpoint reads it, Train LoRA trains two steps
(UNet and both text encoders), Save LoRA writes it, and ComfyUI's stock Load LoRA applies it to
the model and CLIP of its own CheckpointLoaderSimple before a KSampler step: the server log must
have no "lora key not loaded". Needs about 16 GB of RAM (two copies of SDXL in bf16, ours and
ComfyUI's); COMFYUI_TEST_CACHE keeps the 6.9 GB file between runs.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core import tiny
from test_comfyui_integration import COMFYUI_DIR, ROOT, Server, _free_port

pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout to run the integration test")
CHECKPOINT = "random_sdxl.safetensors"
SAMPLER = {"seed": 1, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}


def comfy_made_checkpoint(cache: Path) -> Path:
    path = cache / CHECKPOINT
    if not path.exists():
        python = os.environ.get("COMFYUI_PYTHON", sys.executable)
        env = {**os.environ, "COMFYUI_DIR": str(COMFYUI_DIR)}
        done = subprocess.run([python, str(ROOT / "tests" / "comfy_checkpoints.py"), "sdxl", str(path)], env=env, capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, done.stderr[-3000:]
    return path


@pytest.fixture(scope="module")
def sdxl_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("comfy_sdxl")
    (base / "custom_nodes").mkdir(parents=True)
    (base / "custom_nodes" / "lora_trainer").symlink_to(ROOT, target_is_directory=True)
    cache = Path(os.environ.get("COMFYUI_TEST_CACHE") or tmp_path_factory.mktemp("sdxl_ckpt"))
    checkpoint = comfy_made_checkpoint(cache)
    (base / "models" / "checkpoints").mkdir(parents=True)
    target = base / "models" / "checkpoints" / CHECKPOINT
    os.link(checkpoint, target) if checkpoint.stat().st_dev == target.parent.stat().st_dev else shutil.copy(checkpoint, target)
    tiny.write_synthetic_dataset(base / "input" / "shapes", count=2, size=64)
    # bf16 weights on the CPU, as ours are: ComfyUI's fp32 default would hold SDXL in 13 GB.
    running = Server(base, _free_port(), extra_args=("--bf16-unet", "--bf16-text-enc"))
    try:
        running.object_info = running.wait_ready()
        yield running
    finally:
        running.stop()
        print("\n----- ComfyUI server log (tail) -----\n" + running.log_path.read_text(errors="replace")[-4000:])


def training_graph(data_dir: str) -> dict:
    return {
        "1": {"class_type": "LoRATrainer_LoadBaseCheckpoint", "inputs": {"checkpoint": CHECKPOINT, "precision": "bf16"}},
        "2": {"class_type": "LoRATrainer_FolderDataset", "inputs": {"folder": data_dir, "layout": "auto", "repeats": 1}},
        "4": {"class_type": "LoRATrainer_LoRAConfig", "inputs": {"rank": 4, "alpha": 0.0, "dropout": 0.0, "targets": "kohya", "train_text_encoder": True}},
        "5": {"class_type": "LoRATrainer_TrainLoRA", "inputs": {
            "base": ["1", 0], "dataset": ["2", 0], "lora_config": ["4", 0], "steps": 2, "learning_rate": 1e-3, "batch_size": 1,
            "resolution": 64, "training_seed": 0, "save_every": 0, "checkpoint_folder": "sdxl_integration", "lr_scheduler": "constant",
            "warmup_steps": 0, "precision": "bf16", "gradient_checkpointing": False, "random_flip": False, "aspect_buckets": "off"}},
        "6": {"class_type": "LoRATrainer_SaveLoRA", "inputs": {"lora": ["5", 0], "lora_name": "sdxl_integration", "overwrite": True}},
    }


def sampling_graph() -> dict:
    """ComfyUI's own loaders: CheckpointLoaderSimple, then the stock Load LoRA on model and CLIP."""
    return {
        "10": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "11": {"class_type": "LoraLoader", "inputs": {"model": ["10", 0], "clip": ["10", 1], "lora_name": "sdxl_integration.safetensors",
                                                      "strength_model": 1.0, "strength_clip": 1.0}},
        "12": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["11", 1], "text": "a red circle"}},
        "13": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "14": {"class_type": "KSampler", "inputs": {**SAMPLER, "model": ["11", 0], "positive": ["12", 0], "negative": ["12", 0], "latent_image": ["13", 0]}},
        "15": {"class_type": "VAEDecode", "inputs": {"samples": ["14", 0], "vae": ["10", 2]}},
        "16": {"class_type": "PreviewImage", "inputs": {"images": ["15", 0]}},
    }


def test_a_comfyui_made_sdxl_file_trains_and_its_lora_loads_in_the_stock_loader(sdxl_server):
    from safetensors import safe_open

    started = time.time()
    trained = sdxl_server.run(training_graph(str(sdxl_server.base / "input" / "shapes")), timeout=1800)
    print("SDXL training prompt:", trained["status"]["status_str"], f"in {time.time() - started:.1f}s")
    assert trained["status"]["status_str"] == "success", json.dumps(trained["status"])[:3000]
    with safe_open(str(sdxl_server.base / "models" / "loras" / "sdxl_integration.safetensors"), framework="pt") as handle:
        keys, metadata = list(handle.keys()), handle.metadata()
    stems = {k.rsplit(".", 2)[0] for k in keys if k.endswith(".lora_down.weight")}
    counts = {prefix: sum(s.startswith(prefix) for s in stems) for prefix in ("lora_unet_", "lora_te1_", "lora_te2_")}
    print("modules in the file:", counts)
    assert counts == {"lora_unet_": 722, "lora_te1_": 72, "lora_te2_": 192}
    assert any(s.startswith("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q") for s in stems)
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    lines_before = len(sdxl_server.text().splitlines())
    started = time.time()
    sampled = sdxl_server.run(sampling_graph(), timeout=1800)
    print("SDXL sampling prompt:", sampled["status"]["status_str"], f"in {time.time() - started:.1f}s")
    assert sampled["status"]["status_str"] == "success", json.dumps(sampled["status"])[:3000]
    not_loaded = [line for line in sdxl_server.text().splitlines()[lines_before:] if "lora key not loaded" in line]
    print("'lora key not loaded' lines:", len(not_loaded))
    assert not_loaded == [], not_loaded[:5]
