"""The Captioner node against a stand-in ComfyUI: the WD14 tagger from models/wd14_tagger, the text preview,
modes, review files loaded back with Folder Dataset, and the widgets saved workflows already hold."""
from __future__ import annotations

import pytest

from captioner_support import build_tiny_tagger, write_color_images
from node_support import StandinComfy, load_suite

suite = load_suite()
from lora_trainer_suite.core.captioners import CAPTION_CACHE  # noqa: E402
from lora_trainer_suite.core.errors import DatasetError, OutputPathError  # noqa: E402
from lora_trainer_suite.nodes import comfy_bridge  # noqa: E402
from lora_trainer_suite.nodes import captioning as C  # noqa: E402

NODE_ID = "LoRATrainer_Captioner"


@pytest.fixture
def comfy(tmp_path):
    standin = StandinComfy(tmp_path / "comfy", tmp_path / "no_tokenizer")
    standin.folders["wd14_tagger"] = [str(standin.models / "wd14_tagger")]
    build_tiny_tagger(standin.models / "wd14_tagger" / "tiny-tagger")
    previous = comfy_bridge.use(standin)
    CAPTION_CACHE.clear()
    yield standin
    comfy_bridge.use(previous)
    CAPTION_CACHE.clear()


@pytest.fixture
def images(comfy):
    return write_color_images(comfy.input_dir / "colors", captions={"red": "my red drawing"})


def folder_dataset(path):
    return suite.NODE_CLASS_MAPPINGS["LoRATrainer_FolderDataset"]().load(str(path), "auto", 1)[0]


def uncaptioned(path):
    from lora_trainer_suite.core.dataset import load_folder_dataset

    return load_folder_dataset(path, allow_uncaptioned=True)


def captioner():
    return suite.NODE_CLASS_MAPPINGS[NODE_ID]()


def test_node_keeps_its_id_and_first_widgets_in_place_and_adds_the_rest():
    spec = suite.NODE_CLASS_MAPPINGS[NODE_ID].INPUT_TYPES()
    assert list(spec["required"]) == ["dataset", "method", "trigger_word"]
    optional = list(spec["optional"])
    assert optional[:2] == ["blip_model", "overwrite"], "saved workflows hold these two in these places"
    assert {"mode", "wd14_model", "general_threshold", "character_threshold", "max_tags", "exclude_tags", "rating_tag",
            "florence2_model", "florence2_task", "write_captions_to"} <= set(optional)
    methods = spec["required"]["method"][0]
    assert methods[:4] == ["keep", "from file name", "trigger word only", "BLIP"] and {"WD14 tagger", "Florence-2"} <= set(methods)
    assert spec["optional"]["general_threshold"][1]["default"] == 0.35 and spec["optional"]["character_threshold"][1]["default"] == 0.85
    assert spec["hidden"] == {"unique_id": "UNIQUE_ID"}


def test_wd14_tagger_from_the_models_folder_with_preview_and_progress(comfy, images):
    data = uncaptioned(images)
    output = captioner().caption(data, "WD14 tagger", "sks", unique_id="5", wd14_model="tiny-tagger", max_tags=2)
    (result,) = output["result"]
    (text,) = output["ui"]["text"]
    captions = {entry.name: entry.caption for entry in result.entries}
    assert captions["red.png"] == "sks, my red drawing", "mode auto = fill for a model: an existing caption stays"
    assert captions["green.png"] == "sks, hatsune miku, star \\(symbol\\)"
    assert text.splitlines()[0] == "3 caption(s) by tiny-tagger; trigger 'sks' added"
    assert "green.png: sks, hatsune miku, star \\(symbol\\)" in text.splitlines()
    bar = comfy.bars[-1]
    assert bar.node_id == "5" and bar.updates[-1][:2] == (3, 3)
    assert "empty_cache" in comfy.calls
    (plain,) = captioner().caption(data, "WD14 tagger", "sks", wd14_model="tiny-tagger", max_tags=2)
    assert [e.caption for e in plain.entries] == [e.caption for e in result.entries], "without a node id: the plain tuple"


def test_modes_and_exclusions_through_the_widgets(comfy, images):
    data = uncaptioned(images)
    (replaced,) = captioner().caption(data, "WD14 tagger", "", wd14_model="tiny-tagger", mode="replace", exclude_tags="^_^\n:d",
                                      general_threshold=0.45, rating_tag=True)
    assert {e.name: e.caption for e in replaced.entries}["red.png"] == "kagamine rin \\(vocaloid\\), red theme, 1girl, sensitive"
    (appended,) = captioner().caption(data, "WD14 tagger", "", wd14_model="tiny-tagger", mode="append", max_tags=1, underscores_to_spaces=False,
                                      escape_parentheses=False)
    assert {e.name: e.caption for e in appended.entries}["red.png"] == "my red drawing, kagamine_rin_(vocaloid)"
    (legacy,) = captioner().caption(data, "WD14 tagger", "", "", True, wd14_model="tiny-tagger", max_tags=1)  # blip_model, overwrite by position
    assert {e.name: e.caption for e in legacy.entries}["red.png"] == "kagamine rin \\(vocaloid\\)"


def test_review_files_load_back_with_folder_dataset(comfy, images, digest):
    before = digest(images)
    output = captioner().caption(uncaptioned(images), "WD14 tagger", "sks", unique_id="9", wd14_model="tiny-tagger", write_captions_to="review")
    assert f"wrote 4 caption files (with the images) to {comfy.input_dir / 'review'}" in output["ui"]["text"][0]
    assert digest(images) == before, "the dataset's own folder is never written"
    (comfy.input_dir / "review" / "blue.txt").write_text("sks, edited by hand\n")
    reloaded = folder_dataset("review")
    assert {e.name: e.caption for e in reloaded.entries}["blue.png"] == "sks, edited by hand"
    with pytest.raises(OutputPathError, match=r"inside the dataset folder"):
        captioner().caption(uncaptioned(images), "keep", "", write_captions_to=str(images / "captions"))


def test_missing_tagger_and_unknown_widgets_are_one_sentence(comfy, images):
    with pytest.raises(DatasetError, match=r"WD14 tagger 'wd-eva02-large-tagger-v3' was not found: put model.onnx and selected_tags.csv .* into .*models/wd14_tagger/wd-eva02-large-tagger-v3"):
        captioner().caption(uncaptioned(images), "WD14 tagger", "")
    with pytest.raises(DatasetError, match=r"Captioner got colour, which this version"):
        captioner().caption(uncaptioned(images), "keep", "", colour="red")


def test_search_dirs_fall_back_beside_the_checkpoints_folder(comfy):
    assert C.model_search_dirs("wd14_tagger") == [str(comfy.models / "wd14_tagger")]
    assert C.model_search_dirs("florence2") == [str(comfy.models / "florence2")], "not registered: models/<kind> beside checkpoints"


def test_caption_then_train_example_uses_the_wd14_tagger_with_default_thresholds():
    import json

    from node_support import ROOT
    from workflow_support import our_node_spec

    workflow = json.loads((ROOT / "example_workflows" / "caption_then_train.json").read_text())
    (node,) = [n for n in workflow["nodes"] if n["type"] == NODE_ID]
    _, names, _ = our_node_spec(suite.NODE_CLASS_MAPPINGS[NODE_ID])
    values = dict(zip(names, node["widgets_values"]))
    assert (values["method"], values["wd14_model"], values["general_threshold"], values["character_threshold"]) == (
        "WD14 tagger", "wd-eva02-large-tagger-v3", 0.35, 0.85)
    assert values["trigger_word"] == "sks style" and values["write_captions_to"]


def test_importing_the_suite_loads_no_onnxruntime():
    import subprocess
    import sys

    from node_support import ROOT

    code = ("import sys; sys.path.insert(0, 'tests'); from node_support import load_suite; load_suite();"
            "print([m for m in ('onnxruntime', 'torch', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]", f"importing the suite imported {out}"


def test_a_raw_image_folder_reaches_the_tagger_through_folder_dataset(comfy, images):
    """Folder Dataset refuses images without caption files unless told to keep them for a Captioner, which fills them."""
    node = suite.NODE_CLASS_MAPPINGS["LoRATrainer_FolderDataset"]()
    with pytest.raises(DatasetError, match="have no caption"):
        node.load(str(images), "auto", 1)
    (kept,) = node.load(str(images), "auto", 1, images_without_captions="keep for the Captioner")
    assert sorted(e.caption for e in kept.entries) == ["", "", "", "my red drawing"]
    (captioned,) = captioner().caption(kept, "WD14 tagger", "sks", wd14_model="tiny-tagger", max_tags=2)
    assert all(entry.caption.startswith("sks, ") for entry in captioned.entries), "every image has a caption to train on"
    assert suite.NODE_CLASS_MAPPINGS["LoRATrainer_FolderDataset"].IS_CHANGED(str(images), "auto", 1, images_without_captions="refuse")
