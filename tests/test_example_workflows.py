"""Every example workflow loads: known node types, widget counts that match the inputs, links whose types agree."""
from __future__ import annotations

import json

import pytest

from node_support import ROOT, load_suite
from workflow_support import all_specs

SUITE = load_suite()
SPECS = all_specs(SUITE.NODE_CLASS_MAPPINGS)
WORKFLOW_DIR = ROOT / "example_workflows"
EXPECTED = ["caption_then_train", "one_line_art_folder", "pokemon_hf_dataset", "sdxl_train_then_sample", "train_save_compare_grid", "train_then_sample"]


def load(name):
    return json.loads((WORKFLOW_DIR / f"{name}.json").read_text())


def widgets(workflow, node_type):
    nodes = [n for n in workflow["nodes"] if n["type"] == node_type]
    assert len(nodes) >= 1, node_type
    _, names, _ = SPECS[node_type]
    return [dict(zip(names, n["widgets_values"])) for n in nodes]


def optional_sockets(node_type):
    """Sockets our nodes declare optional (e.g. Apply LoRA's clip, Train LoRA's options): they may stay unconnected."""
    cls = SUITE.NODE_CLASS_MAPPINGS.get(node_type)
    return set(cls.INPUT_TYPES().get("optional", {})) if cls else set()


def test_the_six_workflows_are_there():
    assert sorted(p.stem for p in WORKFLOW_DIR.glob("*.json")) == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_workflow_is_consistent(name):
    workflow = load(name)
    nodes = {node["id"]: node for node in workflow["nodes"]}
    assert len(nodes) == len(workflow["nodes"]) and workflow["last_node_id"] >= max(nodes)
    for node in nodes.values():
        assert node["type"] in SPECS, f"unknown node type {node['type']}"
        sockets, widget_names, outputs = SPECS[node["type"]]
        assert len(node["widgets_values"]) == len(widget_names), f"{node['type']}: {len(node['widgets_values'])} widget values for {widget_names}"
        assert [(i["name"], i["type"]) for i in node["inputs"]] == sockets, node["type"]
        assert [o["type"] for o in node["outputs"]] == outputs, node["type"]
        for slot in node["inputs"]:
            optional = slot["name"] in optional_sockets(node["type"])
            assert slot["link"] is not None or optional, f"{node['type']}.{slot['name']} is not connected"
    seen = set()
    for link_id, origin, origin_slot, target, target_slot, kind in workflow["links"]:
        seen.add(link_id)
        out, inp = nodes[origin]["outputs"][origin_slot], nodes[target]["inputs"][target_slot]
        assert out["type"] == kind == inp["type"], f"link {link_id}: {out['type']} -> {inp['type']} as {kind}"
        assert link_id in out["links"] and inp["link"] == link_id
    assert workflow["last_link_id"] >= max(seen)


def test_pokemon_showcase_settings():
    workflow = load("pokemon_hf_dataset")
    assert widgets(workflow, "LoRATrainer_LoadBaseCheckpoint")[0]["checkpoint"] == "Dreamshaper_8_pruned.safetensors"
    data = widgets(workflow, "LoRATrainer_HFDataset")[0]
    assert data["dataset"] == "svjack/pokemon-blip-captions-en-zh" and data["caption_column"] == "en_text"
    assert widgets(workflow, "LoRATrainer_LoRAConfig")[0]["rank"] == 4
    train = widgets(workflow, "LoRATrainer_TrainLoRA")[0]
    assert (train["learning_rate"], train["batch_size"], train["steps"], train["save_every"], train["checkpoint_folder"]) == (1e-4, 1, 1000, 200, "lora_showcase")
    assert widgets(workflow, "LoRATrainer_SaveLoRA")[0]["lora_name"] == "pokemon_lora"


def test_folder_and_sampling_workflows():
    art = load("one_line_art_folder")
    assert widgets(art, "LoRATrainer_FolderDataset")[0]["layout"] == "image-text"
    train = widgets(art, "LoRATrainer_TrainLoRA")[0]
    assert (train["steps"], train["save_every"]) == (64, 16)
    assert widgets(load("caption_then_train"), "LoRATrainer_Captioner")[0]["trigger_word"]
    sample = load("train_then_sample")
    samplers = [n for n in sample["nodes"] if n["type"] == "KSampler"]
    assert len(samplers) == 2
    by_id = {n["id"]: n for n in sample["nodes"]}
    model_sources = sorted(by_id[link[1]]["type"] for link in sample["links"] if link[5] == "MODEL" and by_id[link[3]]["type"] == "KSampler")
    assert model_sources == ["CheckpointLoaderSimple", "LoRATrainer_ApplyLoRA"], "one sampler with the LoRA, one without"
    assert all(n["widgets_values"][1] == "fixed" for n in samplers), "a randomized seed would re-run sampling, never training, but fixed compares fairly"


def test_sdxl_workflow_trains_at_the_family_size_and_samples_with_and_without():
    sdxl = load("sdxl_train_then_sample")
    assert widgets(sdxl, "LoRATrainer_LoadBaseCheckpoint")[0]["checkpoint"] == "sd_xl_base_1.0.safetensors"
    train = widgets(sdxl, "LoRATrainer_TrainLoRA")[0]
    assert (train["resolution"], train["aspect_buckets"], train["gradient_checkpointing"]) == (0, "auto", True), "SDXL's 1024 and buckets, 8 GB-ready"
    assert widgets(sdxl, "EmptyLatentImage")[0]["width"] == 1024
    assert len([n for n in sdxl["nodes"] if n["type"] == "KSampler"]) == 2


def test_compare_grid_workflow_samples_the_trained_lora_at_three_strengths():
    workflow = load("train_save_compare_grid")
    grid = widgets(workflow, "LoRATrainer_CompareGrid")[0]
    prompts = grid["prompts"].splitlines()
    assert len(prompts) == 10 and prompts[0] == "one-line-art, face, side view", "the lab's ten images, its own prompt first"
    assert (grid["strengths"], grid["width"], grid["lora_files"]) == ("0, 0.5, 1.0", 512, "")
    by_id = {n["id"]: n for n in workflow["nodes"]}
    into_grid = {link[5]: by_id[link[1]]["type"] for link in workflow["links"] if by_id[link[3]]["type"] == "LoRATrainer_CompareGrid"}
    assert into_grid == {"MODEL": "CheckpointLoaderSimple", "CLIP": "CheckpointLoaderSimple", "VAE": "CheckpointLoaderSimple", "LORA_MODEL": "LoRATrainer_TrainLoRA"}
    out_of_grid = sorted((link[2], by_id[link[3]]["type"]) for link in workflow["links"] if by_id[link[1]]["type"] == "LoRATrainer_CompareGrid")
    assert out_of_grid == [(0, "SaveImage"), (1, "PreviewImage")], "the grid is saved, the single images previewed"
    assert widgets(workflow, "LoRATrainer_SaveLoRA")[0]["lora_name"] == "one_line_art_lora"
