"""`python -m core train` with the data flags: an HF save_to_disk folder, a kohya tree, and flag misuse."""
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from safetensors import safe_open

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args):
    process = subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    last_line = process.stdout.strip().splitlines()[-1] if process.stdout.strip() else "{}"
    return process, json.loads(last_line)


def test_hf_dataset_with_buckets_trigger_and_tag_shuffle(tiny_assets, tmp_path, digest):
    datasets = pytest.importorskip("datasets")
    images = []
    for size in [(128, 128), (256, 64), (64, 256), (128, 128)]:
        buffer = io.BytesIO()
        Image.new("RGB", size, "teal").save(buffer, format="PNG")
        images.append({"bytes": buffer.getvalue(), "path": None})
    folder = tmp_path / "hf"
    features = datasets.Features({"image": datasets.Image(), "en_text": datasets.Value("string")})
    datasets.Dataset.from_dict({"image": images, "en_text": ["a, b, c"] * 4}, features=features).save_to_disk(str(folder))
    before = digest(folder)
    output = tmp_path / "out.safetensors"
    process, summary = run_cli(
        "train", "--base", str(tiny_assets["diffusers"]), "--hf-dataset", str(folder), "--max-samples", "3", "--output", str(output),
        "--steps", "2", "--resolution", "128", "--rank", "2", "--bucket", "--trigger", "sks", "--shuffle-tags", "--caption-dropout", "0.1",
    )
    assert process.returncode == 0, process.stderr
    assert "3 images, 3 captions" in process.stderr and "first 3 of 4 rows" in process.stderr
    with safe_open(str(output), "pt") as handle:
        metadata = handle.metadata()
    assert metadata["ss_enable_bucket"] == "True" and metadata["ss_keep_tokens"] == "1"  # the trigger is kept in place
    assert json.loads(metadata["ss_tag_frequency"]) == {"hf": {"sks": 3, "a": 3, "b": 3, "c": 3}}
    assert summary["steps"] == 2
    assert digest(folder) == before


def test_kohya_tree_through_data_flag(tiny_assets, tmp_path):
    for folder, count in (("4_cat", 2), ("1_dog", 1)):
        (tmp_path / "img" / folder).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (64, 64), "red").save(tmp_path / "img" / folder / f"{i}.png")
    output = tmp_path / "k.safetensors"
    process, _ = run_cli(
        "train", "--base", str(tiny_assets["diffusers"]), "--data", str(tmp_path / "img"), "--output", str(output),
        "--steps", "1", "--resolution", "64", "--rank", "2",
    )
    assert process.returncode == 0, process.stderr
    with safe_open(str(output), "pt") as handle:
        metadata = handle.metadata()
    assert json.loads(metadata["ss_dataset_dirs"]) == {"1_dog": {"n_repeats": 1, "img_count": 1}, "4_cat": {"n_repeats": 4, "img_count": 2}}
    assert metadata["ss_num_train_images"] == "9"


@pytest.mark.parametrize("extra, message", [
    (["--hf-dataset", "x/y", "--layout", "kohya"], "--layout and --caption-extension are for --data"),
    (["--data", ".", "--split", "test"], "--split, --image-column and --max-samples are for --hf-dataset"),
    (["--hf-dataset", "owner/not-cached"], "not in the local Hugging Face cache"),
])
def test_data_flag_misuse_is_one_sentence(tmp_path, extra, message):
    process, summary = run_cli("train", "--base", str(tmp_path / "none.safetensors"), "--output", str(tmp_path / "x.safetensors"), *extra)
    assert process.returncode == 2 and "Traceback" not in process.stderr
    assert message in summary["error"]


def test_data_and_hf_dataset_are_exclusive(tmp_path):
    process, _ = run_cli("train", "--base", "b", "--output", "x.safetensors", "--data", ".", "--hf-dataset", "a/b")
    assert process.returncode == 2 and "not allowed with argument" in process.stderr
