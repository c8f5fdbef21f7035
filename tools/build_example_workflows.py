"""Write example_workflows/*.json (ComfyUI UI format) from the nodes' own input lists.

Run from the repository root: python tools/build_example_workflows.py
Widget values are given by name, so a reordered or added input fails here instead of in a user's graph.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from node_support import load_suite  # noqa: E402
from workflow_support import all_specs  # noqa: E402

SPECS = all_specs(load_suite().NODE_CLASS_MAPPINGS)
P = "LoRATrainer_"
DEFAULT_TRAIN = dict(steps=1000, learning_rate=1e-4, batch_size=1, resolution=512, training_seed=0, save_every=200, checkpoint_folder="my_lora",
                     lr_scheduler="cosine", warmup_steps=0, precision="auto", gradient_checkpointing=False, random_flip=True, aspect_buckets="auto",
                     device="auto")
SAMPLER = dict(seed=42, control_after_generate="fixed", steps=25, cfg=7.0, sampler_name="euler_ancestral", scheduler="normal", denoise=1.0)


class Workflow:
    def __init__(self):
        self.nodes, self.links = [], []

    def add(self, node_type, pos, widgets=None, size=(320, 130), title=None, **sources):
        sockets, widget_names, outputs = SPECS[node_type]
        widgets = widgets or {}
        unknown = set(widgets) - set(widget_names)
        missing = set(widget_names) - set(widgets)
        if unknown or missing:
            raise SystemExit(f"{node_type}: unknown widgets {sorted(unknown)}, missing {sorted(missing)}")
        node_id = len(self.nodes) + 1
        node = {
            "id": node_id, "type": node_type, "pos": list(pos), "size": list(size), "flags": {}, "order": node_id - 1, "mode": 0,
            "inputs": [], "outputs": [{"name": kind.lower(), "type": kind, "links": [], "slot_index": i} for i, kind in enumerate(outputs)],
            "properties": {"Node name for S&R": node_type}, "widgets_values": [widgets[name] for name in widget_names],
        }
        if title:
            node["title"] = title
        for slot, (name, kind) in enumerate(sockets):
            link = None
            if name in sources:
                origin, origin_slot = sources.pop(name)
                link = len(self.links) + 1
                self.links.append([link, origin["id"], origin_slot, node_id, slot, kind])
                origin["outputs"][origin_slot]["links"].append(link)
            node["inputs"].append({"name": name, "type": kind, "link": link})
        if sources:
            raise SystemExit(f"{node_type}: no sockets named {sorted(sources)}")
        self.nodes.append(node)
        return node

    def to_json(self):
        return {
            "last_node_id": len(self.nodes), "last_link_id": len(self.links), "nodes": self.nodes, "links": self.links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4,
        }


LORA_CONFIG = dict(alpha=0.0, dropout=0.0, targets="kohya", train_text_encoder=False, adapter="lora", dora=False, conv_rank=0, text_encoder_rank=0)


def training_chain(flow, dataset_node, *, checkpoint, rank, train, lora_name, y=0):
    base = flow.add(P + "LoadBaseCheckpoint", (0, y), {"checkpoint": checkpoint, "precision": "auto"})
    config = flow.add(P + "LoRAConfig", (0, y + 420), {"rank": rank, **LORA_CONFIG}, size=(320, 180))
    trainer = flow.add(P + "TrainLoRA", (380, y), {**DEFAULT_TRAIN, **train}, size=(380, 640),
                       base=(base, 0), dataset=(dataset_node, 0), lora_config=(config, 0))
    save = flow.add(P + "SaveLoRA", (820, y), {"lora_name": lora_name, "overwrite": False}, lora=(trainer, 0))
    return base, trainer, save


def pokemon():
    flow = Workflow()
    data = flow.add(P + "HFDataset", (0, 160), {"dataset": "svjack/pokemon-blip-captions-en-zh", "split": "train", "image_column": "auto", "caption_column": "en_text", "max_samples": 0}, size=(320, 200))
    _, trainer, _ = training_chain(flow, data, checkpoint="Dreamshaper_8_pruned.safetensors", rank=4, lora_name="pokemon_lora",
                                   train=dict(steps=1000, learning_rate=1e-4, batch_size=1, save_every=200, checkpoint_folder="lora_showcase"))
    flow.add("LossGraphNode", (820, 200), {"filename_prefix": "pokemon_lora_loss"}, loss=(trainer, 1))
    return flow


def one_line_art():
    flow = Workflow()
    data = flow.add(P + "FolderDataset", (0, 160), {"folder": "one-line-art", "layout": "image-text", "repeats": 1, "images_without_captions": "refuse"}, size=(320, 130))
    training_chain(flow, data, checkpoint="Dreamshaper_8_pruned.safetensors", rank=4, lora_name="one_line_art_lora",
                   train=dict(steps=64, save_every=16, checkpoint_folder="one_line_art"))
    return flow


# The WD14 tagger with its default thresholds; its files go in ComfyUI/models/wd14_tagger/wd-eva02-large-tagger-v3.
# append: the tags follow whatever caption an image has (a kohya folder's name, a caption file) and are added once.
WD14_CAPTIONER = dict(
    method="WD14 tagger", trigger_word="sks style", blip_model="", overwrite=False, mode="append", wd14_model="wd-eva02-large-tagger-v3",
    general_threshold=0.35, character_threshold=0.85, max_tags=0, exclude_tags="", underscores_to_spaces=True, escape_parentheses=True,
    rating_tag=False, florence2_model="florence-community/Florence-2-base", florence2_task="<DETAILED_CAPTION>", prefix="", suffix="",
    batch_size=8, write_captions_to="my_images_captions",
)


def caption_then_train():
    flow = Workflow()
    # A folder of images as they come (captions optional): the tagger fills the missing ones and adds its tags to the others.
    data = flow.add(P + "FolderDataset", (-760, 160), {"folder": "my_images", "layout": "auto", "repeats": 1, "images_without_captions": "keep for the Captioner"})
    captioned = flow.add(P + "Captioner", (-400, 0), WD14_CAPTIONER, size=(360, 760), dataset=(data, 0))
    training_chain(flow, captioned, checkpoint="Dreamshaper_8_pruned.safetensors", rank=8, lora_name="sks_style_lora",
                   train=dict(steps=800, save_every=200, checkpoint_folder="sks_style"))
    return flow


def train_then_sample():
    flow = Workflow()
    data = flow.add(P + "FolderDataset", (0, 160), {"folder": "one-line-art", "layout": "auto", "repeats": 1, "images_without_captions": "refuse"})
    _, trainer, _ = training_chain(flow, data, checkpoint="Dreamshaper_8_pruned.safetensors", rank=4, lora_name="one_line_art_lora",
                                   train=dict(steps=64, save_every=16, checkpoint_folder="one_line_art"))
    sample_with_and_without(flow, trainer, "Dreamshaper_8_pruned.safetensors", "a one line art drawing of a cat", 512)
    return flow


def sdxl_train_then_sample():
    """SDXL from a folder at its own size (resolution 0 = 1024, buckets auto = on), settings that fit an 8 GB card."""
    flow = Workflow()
    data = flow.add(P + "FolderDataset", (0, 160), {"folder": "my_sdxl_images", "layout": "auto", "repeats": 1, "images_without_captions": "refuse"})
    _, trainer, _ = training_chain(flow, data, checkpoint="sd_xl_base_1.0.safetensors", rank=16, lora_name="my_sdxl_lora",
                                   train=dict(steps=1500, resolution=0, save_every=250, checkpoint_folder="my_sdxl_lora", gradient_checkpointing=True))
    sample_with_and_without(flow, trainer, "sd_xl_base_1.0.safetensors", "a photo of sks dog on a beach", 1024)
    return flow


def sample_with_and_without(flow, trainer, checkpoint, prompt, size):
    """The same prompt and seed sampled with the trained LoRA (through ApplyLoRA) and without it."""
    loader = flow.add("CheckpointLoaderSimple", (0, 700), {"ckpt_name": checkpoint})
    apply = flow.add(P + "ApplyLoRA", (380, 700), {"strength_model": 1.0, "strength_clip": 1.0}, size=(320, 150),
                     model=(loader, 0), lora=(trainer, 0), clip=(loader, 1))
    positive = flow.add("CLIPTextEncode", (760, 700), {"text": prompt}, size=(360, 120), clip=(apply, 1))
    negative = flow.add("CLIPTextEncode", (760, 860), {"text": "blurry, low quality"}, size=(360, 120), clip=(apply, 1))
    latent = flow.add("EmptyLatentImage", (760, 1020), {"width": size, "height": size, "batch_size": 1})
    with_lora = flow.add("KSampler", (1160, 700), SAMPLER, size=(320, 260), title="KSampler (with LoRA)",
                         model=(apply, 0), positive=(positive, 0), negative=(negative, 0), latent_image=(latent, 0))
    decoded = flow.add("VAEDecode", (1520, 700), {}, size=(200, 50), samples=(with_lora, 0), vae=(loader, 2))
    flow.add("SaveImage", (1760, 700), {"filename_prefix": "with_lora"}, size=(320, 320), images=(decoded, 0))
    # The same prompt through the model without the LoRA, for comparison.
    plain_positive = flow.add("CLIPTextEncode", (760, 1180), {"text": prompt}, size=(360, 120), clip=(loader, 1))
    plain_negative = flow.add("CLIPTextEncode", (760, 1340), {"text": "blurry, low quality"}, size=(360, 120), clip=(loader, 1))
    without = flow.add("KSampler", (1160, 1180), SAMPLER, size=(320, 260), title="KSampler (without LoRA)",
                       model=(loader, 0), positive=(plain_positive, 0), negative=(plain_negative, 0), latent_image=(latent, 0))
    plain_decoded = flow.add("VAEDecode", (1520, 1180), {}, size=(200, 50), samples=(without, 0), vae=(loader, 2))
    flow.add("SaveImage", (1760, 1180), {"filename_prefix": "without_lora"}, size=(320, 320), images=(plain_decoded, 0))


# Ten prompts for the lab exercise's one-line-art LoRA (the handout asks for ten images and their prompts;
# its own example prompt is the first).
LAB_PROMPTS = [
    "one-line-art, face, side view",
    "one-line-art, face, closed eyes",
    "one-line-art, a woman holding a flower",
    "one-line-art, a cat sleeping",
    "one-line-art, two hands touching",
    "one-line-art, a bird in flight",
    "one-line-art, a man with a hat, portrait",
    "one-line-art, a dancer",
    "one-line-art, a coffee cup",
    "one-line-art, a horse running",
]


def train_save_compare_grid():
    """Train and save a LoRA, then sample the lab's ten prompts at strengths 0, 0.5 and 1 into one labelled grid."""
    flow = Workflow()
    data = flow.add(P + "FolderDataset", (0, 160), {"folder": "one-line-art", "layout": "image-text", "repeats": 1, "images_without_captions": "refuse"})
    _, trainer, _ = training_chain(flow, data, checkpoint="Dreamshaper_8_pruned.safetensors", rank=4, lora_name="one_line_art_lora",
                                   train=dict(steps=64, save_every=16, checkpoint_folder="one_line_art"))
    loader = flow.add("CheckpointLoaderSimple", (0, 700), {"ckpt_name": "Dreamshaper_8_pruned.safetensors"})
    grid = flow.add(P + "CompareGrid", (380, 700), {
        "prompts": "\n".join(LAB_PROMPTS), "negative": "blurry, low quality", "strengths": "0, 0.5, 1.0", "seed": 42, "steps": 25,
        "cfg": 7.0, "sampler_name": "euler_ancestral", "scheduler": "normal", "width": 512, "height": 512, "lora_files": "",
    }, size=(400, 520), model=(loader, 0), clip=(loader, 1), vae=(loader, 2), lora=(trainer, 0))
    flow.add("SaveImage", (820, 700), {"filename_prefix": "one_line_art_grid"}, size=(640, 640), images=(grid, 0))
    flow.add("PreviewImage", (1500, 700), {}, size=(320, 320), images=(grid, 1))
    return flow


WORKFLOWS = {
    "pokemon_hf_dataset": pokemon,
    "one_line_art_folder": one_line_art,
    "caption_then_train": caption_then_train,
    "train_then_sample": train_then_sample,
    "sdxl_train_then_sample": sdxl_train_then_sample,
    "train_save_compare_grid": train_save_compare_grid,
}


def main():
    out = ROOT / "example_workflows"
    out.mkdir(exist_ok=True)
    for name, build in WORKFLOWS.items():
        (out / f"{name}.json").write_text(json.dumps(build().to_json(), indent=1) + "\n")
        print("wrote", out / f"{name}.json")


if __name__ == "__main__":
    main()
