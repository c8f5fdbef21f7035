"""The suite inside a real ComfyUI server (skipped unless COMFYUI_DIR points at a ComfyUI checkout).

Starts ComfyUI on 127.0.0.1 with an isolated --base-directory whose custom_nodes/ links this
repository, checks /object_info, queues a training graph in API format on a shallow SD1.5-family
checkpoint, then samples with the saved LoRA through stock LoraLoaderModelOnly and with the
in-memory LoRA through ApplyLoRA, and reads the server log for "lora key not loaded".

COMFYUI_PYTHON is the interpreter with ComfyUI's requirements and ours (default: this one).
COMFYUI_TEST_KEEP=1 leaves the server's base directory in place for inspection.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from core import tiny

COMFYUI_DIR = os.environ.get("COMFYUI_DIR")
pytestmark = pytest.mark.skipif(not COMFYUI_DIR, reason="set COMFYUI_DIR to a ComfyUI checkout to run the integration test")
ROOT = Path(__file__).resolve().parents[1]
NODE_IDS = ["LoadBaseCheckpoint", "FolderDataset", "HFDataset", "Captioner", "LoRAConfig", "TrainLoRA", "SaveLoRA", "ApplyLoRA",
            "TrainingOptions", "CompareGrid", "DatasetPreview"]
CHECKPOINT = "shallow_sd15.safetensors"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _post(url: str, body: dict):
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise AssertionError(f"POST {url} failed: {error.code} {error.read()[:2000]!r}") from None


def training_graph(data_dir: str, steps: int = 4) -> dict:
    """LoadBaseCheckpoint -> FolderDataset -> Captioner -> LoRAConfig -> TrainLoRA -> SaveLoRA, API format."""
    return {
        "1": {"class_type": "LoRATrainer_LoadBaseCheckpoint", "inputs": {"checkpoint": CHECKPOINT, "precision": "fp32"}},
        "2": {"class_type": "LoRATrainer_FolderDataset", "inputs": {"folder": data_dir, "layout": "auto", "repeats": 1}},
        "3": {"class_type": "LoRATrainer_Captioner", "inputs": {"dataset": ["2", 0], "method": "keep", "trigger_word": "sks"}},
        "4": {"class_type": "LoRATrainer_LoRAConfig", "inputs": {"rank": 4, "alpha": 0.0, "dropout": 0.0, "targets": "kohya", "train_text_encoder": False}},
        "5": {"class_type": "LoRATrainer_TrainLoRA", "inputs": {
            "base": ["1", 0], "dataset": ["3", 0], "lora_config": ["4", 0], "steps": steps, "learning_rate": 1e-3, "batch_size": 1,
            "resolution": 64, "training_seed": 0, "save_every": 2, "checkpoint_folder": "integration", "lr_scheduler": "constant",
            "warmup_steps": 0, "precision": "fp32", "gradient_checkpointing": False, "random_flip": False}},
        "6": {"class_type": "LoRATrainer_SaveLoRA", "inputs": {"lora": ["5", 0], "lora_name": "integration_lora", "overwrite": False}},
    }


def sampling_graph(data_dir: str) -> dict:
    """The training graph again (cached: must not retrain) plus sampling with the saved file and with ApplyLoRA."""
    graph = training_graph(data_dir)
    sampler = {"seed": 1, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}
    graph.update({
        "10": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "11": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["10", 0], "lora_name": "integration_lora.safetensors", "strength_model": 1.0}},
        "12": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["10", 1], "text": "sks a red circle"}},
        "13": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "14": {"class_type": "KSampler", "inputs": {**sampler, "model": ["11", 0], "positive": ["12", 0], "negative": ["12", 0], "latent_image": ["13", 0]}},
        "15": {"class_type": "VAEDecode", "inputs": {"samples": ["14", 0], "vae": ["10", 2]}},
        "16": {"class_type": "PreviewImage", "inputs": {"images": ["15", 0]}},
        "20": {"class_type": "LoRATrainer_ApplyLoRA", "inputs": {"model": ["10", 0], "clip": ["10", 1], "lora": ["5", 0], "strength_model": 1.0, "strength_clip": 1.0}},
        "21": {"class_type": "KSampler", "inputs": {**sampler, "model": ["20", 0], "positive": ["12", 0], "negative": ["12", 0], "latent_image": ["13", 0]}},
        "22": {"class_type": "VAEDecode", "inputs": {"samples": ["21", 0], "vae": ["10", 2]}},
        "23": {"class_type": "PreviewImage", "inputs": {"images": ["22", 0]}},
    })
    return graph


def build_checkpoint(path: Path, comfy_dir: Path) -> Path:
    if not path.exists():
        import torch

        model = tiny.build_comfy_shallow_model(comfy_dir / "comfy" / "sd1_tokenizer", seed=0)
        tiny.save_ldm_checkpoint(model, path, dtype=torch.float16)
    return path


class Server:
    def __init__(self, base: Path, port: int, extra_args: tuple[str, ...] = ()):
        self.base, self.port, self.url = base, port, f"http://127.0.0.1:{port}"
        self.log_path = base / "server.log"
        python = os.environ.get("COMFYUI_PYTHON", sys.executable)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory", str(base), "--disable-all-custom-nodes", "--whitelist-custom-nodes", "lora_trainer", *extra_args],
            cwd=COMFYUI_DIR, stdout=self.log, stderr=subprocess.STDOUT, env=env,
        )

    def wait_ready(self, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"ComfyUI exited early:\n{self.text()[-3000:]}")
            try:
                return _get(self.url + "/object_info")
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(1)
        raise AssertionError(f"ComfyUI did not answer within {timeout}s:\n{self.text()[-3000:]}")

    def run(self, graph: dict, timeout=900) -> dict:
        prompt_id = _post(self.url + "/prompt", {"prompt": graph, "client_id": "integration-test"})["prompt_id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            history = _get(f"{self.url}/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                return history[prompt_id]
            if self.process.poll() is not None:
                raise AssertionError(f"ComfyUI died:\n{self.text()[-3000:]}")
            time.sleep(1)
        raise AssertionError(f"prompt {prompt_id} did not finish in {timeout}s:\n{self.text()[-3000:]}")

    def text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    comfy_dir = Path(COMFYUI_DIR)
    base = Path(os.environ.get("COMFYUI_TEST_BASE") or tmp_path_factory.mktemp("comfy_base"))
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / "lora_trainer"
    if not link.exists():
        link.symlink_to(ROOT, target_is_directory=True)
    cache = Path(os.environ.get("COMFYUI_TEST_CACHE", tmp_path_factory.mktemp("ckpt")))
    checkpoint = build_checkpoint(cache / CHECKPOINT, comfy_dir)
    (base / "models" / "checkpoints").mkdir(parents=True, exist_ok=True)
    target = base / "models" / "checkpoints" / CHECKPOINT
    if not target.exists():
        os.link(checkpoint, target) if checkpoint.stat().st_dev == target.parent.stat().st_dev else shutil.copy(checkpoint, target)
    tiny.write_synthetic_dataset(base / "input" / "shapes", count=4, size=64)
    running = Server(base, _free_port())
    try:
        running.object_info = running.wait_ready()
        yield running
    finally:
        running.stop()
        print("\n----- ComfyUI server log (tail) -----\n" + running.log_path.read_text(errors="replace")[-4000:])
        if not os.environ.get("COMFYUI_TEST_KEEP"):
            shutil.rmtree(base / "models" / "lora_logs", ignore_errors=True)


def test_object_info_lists_every_node_without_import_errors(server):
    ours = sorted(name for name in server.object_info if name.startswith("LoRATrainer_"))
    print("nodes listed:", ours)
    assert ours == sorted("LoRATrainer_" + name for name in NODE_IDS)
    log = server.text()
    # ComfyUI's own optional nodes may fail to import here (e.g. no torchaudio); only ours matter.
    ours_failed = [line for line in log.splitlines() if ("IMPORT FAILED" in line or "Cannot import" in line) and "lora_trainer" in line]
    assert ours_failed == [], log[-3000:]
    assert CHECKPOINT in server.object_info["LoRATrainer_LoadBaseCheckpoint"]["input"]["required"]["checkpoint"][0]
    extensions = _get(server.url + "/extensions")
    assert any(path.startswith("/extensions/lora_trainer/js/") for path in extensions), extensions
    templates = _get(server.url + "/workflow_templates")
    print("templates:", templates)
    assert "lora_trainer" in templates


def test_train_save_and_sample_with_stock_lora_loader(server):
    data_dir = str(server.base / "input" / "shapes")
    started = time.time()
    first = server.run(training_graph(data_dir))
    print("training prompt:", first["status"]["status_str"], f"in {time.time() - started:.1f}s")
    assert first["status"]["status_str"] == "success", json.dumps(first["status"])[:3000]
    saved = server.base / "models" / "loras" / "integration_lora.safetensors"
    assert saved.is_file()
    assert sorted(p.name for p in (server.base / "models" / "lora_logs" / "integration").iterdir() if not p.name.startswith(".")) == ["checkpoint-000002", "checkpoint-000004"]
    run = _get(server.url + "/lora_trainer/last_run/5")
    assert run["points"] == 4 and run["status"] == "done"
    assert urllib.request.urlopen(server.url + "/lora_trainer/last_run/5", timeout=5).status == 200
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(server.url + "/lora_trainer/last_run/..%2F..%2Fetc", timeout=5)

    started = time.time()
    second = server.run(sampling_graph(data_dir))
    print("sampling prompt:", second["status"]["status_str"], f"in {time.time() - started:.1f}s")
    assert second["status"]["status_str"] == "success", json.dumps(second["status"])[:3000]
    log = server.text()
    not_loaded = [line for line in log.splitlines() if "lora key not loaded" in line]
    print("'lora key not loaded' lines:", len(not_loaded))
    assert not_loaded == [], not_loaded[:5]
    assert log.count("step 4/4") == 1, "re-queueing the unchanged training part must not retrain"
    assert "16" in second["outputs"] and "23" in second["outputs"]


def test_cancel_then_queue_again_resumes(server):
    data_dir = str(server.base / "input" / "shapes")
    steps = 60  # a tiny-model step takes ~0.1 s: with fewer, the run could end between the poll and the cancel
    graph = training_graph(data_dir, steps=steps)
    graph["5"]["inputs"].update(checkpoint_folder="cancel_resume", save_every=0)
    graph["6"]["inputs"]["lora_name"] = "cancel_resume_lora"
    prompt_id = _post(server.url + "/prompt", {"prompt": graph, "client_id": "integration-test"})["prompt_id"]
    deadline = time.time() + 600
    while time.time() < deadline:  # cancel once two steps are done, as a user pressing Cancel would
        try:
            run = _get(server.url + "/lora_trainer/last_run/5")
        except urllib.error.HTTPError:
            run = {}
        if run.get("status") == "running" and run.get("points", 0) >= 2:
            break
        time.sleep(0.5)
    urllib.request.urlopen(urllib.request.Request(server.url + "/interrupt", data=b"{}", method="POST"), timeout=10)
    while time.time() < deadline:
        history = _get(f"{server.url}/history/{prompt_id}")
        if prompt_id in history:
            break
        time.sleep(1)
    messages = [kind for kind, _ in history[prompt_id]["status"]["messages"]]
    print("cancelled prompt messages:", messages)
    assert "execution_interrupted" in messages
    saved = sorted(p.name for p in (server.base / "models" / "lora_logs" / "cancel_resume").iterdir() if not p.name.startswith("."))
    print("checkpoints after cancel:", saved)
    assert len(saved) == 1 and 2 <= int(saved[0].split("-")[1]) < steps
    stopped_at = int(saved[0].split("-")[1])

    resumed = server.run(graph)
    print("re-queued prompt:", resumed["status"]["status_str"])
    assert resumed["status"]["status_str"] == "success", json.dumps(resumed["status"])[:3000]
    run = _get(server.url + "/lora_trainer/last_run/5")
    assert run["points"] == steps and run["status"] == "done", "the curve continues from the checkpoint"
    assert run["resumed_from"] == stopped_at, "queueing again resumed from the checkpoint instead of starting over"
    assert (server.base / "models" / "loras" / "cancel_resume_lora.safetensors").is_file()


@pytest.mark.parametrize("adapter, keys", [
    ("loha", {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"}),
    ("lokr", {"lokr_w1", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "alpha"}),
])
def test_lycoris_adapters_train_in_the_graph_and_load_in_the_stock_loader(server, adapter, keys):
    data_dir = str(server.base / "input" / "shapes")
    graph = training_graph(data_dir, steps=2)
    graph["4"]["inputs"]["adapter"] = adapter
    graph["5"]["inputs"].update(checkpoint_folder=adapter, save_every=0)
    graph["6"]["inputs"]["lora_name"] = f"integration_{adapter}"
    sampler = {"seed": 1, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}
    graph.update({
        "10": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "11": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["10", 0], "lora_name": f"integration_{adapter}.safetensors", "strength_model": 1.0}},
        "12": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["10", 1], "text": "sks a red circle"}},
        "13": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "14": {"class_type": "KSampler", "inputs": {**sampler, "model": ["11", 0], "positive": ["12", 0], "negative": ["12", 0], "latent_image": ["13", 0]}},
        "15": {"class_type": "VAEDecode", "inputs": {"samples": ["14", 0], "vae": ["10", 2]}},
        "16": {"class_type": "PreviewImage", "inputs": {"images": ["15", 0]}},
    })
    lines_before = len(server.text().splitlines())
    trained = server.run({k: v for k, v in graph.items() if int(k) < 10})  # the file must exist before the loader lists it
    assert trained["status"]["status_str"] == "success", json.dumps(trained["status"])[:3000]
    from safetensors import safe_open

    with safe_open(str(server.base / "models" / "loras" / f"integration_{adapter}.safetensors"), framework="pt") as handle:
        assert {key.rsplit(".", 1)[1] for key in handle.keys()} <= keys and any(k.endswith(".alpha") for k in handle.keys())
    sampled = server.run(graph)
    assert sampled["status"]["status_str"] == "success", json.dumps(sampled["status"])[:3000]
    new_lines = server.text().splitlines()[lines_before:]
    not_loaded = [line for line in new_lines if "lora key not loaded" in line]
    print(f"{adapter}: 'lora key not loaded' lines:", len(not_loaded))
    assert not_loaded == [], not_loaded[:5]


def _images(server, outputs: dict, node_id: str) -> list:
    """The PIL images a PreviewImage node of a finished prompt wrote, read back through /view."""
    import io
    import urllib.parse

    from PIL import Image

    pictures = []
    for item in outputs[node_id]["images"]:
        query = urllib.parse.urlencode({"filename": item["filename"], "subfolder": item["subfolder"], "type": item["type"]})
        with urllib.request.urlopen(f"{server.url}/view?{query}", timeout=10) as response:
            pictures.append(Image.open(io.BytesIO(response.read())).convert("RGB"))
    return pictures


def compare_graph(data_dir: str) -> dict:
    """Train (cached if already run) -> Compare Grid of two prompts at strengths 0 and 1, next to the stock path for the
    first prompt: CLIP Text Encode -> KSampler -> VAE Decode without the LoRA, and with it through Apply LoRA; and a
    Dataset Preview of the training data."""
    graph = training_graph(data_dir)
    sampler = {"seed": 5, "steps": 1, "cfg": 1.5, "sampler_name": "euler", "scheduler": "normal"}
    prompt = "sks a red circle"

    def stock_path(first_id: int, model, clip):
        ids = [str(first_id + offset) for offset in range(5)]
        return {
            ids[0]: {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": prompt}},
            ids[1]: {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": ""}},
            ids[2]: {"class_type": "KSampler", "inputs": {**sampler, "denoise": 1.0, "model": model, "positive": [ids[0], 0], "negative": [ids[1], 0], "latent_image": ["13", 0]}},
            ids[3]: {"class_type": "VAEDecode", "inputs": {"samples": [ids[2], 0], "vae": ["10", 2]}},
            ids[4]: {"class_type": "PreviewImage", "inputs": {"images": [ids[3], 0]}},
        }

    graph.update({
        "10": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "13": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "30": {"class_type": "LoRATrainer_CompareGrid", "inputs": {
            "model": ["10", 0], "clip": ["10", 1], "vae": ["10", 2], "lora": ["5", 0], "lora_files": "", "prompts": f"{prompt}\na blue square",
            "negative": "", "strengths": "0, 1", "width": 64, "height": 64, **sampler}},
        "31": {"class_type": "PreviewImage", "inputs": {"images": ["30", 0]}},
        "32": {"class_type": "PreviewImage", "inputs": {"images": ["30", 1]}},
        "33": {"class_type": "LoRATrainer_DatasetPreview", "inputs": {"dataset": ["3", 0], "max_images": 4, "resolution": 64, "aspect_buckets": False}},
        "34": {"class_type": "PreviewImage", "inputs": {"images": ["33", 0]}},
        "20": {"class_type": "LoRATrainer_ApplyLoRA", "inputs": {"model": ["10", 0], "clip": ["10", 1], "lora": ["5", 0], "strength_model": 1.0, "strength_clip": 1.0}},
        **stock_path(40, ["10", 0], ["10", 1]),
        **stock_path(50, ["20", 0], ["20", 1]),
    })
    return graph


def test_compare_grid_samples_as_the_stock_nodes_do(server):
    import numpy as np

    from core.grids import GridLayout, SheetLayout

    data_dir = str(server.base / "input" / "shapes")
    lines_before = len(server.text().splitlines())
    started = time.time()
    run = server.run(compare_graph(data_dir))
    print("compare grid prompt:", run["status"]["status_str"], f"in {time.time() - started:.1f}s")
    assert run["status"]["status_str"] == "success", json.dumps(run["status"])[:3000]
    (grid,) = _images(server, run["outputs"], "31")
    cells = _images(server, run["outputs"], "32")
    print("grid size:", grid.size, "cells:", [cell.size for cell in cells])
    assert grid.size == GridLayout.for_cells(2, 2, 64, 64).size and [cell.size for cell in cells] == [(64, 64)] * 4
    (plain,) = _images(server, run["outputs"], "44")
    (with_lora,) = _images(server, run["outputs"], "54")
    pixels = [np.asarray(image, dtype=np.int16) for image in (cells[0], cells[1], plain, with_lora)]
    print("max difference to the stock KSampler, strength 0 / strength 1:", int(np.abs(pixels[0] - pixels[2]).max()), int(np.abs(pixels[1] - pixels[3]).max()))
    print("strength 1 against strength 0, mean difference:", float(np.abs(pixels[1] - pixels[0]).mean()))
    assert np.array_equal(pixels[0], pixels[2]), "strength 0 is what KSampler gives without the LoRA"
    assert np.array_equal(pixels[1], pixels[3]), "strength 1 is what KSampler gives with ComfyUI's LoRA loader"
    assert not np.array_equal(pixels[0], pixels[1])
    (sheet,) = _images(server, run["outputs"], "34")
    print("dataset preview size:", sheet.size)
    assert sheet.size == SheetLayout.for_images([(64, 64)] * 4, 4).size

    from_file = {
        "10": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "30": {"class_type": "LoRATrainer_CompareGrid", "inputs": {
            "model": ["10", 0], "clip": ["10", 1], "vae": ["10", 2], "lora_files": "integration_lora.safetensors", "prompts": "sks a red circle",
            "negative": "", "strengths": "1", "width": 64, "height": 64, "seed": 5, "steps": 1, "cfg": 1.5, "sampler_name": "euler", "scheduler": "normal"}},
        "32": {"class_type": "PreviewImage", "inputs": {"images": ["30", 1]}},
    }
    again = server.run(from_file)
    print("compare grid from the saved file:", again["status"]["status_str"])
    assert again["status"]["status_str"] == "success", json.dumps(again["status"])[:3000]
    (saved_cell,) = _images(server, again["outputs"], "32")
    assert np.array_equal(np.asarray(saved_cell), np.asarray(cells[1])), "the saved file gives the in-memory LoRA's image"
    new_lines = server.text().splitlines()[lines_before:]
    assert [line for line in new_lines if "lora key not loaded" in line] == []


def test_training_options_and_validation_reach_core_and_the_websocket(server):
    """A Training Options node's min-SNR reaches the file's metadata; validation points arrive over the websocket as the run goes."""
    from safetensors import safe_open

    from event_tap import EventTap

    options = {name: declared[1]["default"] for name, declared in server.object_info["LoRATrainer_TrainingOptions"]["input"]["required"].items()}
    options.update(min_snr_gamma=5.0, validation_split=2.0, validation_every=2)
    graph = training_graph(str(server.base / "input" / "shapes"), steps=4)
    graph["7"] = {"class_type": "LoRATrainer_TrainingOptions", "inputs": options}
    graph["5"]["inputs"].update(options=["7", 0], checkpoint_folder="options_validation", save_every=0)
    graph["6"]["inputs"]["lora_name"] = "options_validation_lora"
    tap = EventTap(server.port)
    tap.start()
    try:
        result = server.run(graph)
    finally:
        time.sleep(0.5)
        tap.close()
    assert result["status"]["status_str"] == "success", json.dumps(result["status"])[:3000]
    validation = [event for event in tap.of_type("lora_trainer.progress") if event.get("phase") == "validation"]
    print("validation events over the websocket:", [(e["step"], round(e["validation_loss"], 4)) for e in validation])
    assert [e["step"] for e in validation] == [2, 4] and all(e["node"] == "5" for e in validation)
    with safe_open(str(server.base / "models" / "loras" / "options_validation_lora.safetensors"), framework="pt") as handle:
        metadata = handle.metadata()
    print("metadata:", {k: metadata[k] for k in ("ss_min_snr_gamma", "ss_validation_losses", "ss_num_train_images")})
    assert metadata["ss_min_snr_gamma"] == "5" and metadata["ss_num_train_images"] == "2"
    assert [step for step, _ in json.loads(metadata["ss_validation_losses"])] == [2, 4]
    assert [point[0] for point in _get(server.url + "/lora_trainer/last_run/5")["validation"]] == [2, 4]


def test_caption_with_the_wd14_tagger_then_train(server):
    """The caption-then-train example's path with a tiny ONNX tagger in models/wd14_tagger: the tags reach the LoRA's
    ss_tag_frequency, the node's text preview comes back in the prompt's outputs, and the review files are written."""
    from safetensors import safe_open

    from captioner_support import build_tiny_tagger

    build_tiny_tagger(server.base / "models" / "wd14_tagger" / "tiny-tagger")
    graph = training_graph(str(server.base / "input" / "shapes"), steps=2)
    graph["3"]["inputs"].update(method="WD14 tagger", wd14_model="tiny-tagger", mode="append", general_threshold=0.35,
                                character_threshold=0.85, write_captions_to="tagger_review")
    graph["5"]["inputs"].update(checkpoint_folder="tagger", save_every=0)
    graph["6"]["inputs"]["lora_name"] = "tagger_lora"
    started = time.time()
    result = server.run(graph)
    print("caption-then-train with the tagger:", result["status"]["status_str"], f"in {time.time() - started:.1f}s")
    assert result["status"]["status_str"] == "success", json.dumps(result["status"])[:3000]
    preview = result["outputs"]["3"]["text"][0]
    print("Captioner preview:\n" + preview)
    assert preview.startswith("4 caption(s) by tiny-tagger; trigger 'sks' added")
    with safe_open(str(server.base / "models" / "loras" / "tagger_lora.safetensors"), framework="pt") as handle:
        frequency = json.loads(handle.metadata()["ss_tag_frequency"])
    print("ss_tag_frequency:", frequency)
    (tags,) = frequency.values()
    assert {tag: tags.get(tag) for tag in ("sks", "^_^", ":d", "1girl", "solo")} == dict.fromkeys(("sks", "^_^", ":d", "1girl", "solo"), 4)
    assert any(tag.startswith("a ") and tag.endswith(" background") for tag in tags), "append: the captions it had stay"
    review = server.base / "input" / "tagger_review"
    assert len(list(review.rglob("*.txt"))) == 4 and len(list(review.rglob("*.png"))) == 4
