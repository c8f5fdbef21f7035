"""The bad-input suite: each row is one mistake a user makes, run through the CLI.

Every row must end with exit status 2, one sentence naming the problem, no
traceback, nothing written to the output folder and the dataset untouched.
"""
import json
import pickle
import struct
import zlib
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from core.cli import main


def _tensors(path: Path, keys) -> Path:
    save_file({k: torch.zeros(2) for k in keys}, str(path))
    return path


def _huge_png_header(path: Path, width=20000, height=20000) -> None:
    """A PNG that claims 20000x20000 pixels: enough to trip the decompression-bomb guard without using 1 GB."""
    Image.new("RGB", (8, 8), "white").save(path)
    data = bytearray(path.read_bytes())
    ihdr = data[12:29]
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))


class _Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def _evil_ckpt(path: Path) -> Path:
    with open(path, "wb") as handle:
        pickle.dump({"state_dict": _Payload()}, handle)
    return path


def _other_run_checkpoints(case):
    """A checkpoint folder written by a run with another rank."""
    status = main(case.argv(**{"--rank": "4", "--steps": "1", "--save-every": "1", "--checkpoint-dir": str(case.tmp / "other_run"),
                               "--output": str(case.tmp / "elsewhere" / "other.safetensors")}))
    assert status == 0
    return {"--resume": str(case.tmp / "other_run")}


# (id, how to break the input -> argv overrides, expected words in the message)
CASES = [
    ("checkpoint missing", lambda c: {"--base": str(c.tmp / "nope.safetensors")}, "does not exist"),
    ("checkpoint empty", lambda c: {"--base": str(c.write("empty.safetensors", b""))}, "is empty"),
    ("checkpoint truncated", lambda c: {"--base": str(c.write("cut.safetensors", c.assets["ldm"].read_bytes()[:4000]))}, "truncated"),
    ("text file renamed", lambda c: {"--base": str(c.write("notes.safetensors", b"my notes\n" * 50))}, "not a valid safetensors"),
    ("unsupported extension", lambda c: {"--base": str(c.write("model.gguf", b"GGUF"))}, "unsupported extension"),
    ("LoRA as base", lambda c: {"--base": str(_tensors(c.tmp / "lora.safetensors", ["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"]))}, "LoRA file"),
    ("VAE alone", lambda c: {"--base": str(_tensors(c.tmp / "vae.safetensors", ["encoder.down.0.block.0.conv1.weight"]))}, "VAE on its own"),
    ("SDXL checkpoint", lambda c: {"--base": str(_tensors(c.tmp / "xl.safetensors", ["conditioner.embedders.1.model.ln_final.weight", "model.diffusion_model.label_emb.0.0.weight"]))}, "SDXL"),
    ("Flux checkpoint", lambda c: {"--base": str(_tensors(c.tmp / "flux.safetensors", ["double_blocks.0.img_attn.qkv.weight"]))}, "Flux"),
    ("ckpt with pickled code", lambda c: {"--base": str(_evil_ckpt(c.tmp / "evil.ckpt"))}, "refused"),
    ("tokenizer missing merges", lambda c: {"--tokenizer": str(c.mkdir("tok", {"vocab.json": b"{}"}))}, "lacks merges.txt"),
    ("dataset missing", lambda c: {"--data": str(c.tmp / "no_data")}, "does not exist"),
    ("dataset is a file", lambda c: {"--data": str(c.write("data.txt", b"x"))}, "is a file"),
    ("dataset empty", lambda c: {"--data": str(c.mkdir("empty_data", {}))}, "holds no images"),
    ("only non-images", lambda c: {"--data": str(c.mkdir("texts", {"a.txt": b"x", "b.md": b"y"}))}, "holds no images"),
    ("image without caption", lambda c: c.damage(lambda d: (d / "text" / "1.txt").unlink()), "have no caption: text/1.txt"),
    ("caption without image", lambda c: c.damage(lambda d: (d / "text" / "9.txt").write_text("orphan")), "have no image"),
    ("corrupt PNG", lambda c: c.damage(lambda d: (d / "image" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")), "not readable images"),
    ("1x1 image", lambda c: c.damage(lambda d: Image.new("RGB", (1, 1)).save(d / "image" / "3.png")), "only 1x1 pixels"),
    ("decompression bomb", lambda c: c.damage(lambda d: _huge_png_header(d / "image" / "0.png")), "Mpx limit"),
    ("caption not UTF-8", lambda c: c.damage(lambda d: (d / "text" / "0.txt").write_bytes(b"\xff\xfe\xfd")), "not UTF-8"),
    ("HF id unknown offline", lambda c: {"--data": None, "--hf-dataset": "nobody/no-such-dataset-xyz"}, "offline|not in the local|cache"),
    ("HF column missing", lambda c: {"--data": None, "--hf-dataset": str(c.parquet()), "--caption-column": "nope"}, "columns"),
    ("rank 0", lambda c: {"--rank": "0"}, "rank must be"),
    ("rank wider than layers", lambda c: {"--rank": "4096"}, "larger than the UNet layer"),
    ("alpha negative", lambda c: {"--alpha": "-1"}, "alpha must be positive"),
    ("steps 0", lambda c: {"--steps": "0"}, "steps must be at least 1"),
    ("batch larger than dataset", lambda c: {"--batch-size": "64"}, "larger than the dataset"),
    ("resolution not multiple of 64", lambda c: {"--resolution": "100"}, "multiple of 64"),
    ("resolution below 64", lambda c: {"--resolution": "32"}, "multiple of 64"),
    ("learning rate 0", lambda c: {"--lr": "0"}, "Learning rate"),
    ("learning rate NaN", lambda c: {"--lr": "nan"}, "Learning rate"),
    ("output not safetensors", lambda c: {"--output": str(c.out / "x.ckpt")}, "must end in .safetensors"),
    ("output is a folder", lambda c: {"--output": str(c.out)}, "must end in .safetensors|is a folder"),
    ("resume from another run", _other_run_checkpoints, "different run"),
    ("validation split takes every image", lambda c: {"--validation-split": "50"}, "leaves none to train on"),
    ("validation split not a count", lambda c: {"--validation-split": "2.5"}, "fraction below 1 or a whole number of images"),
    ("keep best without validation", lambda c: {"--keep-best": True}, "Keeping the best checkpoint needs validation"),
    ("device misspelled", lambda c: {"--device": "cdua"}, "Unknown device 'cdua'"),
    ("device not on this machine", lambda c: {"--device": "cuda:7"}, "not available|does not exist"),
]


class Case:
    def __init__(self, tmp: Path, assets, dataset_dir: Path):
        self.tmp, self.assets, self.dataset_dir = tmp, assets, dataset_dir
        self.out = tmp / "out"
        self.out.mkdir()

    def write(self, name, content: bytes) -> Path:
        path = self.tmp / name
        path.write_bytes(content)
        return path

    def mkdir(self, name, files) -> Path:
        folder = self.tmp / name
        folder.mkdir()
        for file_name, content in files.items():
            (folder / file_name).write_bytes(content)
        return folder

    def damage(self, change) -> dict:
        change(self.dataset_dir)
        return {}

    def parquet(self) -> Path:
        from datasets import Dataset, Image as ImageFeature

        folder = self.tmp / "parquet"
        folder.mkdir()
        rows = {"image": [str(p) for p in sorted((self.dataset_dir / "image").iterdir())]}
        rows["en_text"] = ["a caption"] * len(rows["image"])
        Dataset.from_dict(rows).cast_column("image", ImageFeature()).to_parquet(str(folder / "train.parquet"))
        return folder

    def argv(self, **overrides):
        args = {
            "--base": str(self.assets["ldm"]), "--tokenizer": str(self.assets["tokenizer"]), "--data": str(self.dataset_dir),
            "--output": str(self.out / "lora.safetensors"), "--steps": "2", "--resolution": "64", "--rank": "2",
            "--precision": "fp32", "--batch-size": "1",
        }
        args.update(overrides)
        argv = ["train"]
        for key, value in args.items():
            if value is True:  # a flag without a value
                argv.append(key)
            elif value is not None:
                argv += [key, value]
        return argv


@pytest.mark.parametrize("name, breaks, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_sentence_and_writes_nothing(name, breaks, expected, tmp_path, tiny_assets, dataset_dir, digest, capsys):
    import re

    case = Case(tmp_path, tiny_assets, dataset_dir)
    overrides = breaks(case)
    capsys.readouterr()
    dataset_before, output_before = digest(dataset_dir), digest(case.out)
    status = main(case.argv(**overrides))
    captured = capsys.readouterr()
    message = json.loads(captured.out.strip().splitlines()[-1]).get("error", "")
    assert status == 2, captured.err[-2000:]
    assert re.search(expected, message), message
    assert "Traceback" not in captured.err and "pickled code ran" not in captured.out
    assert message.count("\n") == 0 and len(message) < 600
    assert digest(case.out) == output_before, "nothing may be written to the output folder"
    assert digest(dataset_dir) == dataset_before, "the dataset must never be modified"


def test_the_suite_covers_at_least_25_cases():
    assert len(CASES) >= 25
