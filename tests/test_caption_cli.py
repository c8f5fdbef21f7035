"""python -m core caption: the WD14 tagger and Florence-2 from the command line, writing only into --output-dir."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from captioner_support import build_tiny_florence2, build_tiny_tagger, write_color_images
from node_support import ROOT


def run_caption(*args):
    process = subprocess.run([sys.executable, "-m", "core", "caption", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = process.stdout.strip().splitlines()
    return process, json.loads(lines[-1]) if lines else {}


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    return build_tiny_tagger(tmp_path_factory.mktemp("models") / "tiny-tagger")


@pytest.fixture
def data(tmp_path):
    return write_color_images(tmp_path / "data", captions={"red": "my red drawing"})


def test_wd14_caption_writes_reviewable_files_only_into_the_output_dir(tagger, data, tmp_path, digest):
    before = digest(data)
    process, summary = run_caption("--data", data, "--captioner", "wd14", "--model", tagger, "--output-dir", tmp_path / "review",
                                   "--trigger", "sks", "--max-tags", "2", "--rating")
    assert process.returncode == 0, process.stderr
    assert "caption 3/3" in process.stderr and "wrote 4 caption files" in process.stderr
    assert summary["files_written"] == 4 and summary["captions_changed"] == 4 and summary["note"] == "3 caption(s) by tiny-tagger; trigger 'sks' added"
    assert summary["sample"]["green.png"] == "sks, hatsune miku, star \\(symbol\\), general"
    assert (tmp_path / "review" / "red.txt").read_text() == "sks, my red drawing\n", "fill: the caption it had stays"
    assert sorted(p.suffix for p in (tmp_path / "review").iterdir()) == [".png"] * 4 + [".txt"] * 4
    assert digest(data) == before, "the dataset folder is only read"


def test_settings_flags_and_captions_only(tagger, data, tmp_path):
    process, summary = run_caption("--data", data, "--captioner", "wd14", "--model", tagger, "--output-dir", tmp_path / "out", "--captions-only",
                                   "--mode", "append", "--general-threshold", "0.45", "--exclude-tags", "^_^, :d", "--keep-underscores", "--no-escape")
    assert process.returncode == 0, process.stderr
    assert (tmp_path / "out" / "red.txt").read_text() == "my red drawing, kagamine_rin_(vocaloid), red_theme, 1girl\n"
    assert sorted(p.suffix for p in (tmp_path / "out").iterdir()) == [".txt"] * 4


@pytest.mark.parametrize("extra, message", [
    (["--output-dir", "{data}/captions"], "is inside the dataset folder"),
    (["--output-dir", "{tmp}/out", "--general-threshold", "2"], "general threshold must be between 0 and 1"),
    (["--output-dir", "{tmp}/out", "--model", "{tmp}/missing"], "WD14 tagger folder .*missing does not exist"),
])
def test_bad_input_is_one_sentence_and_exit_2(tagger, data, tmp_path, extra, message, capsys):
    import re

    from core.cli import main

    args = ["caption", "--data", str(data), "--captioner", "wd14", "--model", str(tagger)] + [a.format(data=data, tmp=tmp_path) for a in extra]
    assert main(args) == 2  # in this process: the same main() as python -m core, without a second start-up
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert re.search(message, summary["error"]) and "\n" not in summary["error"]
    assert not (data / "captions").exists() and not (tmp_path / "out").exists(), "nothing is written on bad input"


def test_florence2_from_the_command_line(tmp_path):
    model = build_tiny_florence2(tmp_path / "tiny-florence2")
    data = write_color_images(tmp_path / "data", names=("red", "blue"))
    process, summary = run_caption("--data", data, "--captioner", "florence2", "--model", model, "--output-dir", tmp_path / "out",
                                   "--task", "caption", "--max-new-tokens", "5", "--num-beams", "1", "--device", "cpu", "--offline")
    assert process.returncode == 0, process.stderr
    assert summary["note"] == "2 caption(s) by tiny-florence2" and all(summary["sample"].values())
    assert (tmp_path / "out" / "red.txt").read_text().strip() == summary["sample"]["red.png"]
