"""Benchmark inputs built locally: random-weight models and synthetic captioned images.

Both trainers read the same diffusers folder and the same images; ours from
``image/`` + ``text/``, the reference from an imagefolder with
``metadata.jsonl`` (its only local format).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from core import tiny

MODELS = ("tiny", "sd15")  # the ones compared with the SD1.5 reference script
# Every model a benchmark can build: (family, full size).
ARCHITECTURES = {"tiny": ("sd1", False), "sd15": ("sd1", True), "tiny-sdxl": ("sdxl", False), "sdxl": ("sdxl", True), "sd2": ("sd2", True)}


def build_model(workdir: Path, model: str) -> Path:
    """A diffusers folder of a model in ``ARCHITECTURES`` (random weights), built once.

    Full-size SDXL is built and stored in bf16 (its fp32 weights alone are 14 GB); the others in fp32."""
    import torch

    folder = workdir / f"{model}_diffusers"
    if (folder / "model_index.json").is_file():
        return folder
    family, full_size = ARCHITECTURES[model]
    tokenizer_dir = tiny.write_tiny_tokenizer(workdir / f"{model}_tokenizer", vocab_size=tiny.CLIP_VOCAB_SIZE if full_size else None)
    dtype = torch.bfloat16 if model == "sdxl" else None
    base = tiny.build_base_model(tokenizer_dir, seed=0, full_size=full_size, family=family, dtype=dtype)
    staging = workdir / f".{model}_diffusers.partial"
    shutil.rmtree(staging, ignore_errors=True)
    tiny.save_diffusers_folder(base, staging, tokenizer_dir)
    staging.rename(folder)
    return folder


def build_data(workdir: Path, size: int, count: int = 8) -> tuple[Path, Path]:
    """(ours, reference) dataset folders holding the same images and captions."""
    ours = workdir / (f"data_{size}" if count == 8 else f"data_{size}_{count}")
    reference = ours.with_name(ours.name + "_imagefolder")
    if not ours.exists():
        tiny.write_synthetic_dataset(ours, count=count, size=size)
    if not reference.exists():
        reference.mkdir(parents=True)
        rows = []
        for image in sorted((ours / "image").iterdir()):
            shutil.copy(image, reference / image.name)
            rows.append({"file_name": image.name, "text": (ours / "text" / f"{image.stem}.txt").read_text()})
        (reference / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return ours, reference


def build_aspect_data(square_data: Path, size: int) -> Path:
    """The images of ``square_data`` cropped to three aspect ratios in turn (1:1, 3:2, 2:3), for bucketed runs."""
    from PIL import Image

    folder = square_data.with_name(square_data.name + "_aspects")
    if folder.exists():
        return folder
    staging = folder.with_name("." + folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(square_data, staging)
    for index, image_path in enumerate(sorted((staging / "image").iterdir())):
        width, height = [(size, size), (size, size * 2 // 3), (size * 2 // 3, size)][index % 3]
        with Image.open(image_path) as image:
            left, top = (image.width - width) // 2, (image.height - height) // 2
            image.crop((left, top, left + width, top + height)).save(image_path)
    staging.rename(folder)
    return folder
