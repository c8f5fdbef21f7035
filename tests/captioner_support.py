"""Tiny captioning models built in the tests (no download): a WD14-style ONNX tagger and a Florence-2.

The tagger is a real ONNX graph with the v3 taggers' interface — input [batch, S, S, 3] float32 BGR
0..255, output [batch, tags] sigmoid probabilities — computing ``sigmoid(mean(BGR) / 255 @ W + b)``,
so a solid-colour image fires exactly the tags its weights say. ``reference_scores`` is the same
formula in numpy, for expected values.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

# (name, category, bias, weight on mean B, mean G, mean R); category 9 rating, 0 general, 4 character.
TAGS = [
    ("general", 9, 0.0, 0.0, 2.0, 0.0),
    ("sensitive", 9, 0.0, 0.0, 0.0, 2.0),
    ("questionable", 9, 0.0, 0.0, 0.0, 0.0),
    ("explicit", 9, -5.0, 0.0, 0.0, 0.0),
    ("red_theme", 0, -3.0, 0.0, 0.0, 6.0),
    ("blue_theme", 0, -3.0, 6.0, 0.0, 0.0),
    ("1girl", 0, 0.0, 0.0, 0.0, 0.0),          # 0.5 for every image
    ("solo", 0, -0.3, 0.0, 0.0, 0.0),          # 0.43: above the default 0.35, below 0.5
    ("^_^", 0, 1.0, 0.0, 0.0, 0.0),            # 0.73, a kaomoji: its underscore stays
    ("star_(symbol)", 0, -3.0, 0.0, 6.0, 0.0),  # green images; parentheses to escape
    ("long_hair", 0, -1.0, 0.0, 0.0, 0.0),     # 0.27: only below the default threshold
    (":d", 0, 0.2, 0.0, 0.0, 0.0),             # 0.55, short
    ("hatsune_miku", 4, -1.0, 0.0, 6.0, 0.0),  # green: 0.99
    ("kagamine_rin_(vocaloid)", 4, -2.0, 0.0, 0.0, 6.0),  # red: 0.98
    ("megurine_luka", 4, 1.5, 0.0, 0.0, 0.0),  # 0.82: a character just under the 0.85 threshold
]


def tag_weights() -> tuple[np.ndarray, np.ndarray]:
    weights = np.array([[t[3], t[4], t[5]] for t in TAGS], dtype=np.float32).T  # [3 (B, G, R), tags]
    return weights, np.array([t[2] for t in TAGS], dtype=np.float32)


def reference_scores(bgr_batch: np.ndarray) -> np.ndarray:
    """What the ONNX graph computes, for [N, S, S, 3] BGR 0..255 input."""
    weights, bias = tag_weights()
    means = bgr_batch.mean(axis=(1, 2)) / 255.0
    return 1.0 / (1.0 + np.exp(-(means @ weights + bias)))


def build_tiny_tagger(folder: Path, size: int = 32, fixed_batch: int | None = None, layout: str = "folder") -> Path:
    """model.onnx + selected_tags.csv in ``folder`` (layout "folder"), or ``folder.onnx`` + ``folder.csv`` ("flat")."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights, bias = tag_weights()
    batch = fixed_batch if fixed_batch else "batch"
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["input"], ["means"], axes=[1, 2], keepdims=0),
            helper.make_node("Mul", ["means", "scale"], ["unit"]),
            helper.make_node("MatMul", ["unit", "weights"], ["logits_raw"]),
            helper.make_node("Add", ["logits_raw", "bias"], ["logits"]),
            helper.make_node("Sigmoid", ["logits"], ["output"]),
        ],
        "tiny_tagger",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, size, size, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, len(TAGS)])],
        initializer=[
            numpy_helper.from_array(np.array([1 / 255.0], dtype=np.float32), "scale"),
            numpy_helper.from_array(weights, "weights"),
            numpy_helper.from_array(bias, "bias"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="lora-trainer-tests")
    model.ir_version = 8  # readable by every onnxruntime of the last years
    onnx.checker.check_model(model)
    if layout == "flat":
        folder.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(folder.with_suffix(".onnx")))
        write_tags_csv(folder.with_suffix(".csv"))
        return folder.with_suffix(".onnx")
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    write_tags_csv(folder / "selected_tags.csv")
    return folder


def write_tags_csv(path: Path, tags=TAGS) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tag_id", "name", "category", "count"])
        for index, (name, category, *_rest) in enumerate(tags):
            writer.writerow([1000 + index, name, category, 500 - index])
    return path


# --------------------------------------------------------------------------- Florence-2


def build_tiny_florence2(folder: Path, seed: int = 0) -> Path:
    """A random-weight Florence2ForConditionalGeneration (DaViT + BART shrunk) with a byte-level BART tokenizer
    and a CLIP image processor at 32 px, saved as a local folder that AutoProcessor / from_pretrained read."""
    import torch
    from transformers import BartTokenizer, CLIPImageProcessor, Florence2Config, Florence2ForConditionalGeneration, Florence2Processor

    from core.tiny import _bytes_to_unicode

    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    vocab = {token: index for index, token in enumerate(specials + list(_bytes_to_unicode().values()) + ["<mask>"])}
    tokenizer = BartTokenizer(vocab=vocab, merges=[], extra_special_tokens={"image_token": "<image>"})
    # 32 px with a stride-4 patch embedding: 8x8 image features plus one pooled = 65 image tokens.
    image_processor = CLIPImageProcessor(size={"height": 32, "width": 32}, crop_size={"height": 32, "width": 32}, do_center_crop=False, image_seq_length=65)
    processor = Florence2Processor(image_processor=image_processor, tokenizer=tokenizer)
    text = dict(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
                encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=160, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.eos_token_id)
    vision = dict(depths=[1], patch_size=[7], patch_stride=[4], patch_padding=[3], patch_prenorm=[False], embed_dim=[32], num_heads=[2],
                  num_groups=[2], window_size=4, projection_dim=32, max_position_embeddings=16, max_temporal_embeddings=4)
    torch.manual_seed(seed)
    model = Florence2ForConditionalGeneration(Florence2Config(text_config=text, vision_config=vision, image_token_id=tokenizer.image_token_id))
    with torch.no_grad():  # larger random weights: the picture then changes the words, so batching can be compared
        for parameter in model.parameters():
            if parameter.ndim > 1:
                parameter.normal_(0.0, 0.3)
    # A random decoder would often end at once: ask for a few tokens and never the special ones.
    model.generation_config.min_new_tokens = 4
    model.generation_config.suppress_tokens = [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id, tokenizer.image_token_id]
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def write_config(folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255), "black": (0, 0, 0)}


def write_color_images(root: Path, names=("red", "green", "blue", "white"), size: int = 32, captions: dict | None = None) -> Path:
    """Solid-colour square PNGs (sidecar layout), with ``captions[name]`` written as ``name.txt`` where given."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (size, size), COLORS[name]).save(root / f"{name}.png")
        if captions and name in captions:
            (root / f"{name}.txt").write_text(captions[name])
    return root
