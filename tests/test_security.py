"""Static and behavioural checks of the security rules."""
import re
from pathlib import Path

import pytest

from core.errors import OutputPathError
from core.paths import check_file_name, safe_child

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [p for folder in ("core", "nodes", "bench") for p in (ROOT / folder).rglob("*.py")] + list(ROOT.glob("*.py"))


@pytest.mark.parametrize("pattern, why", [
    (r"(?<![.\w])eval\(", "no eval of strings"),
    (r"(?<![.\w])exec\(", "no exec of strings"),
    (r"pickle\.loads?\(", "no unpickling"),
    (r"trust_remote_code\s*=\s*True", "never trust remote code"),
    (r"torch\.load\((?!.*weights_only=True)", "torch.load only with weights_only=True"),
])
def test_source_never_does(pattern, why):
    offenders = [f"{p.relative_to(ROOT)}:{n}" for p in SOURCES for n, line in enumerate(p.read_text().splitlines(), 1)
                 if re.search(pattern, line) and not line.lstrip().startswith("#")]
    assert not offenders, f"{why}: {offenders}"


@pytest.mark.parametrize("name, message", [
    ("", "empty"),
    ("   ", "empty"),
    ("/etc/passwd", "absolute path"),
    ("a\\b", "backslash"),
    ("a//b", "empty"),
    ("..", "'..'"),
    ("x..y", "'..'"),
    ("bad\x00name", "NUL"),
    ("CON", "reserved"),
    ("lpt1.safetensors", "reserved"),
    ("x" * 300, "characters long"),
    ("what?", "not allowed"),
    (".hidden", "start or end with a dot"),
])
def test_bad_names_are_refused(tmp_path, name, message):
    with pytest.raises(OutputPathError, match=message):
        safe_child(tmp_path, name, "LoRA name", ".safetensors")


def test_good_names_stay_inside(tmp_path):
    assert safe_child(tmp_path, "my_lora", suffix=".safetensors") == (tmp_path / "my_lora.safetensors").resolve()
    assert safe_child(tmp_path, "my_lora.safetensors", suffix=".safetensors") == (tmp_path / "my_lora.safetensors").resolve()
    assert safe_child(tmp_path, "sd15/styles/ink", suffix=".safetensors") == (tmp_path / "sd15" / "styles" / "ink.safetensors").resolve()
    assert check_file_name("  pokemon lora v2 ") == "pokemon lora v2"


def test_symlink_escape_is_refused(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "root" / "link.safetensors").symlink_to(tmp_path / "outside" / "x.safetensors")
    with pytest.raises(OutputPathError, match="would leave"):
        safe_child(tmp_path / "root", "link", suffix=".safetensors")


def test_lora_metadata_is_size_limited_and_shown_short(tmp_path):
    import torch
    from safetensors.torch import save_file

    from core.errors import TrainerError
    from core.lora import LoRAWeights, read_lora_file

    tensors = {"lora_unet_x.lora_down.weight": torch.zeros(2, 2), "lora_unet_x.lora_up.weight": torch.zeros(2, 2)}
    save_file(tensors, str(tmp_path / "huge.safetensors"), metadata={"ss_network_dim": "4", "blob": "x" * (3 * 1024 * 1024)})
    with pytest.raises(TrainerError, match="refused"):
        read_lora_file(tmp_path / "huge.safetensors")
    shown = repr(LoRAWeights(tensors, {"ss_network_dim": "9" * 10_000, "ss_steps": "<script>" * 100}))
    assert len(shown) < 120
