"""Fixtures: a tiny random SD1.x model (diffusers folder + LDM file), its tokenizer, captioned images.

Nothing here touches the network; everything is built from configs in core/.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# "auto" precision must mean the same on every CI machine: fp32 on the CPU (bf16 is tested explicitly).
os.environ["LORA_TRAINER_CPU_BF16"] = "0"

from core import tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory):
    """Session-wide tiny model saved both ways, plus its tokenizer."""
    root = tmp_path_factory.mktemp("tiny_model")
    tokenizer_dir = tiny.write_tiny_tokenizer(root / "tokenizer")
    model = tiny.build_base_model(tokenizer_dir, seed=0)
    ldm_path = tiny.save_ldm_checkpoint(model, root / "tiny_sd15.safetensors")
    diffusers_dir = tiny.save_diffusers_folder(model, root / "tiny_diffusers", tokenizer_dir)
    return {"root": root, "tokenizer": tokenizer_dir, "model": model, "ldm": ldm_path, "diffusers": diffusers_dir}


@pytest.fixture(scope="module")
def tiny_base(tiny_assets):
    """The session's tiny model itself: training must leave it exactly as it found it."""
    return tiny_assets["model"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """Four captioned shape images shared by one test module."""
    from core.dataset import load_folder_dataset

    return load_folder_dataset(tiny.write_synthetic_dataset(tmp_path_factory.mktemp("shapes") / "data", count=4, size=64))


@pytest.fixture
def base_model(tiny_assets):
    from core.model_loading import load_base_model

    return load_base_model(tiny_assets["ldm"], tiny_assets["tokenizer"])


@pytest.fixture
def dataset_dir(tmp_path):
    return tiny.write_synthetic_dataset(tmp_path / "data", count=6, size=64)


@pytest.fixture
def dataset(dataset_dir):
    from core.dataset import load_folder_dataset

    return load_folder_dataset(dataset_dir)


def tree_digest(folder: Path) -> str:
    """Hash of every file name and content below a folder (to prove nothing was written)."""
    digest = hashlib.sha256()
    if not folder.exists():
        return "absent"
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def digest():
    return tree_digest
