"""The comparison grid and the dataset preview against the stand-in ComfyUI (its MODEL is a diffusers UNet).

The stand-in samples deterministically from the UNet's weights, the prompt and the seed, so a LoRA at
strength 1 changes the image and strength 0 does not; its LoRA patcher maps kohya keys as ComfyUI does.
"""
from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from core import tiny
from node_support import Interrupted, StandinComfy, load_suite

suite = load_suite()
from lora_trainer_suite.core.batching import BatchPlan  # noqa: E402
from lora_trainer_suite.core.dataset import ImageCaptionDataset, load_folder_dataset  # noqa: E402
from lora_trainer_suite.core.errors import DatasetError, OutputPathError, SettingsError  # noqa: E402
from lora_trainer_suite.core.grids import GridLayout, SheetLayout  # noqa: E402
from lora_trainer_suite.core.lora import LoRAWeights, save_lora_file  # noqa: E402
from lora_trainer_suite.core.train_settings import TrainSettings  # noqa: E402
from lora_trainer_suite.nodes import comfy_bridge, compare  # noqa: E402
from lora_trainer_suite.nodes import nodes as N  # noqa: E402
from lora_trainer_suite.nodes.types import TrainedLoRA, TrainingOptionValues  # noqa: E402

PROMPTS = "sks a red circle\n\n  a blue square on a black background  \n"
GRID = dict(negative="", strengths="0, 1", seed=3, steps=1, cfg=5.0, sampler_name="euler", scheduler="normal", width=64, height=64)
CELL = 64


@pytest.fixture(scope="module")
def trained(tiny_assets, tmp_path_factory):
    """A LoRA from Train LoRA on the tiny model (trained once for the module, with a stand-in of its own)."""
    root = tmp_path_factory.mktemp("compare_training")
    standin = StandinComfy(root / "comfy", tiny_assets["tokenizer"])
    shutil.copy(tiny_assets["ldm"], standin.models / "checkpoints" / "tiny_sd15.safetensors")
    previous = comfy_bridge.use(standin)
    try:
        with torch.inference_mode():  # as ComfyUI runs every node
            (base,) = node("LoadBaseCheckpoint").load("tiny_sd15.safetensors", "auto")
            (data,) = node("FolderDataset").load(str(tiny.write_synthetic_dataset(root / "data", count=4, size=64)), "auto", 1)
            (config,) = node("LoRAConfig").configure(4, 0.0, 0.0, "kohya", False)
            lora, _ = node("TrainLoRA").train(base, data, config, steps=6, learning_rate=5e-3, batch_size=2, resolution=64, training_seed=3,
                                             save_every=0, checkpoint_folder="compare_run", lr_scheduler="constant", warmup_steps=0,
                                             precision="fp32", gradient_checkpointing=False, random_flip=False)
    finally:
        comfy_bridge.use(previous)
    return lora


@pytest.fixture
def comfy(tmp_path, tiny_assets):
    standin = StandinComfy(tmp_path / "comfy", tiny_assets["tokenizer"])
    previous = comfy_bridge.use(standin)
    yield standin
    comfy_bridge.use(previous)


@pytest.fixture
def model(tiny_assets):
    return tiny_assets["model"].unet


def node(name):
    return N.NODE_CLASS_MAPPINGS[N.PREFIX + name]()


def grid(model, prompts=PROMPTS, **overrides):
    with torch.inference_mode():  # as ComfyUI runs every node
        return node("CompareGrid").compare(model, "clip", "vae", prompts, **{**GRID, **overrides})


def plain_image(comfy, model, prompt, seed=3, cfg=5.0):
    """What the stock path gives without any LoRA: encode, sample, decode."""
    with torch.inference_mode():
        latent = comfy.sample(model, comfy.encode_prompt("clip", prompt), comfy.encode_prompt("clip", ""), seed=seed, steps=1, cfg=cfg,
                              sampler_name="euler", scheduler="normal", width=CELL, height=CELL)
        return comfy.decode("vae", latent)[0]


def cell_of(grid_image, layout, row, column):
    x, y = layout.cell_origin(row, column)
    return grid_image[0, y:y + CELL, x:x + CELL]


def as_bytes(image):
    """An IMAGE as the 8-bit values SaveImage writes."""
    return (image * 255).clamp(0, 255).to(torch.uint8)


def save_other_lora(comfy, lora, name="other/second.safetensors"):
    """A second LoRA in models/loras: the trained one with its up weights negated (so it pushes the other way)."""
    tensors = {key: (-value if key.endswith("lora_up.weight") else value) for key, value in lora.items()}
    path = comfy.models / "loras" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    save_lora_file(LoRAWeights(tensors={k: v.clone() for k, v in tensors.items()}, metadata=dict(lora.metadata)), path)
    return path


def one_sentence(error):
    message = str(error.value)
    assert message.endswith(".") and "\n" not in message, message
    return message


# --------------------------------------------------------------------------- comparison grid


def test_grid_has_a_row_per_prompt_a_column_per_strength_and_label_margins(comfy, model, trained):
    grid_image, images = grid(model, lora=trained)
    layout = GridLayout.for_cells(2, 2, CELL, CELL)
    assert grid_image.shape == (1, layout.size[1], layout.size[0], 3) and grid_image.dtype == torch.float32
    assert layout.size == (layout.label_width + 2 * (CELL + 4), layout.header_height + 2 * (CELL + 4))
    assert layout.label_width >= 160 and layout.header_height >= 24, "room for the prompts and the column labels"
    assert images.shape == (4, CELL, CELL, 3), "the individual images: 2 prompts x 2 strengths"
    for row in range(2):
        for column in range(2):
            assert torch.equal(as_bytes(cell_of(grid_image, layout, row, column)), as_bytes(images[row * 2 + column])), "row by row"
    assert [prompt for prompt, _ in comfy.drawn] == ["sks a red circle", "a blue square on a black background"] * 2


def test_strength_zero_is_the_model_without_lora_and_strength_one_differs(comfy, model, trained):
    _, images = grid(model, strengths="0, 0.5, 1", lora=trained)
    for row, prompt in enumerate(["sks a red circle", "a blue square on a black background"]):
        plain, half, full = images[row * 3: row * 3 + 3]
        assert torch.equal(plain, plain_image(comfy, model, prompt)), "strength 0 is the plain model"
        assert (full - plain).abs().max() > 1e-3 and (half - plain).abs().max() > 1e-4 and (full - half).abs().max() > 1e-4
    patched, _ = node("ApplyLoRA").apply(model, trained, 1.0, 1.0)
    assert torch.equal(images[2], plain_image(comfy, patched, "sks a red circle")), "strength 1 is ComfyUI's loader at 1"


def test_two_loras_give_a_column_per_lora_and_strength(comfy, model, trained):
    save_other_lora(comfy, trained)
    grid_image, images = grid(model, lora=trained, lora_files="other/second\n")
    layout = GridLayout.for_cells(2, 4, CELL, CELL)
    assert grid_image.shape == (1, layout.size[1], layout.size[0], 3) and images.shape == (8, CELL, CELL, 3)
    first_row = images[:4]  # trained at 0, trained at 1, second at 0, second at 1
    assert torch.equal(first_row[0], first_row[2]), "strength 0 is the same plain model in both LoRAs' columns"
    assert (first_row[1] - first_row[0]).abs().max() > 1e-3 and (first_row[3] - first_row[0]).abs().max() > 1e-3
    assert (first_row[3] - first_row[1]).abs().max() > 1e-3, "the second LoRA is another LoRA"
    assert len(comfy.drawn) == 2 * 3, "the plain column is sampled once, not once per LoRA"
    header = [grid_image[0, :layout.header_height, x:x + CELL] for x, _ in (layout.cell_origin(0, c) for c in range(4))]
    assert not torch.equal(header[1], header[3]), "each column is labelled with its own LoRA's name"
    assert not torch.equal(header[0], header[1]), "and its own strength"


def test_labels_are_drawn_on_the_grid(comfy, model, trained):
    grid_image, _ = grid(model, lora=trained)
    layout = GridLayout.for_cells(2, 2, CELL, CELL)
    background = torch.ones(3)
    bands = []
    for row in range(2):
        _, top = layout.cell_origin(row, 0)
        band = grid_image[0, top:top + CELL, :layout.label_width]
        assert (band != background).any(), f"prompt {row} is written at the start of its row"
        bands.append(band)
    assert not torch.equal(*bands), "each row shows its own prompt"
    for column in range(2):
        left, _ = layout.cell_origin(0, column)
        assert (grid_image[0, :layout.header_height, left:left + CELL] != background).any(), "LoRA name and strength above the column"
    assert (grid_image[0, :layout.header_height, :layout.label_width] == background).all(), "the corner stays empty"


def test_the_same_seed_gives_the_same_grid_and_every_cell_uses_it(comfy, model, trained):
    first_grid, first_images = grid(model, lora=trained, seed=11)
    second_grid, second_images = grid(model, lora=trained, seed=11)
    assert torch.equal(first_grid, second_grid) and torch.equal(first_images, second_images)
    assert {seed for _, seed in comfy.drawn} == {11}
    _, other_images = grid(model, lora=trained, seed=12)
    assert (other_images - first_images).abs().max() > 1e-3


def test_progress_counts_cells_with_a_preview_and_cancel_stops_between_cells(comfy, model, trained):
    with torch.inference_mode():
        node("CompareGrid").compare(model, "clip", "vae", PROMPTS, lora=trained, unique_id="9", **GRID)
    bar = comfy.bars[-1]
    assert bar.total == 4 and bar.node_id == "9" and [update[0] for update in bar.updates] == [1, 2, 3, 4]
    kind, preview, size = bar.updates[0][2]
    assert kind == "JPEG" and preview.size == (CELL, CELL) and size > 0

    comfy.drawn.clear()
    comfy.interrupt_at_step = 1  # Cancel pressed while the first cell was sampled
    with pytest.raises(Interrupted):
        grid(model, lora=trained)
    assert len(comfy.drawn) == 1, "no cell after the cancel"
    comfy.interrupt_at_step = None
    comfy.drawn.clear()
    comfy.interrupt = True  # Cancel pressed before the node started
    with pytest.raises(Interrupted):
        grid(model, lora=trained)
    assert comfy.drawn == []


@pytest.mark.parametrize("overrides, error, words", [
    (dict(prompts="  \n\n "), SettingsError, "prompt list is empty"),
    (dict(strengths="0, strong"), SettingsError, "Strength 'strong' is not a number"),
    (dict(strengths="0, nan"), SettingsError, "Strength 'nan' is not a finite number"),
    (dict(strengths=" , "), SettingsError, "strength list is empty"),
    (dict(lora=None, lora_files="not_there"), SettingsError, "LoRA file 'not_there' was not found in models/loras"),
    (dict(lora=None, lora_files="../outside.safetensors"), OutputPathError, "contains '..'"),
    (dict(lora=None, lora_files="linked.safetensors"), OutputPathError, "would leave the folder"),
    (dict(lora=None, lora_files="/etc/passwd"), OutputPathError, "absolute path"),
    (dict(lora=None), SettingsError, "There is no LoRA to compare"),
    (dict(width=4096, height=4096, prompts="a\nb\nc"), SettingsError, "over the 64-megapixel limit; lower width and height"),
    (dict(width=100), SettingsError, "multiples of 8"),
    (dict(lora=TrainedLoRA({})), Exception, "connected LoRA is empty"),
])
def test_bad_input_is_one_sentence_before_anything_is_sampled(comfy, model, trained, overrides, error, words):
    (comfy.models / "outside.safetensors").write_bytes(b"not a LoRA")  # exists, but outside models/loras
    (comfy.models / "loras" / "linked.safetensors").symlink_to(comfy.models / "outside.safetensors")
    arguments = {"lora": trained, **overrides}
    with pytest.raises(error) as raised:
        grid(model, **arguments)
    assert words in one_sentence(raised)
    assert comfy.drawn == [] and comfy.bars == []


def test_a_lora_of_another_family_is_refused(comfy, model):
    sdxl_lora = TrainedLoRA({"lora_unet_x.lora_down.weight": torch.ones(1, 2)}, {"ss_base_model_version": "sdxl_base_v1-0", "ss_output_name": "xl"})
    model.lora_trainer_family = "sd1"  # the stand-in's MODEL says which family it plays
    try:
        with pytest.raises(SettingsError) as raised:
            grid(model, lora=sdxl_lora)
    finally:
        del model.lora_trainer_family
    assert "The LoRA 'xl' is an SDXL LoRA but the base model is SD1.x" in one_sentence(raised)
    assert comfy.drawn == []


def test_lora_files_resolve_inside_models_loras_and_a_new_file_samples_again(comfy, model, trained):
    path = save_other_lora(comfy, trained, "second.safetensors")
    _, images = grid(model, lora_files="second.safetensors", strengths="1")
    _, without_suffix = grid(model, lora_files="second", strengths="1")
    assert torch.equal(images, without_suffix)
    fingerprint = compare.CompareGrid.IS_CHANGED(lora_files="second")
    assert compare.CompareGrid.IS_CHANGED(lora_files="second") == fingerprint
    save_other_lora(comfy, TrainedLoRA({k: v * 2 for k, v in trained.items() if "alpha" not in k}, trained.metadata), "second.safetensors")
    assert path.is_file() and compare.CompareGrid.IS_CHANGED(lora_files="second") != fingerprint, "the file was saved again"


def test_sampler_and_scheduler_choices_come_from_comfyui(comfy):
    spec = compare.CompareGrid.INPUT_TYPES()
    assert spec["required"]["sampler_name"][0] == comfy.sampler_names()
    assert spec["required"]["scheduler"][0] == comfy.scheduler_names()
    without_comfyui = comfy_bridge.ComfyAPI()  # no ComfyUI importable here: the fallback lists
    assert "euler" in without_comfyui.sampler_names() and "normal" in without_comfyui.scheduler_names()
    assert spec["required"]["seed"][1]["control_after_generate"] is False, "a fixed seed compares fairly"


# --------------------------------------------------------------------------- dataset preview


@pytest.fixture
def shaped_dataset(tmp_path):
    """Noise images (every crop differs) of a wide, a tall and a square shape, each with a caption."""
    folder = tmp_path / "shaped"
    folder.mkdir()
    rng = np.random.default_rng(0)
    shapes = {"0": (300, 100), "1": (100, 300), "2": (120, 120)}
    captions = {"0": "a wide one", "1": "a tall one", "2": "a square one with a caption long enough to be wrapped over several lines and cut"}
    for stem, (width, height) in shapes.items():
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB").save(folder / f"{stem}.png")
        (folder / f"{stem}.txt").write_text(captions[stem])
    return load_folder_dataset(folder)


def preview(dataset, max_images=16, resolution=64, aspect_buckets=False):
    with torch.inference_mode():
        (sheet,) = node("DatasetPreview").preview(dataset, max_images, resolution, aspect_buckets)
    return sheet


def assert_tiles_are_what_the_trainer_encodes(sheet, dataset, settings, sizes):
    layout = SheetLayout.for_images(sizes, 4)
    assert sheet.shape == (1, layout.size[1], layout.size[0], 3)
    plan = BatchPlan(dataset, settings)
    for index, (width, height) in enumerate(sizes):
        x, y = layout.image_origin(index, (width, height))
        shown = sheet[0, y:y + height, x:x + width]  # [H, W, 3] in 0..1
        trained, _ = plan.prepared_pixels(index)  # [3, H, W] in [-1, 1]
        assert torch.allclose((shown * 255).round().permute(2, 0, 1) / 127.5 - 1, trained, atol=1e-5), f"tile {index}"
        text_x, text_y = layout.text_origin(index)
        assert (sheet[0, text_y:text_y + layout.text_height, text_x:text_x + layout.box_width] != 1).any(), "size and caption under it"
    return layout


def test_preview_shows_the_square_crops_the_trainer_encodes(shaped_dataset):
    sheet = preview(shaped_dataset)
    assert_tiles_are_what_the_trainer_encodes(sheet, shaped_dataset, TrainSettings(resolution=64, bucket=False), [(64, 64)] * 3)


def test_preview_shows_each_image_in_its_bucket(shaped_dataset):
    settings = TrainSettings(resolution=128, bucket=True)
    images, headings, captions = compare.dataset_tiles(shaped_dataset, settings, 16)
    assert [heading.split()[0] for heading in headings] == ["192x64", "64x192", "128x128"]
    assert [image.size for image in images] == [(192, 64), (64, 192), (128, 128)]
    assert captions[0] == "a wide one"
    sheet = preview(shaped_dataset, resolution=128, aspect_buckets=True)
    assert_tiles_are_what_the_trainer_encodes(sheet, shaped_dataset, settings, [(192, 64), (64, 192), (128, 128)])


def test_preview_follows_the_training_options_crop_and_bucket_settings(shaped_dataset):
    options = TrainingOptionValues({"crop": "random"})
    with torch.inference_mode():
        (sheet,) = node("DatasetPreview").preview(shaped_dataset, 16, 128, True, options=options)
    settings = TrainSettings(resolution=128, bucket=True, crop="random")
    images, headings, _ = compare.dataset_tiles(shaped_dataset, settings, 16)
    assert [heading.split("  ")[0] for heading in headings] == ["192x64 random crop", "64x192 random crop", "128x128 random crop"]
    assert_tiles_are_what_the_trainer_encodes(sheet, shaped_dataset, settings, [image.size for image in images])
    # A larger bucket area (1.5 x 128^2) holds 256x64, nearer the wide image's 3:1 than 1.5:1 is.
    _, headings, _ = compare.dataset_tiles(shaped_dataset, replace(settings, max_area=128 * 192), 16)
    assert headings[0].startswith("256x64 random crop")
    with pytest.raises(SettingsError, match="Training Options node"):
        node("DatasetPreview").preview(shaped_dataset, 16, 128, True, options={"crop": "random"})


def test_preview_draws_the_caption_and_only_max_images(shaped_dataset):
    layout = SheetLayout.for_images([(64, 64)] * 2, 4)
    sheet = preview(shaped_dataset, max_images=2)
    assert sheet.shape == (1, layout.size[1], layout.size[0], 3)
    recaptioned = shaped_dataset.with_captions(["a quite different caption", "a tall one", "x"])
    other = preview(recaptioned, max_images=2)
    x, y = layout.text_origin(0)
    band = (slice(y, y + layout.text_height), slice(x, x + layout.box_width))
    assert not torch.equal(sheet[0][band], other[0][band]), "the caption changed, so did the text under the image"
    x, y = layout.image_origin(0, (64, 64))
    assert torch.equal(sheet[0, y:y + 64, x:x + 64], other[0, y:y + 64, x:x + 64])
    x, y = layout.text_origin(1)
    assert torch.equal(sheet[0, y:y + layout.text_height, x:x + layout.box_width], other[0, y:y + layout.text_height, x:x + layout.box_width])


def test_preview_bad_input_is_one_sentence(shaped_dataset):
    with pytest.raises(SettingsError) as raised:
        preview(shaped_dataset, max_images=0)
    assert "Max images must be at least 1" in one_sentence(raised)
    empty = ImageCaptionDataset(entries=[], source="nowhere", layout="sidecar", content_hash="0")
    with pytest.raises(DatasetError) as raised:
        preview(empty)
    assert "The dataset has no images" in one_sentence(raised)
    with pytest.raises(SettingsError) as raised:
        preview(shaped_dataset, resolution=100)
    assert "multiple of 64" in one_sentence(raised)
