"""core.grids without ComfyUI: text wrapping, IMAGE <-> PIL, the labelled grid, the size cap, the captioned sheet."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from core import grids
from core.errors import SettingsError
from core.preprocess import pil_to_tensor

FONT = grids.label_font(14)


def noise_image(width, height, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def region(image, x, y, width, height):
    return np.asarray(image)[y:y + height, x:x + width]


def is_background(pixels):
    return bool((pixels == 255).all())


# --------------------------------------------------------------------------- text


def test_wrap_text_keeps_lines_inside_the_width_and_the_words_whole():
    text = "a one line art drawing of a woman's face in side view, minimal, black ink"
    lines = grids.wrap_text(text, FONT, 120, 10)
    assert len(lines) > 2 and all(FONT.getlength(line) <= 120 for line in lines)
    assert " ".join(lines) == text, "nothing lost or reordered when it fits in the lines allowed"


def test_wrap_text_cuts_with_an_ellipsis_past_the_last_line():
    lines = grids.wrap_text("word " * 60, FONT, 100, 3)
    assert len(lines) == 3 and lines[-1].endswith("...") and FONT.getlength(lines[-1]) <= 100
    assert grids.wrap_text("short", FONT, 100, 3) == ["short"]
    assert grids.wrap_text("", FONT, 100, 3) == [] and grids.wrap_text("text", FONT, 100, 0) == []


def test_a_word_wider_than_the_line_is_broken():
    word = "supercalifragilisticexpialidocious" * 2
    lines = grids.wrap_text(word, FONT, 60, 20)
    assert len(lines) > 1 and "".join(lines) == word and all(FONT.getlength(line) <= 60 for line in lines)


def test_truncate_line():
    assert grids.truncate_line("fits", FONT, 200) == "fits"
    cut = grids.truncate_line("a name far too long for a narrow column", FONT, 80)
    assert cut.endswith("...") and FONT.getlength(cut) <= 80 and "a name".startswith(cut[:6].rstrip("."))


# --------------------------------------------------------------------------- IMAGE <-> PIL


def test_image_batch_round_trips_exactly_through_pil():
    pictures = [noise_image(12, 8, seed) for seed in range(3)]
    batch = grids.pil_to_image_batch(pictures)
    assert batch.shape == (3, 8, 12, 3) and batch.dtype == torch.float32 and 0 <= batch.min() and batch.max() <= 1
    back = grids.image_batch_to_pil(batch)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(pictures, back))
    with pytest.raises(ValueError):
        grids.pil_to_image_batch([noise_image(8, 8, 0), noise_image(9, 8, 0)])


def test_to_pil_truncates_and_clips_as_comfyui_save_image_does():
    values = torch.tensor([[[[-0.5, 0.999, 1.7], [0.5, 0.0, 1.0]]]])
    (picture,) = grids.image_batch_to_pil(values)
    assert np.asarray(picture).tolist() == [[[0, 254, 255], [127, 0, 255]]]
    (gray,) = grids.image_batch_to_pil(torch.full((1, 2, 2, 1), 0.5))
    assert gray.mode == "RGB" and np.asarray(gray)[0, 0].tolist() == [127, 127, 127]


def test_training_pixels_back_to_the_image_they_came_from():
    picture = noise_image(16, 10, 4)
    assert np.array_equal(np.asarray(grids.training_pixels_to_pil(pil_to_tensor(picture))), np.asarray(picture))


# --------------------------------------------------------------------------- labelled grid


def test_labelled_grid_places_every_cell_and_draws_the_labels():
    cells = [[noise_image(64, 48, 10 * row + column) for column in range(3)] for row in range(2)]
    grid, layout = grids.labelled_grid(cells, ["first prompt", "a second, much longer prompt that must wrap"], [["lora", f"strength {s}"] for s in (0, 0.5, 1)])
    assert grid.size == layout.size == (layout.label_width + 3 * (64 + grids.GAP), layout.header_height + 2 * (48 + grids.GAP))
    assert layout.label_width >= grids.MIN_LABEL_WIDTH and layout.header_height > 2 * 12
    for row in range(2):
        for column in range(3):
            x, y = layout.cell_origin(row, column)
            assert np.array_equal(region(grid, x, y, 64, 48), np.asarray(cells[row][column]))
            assert not is_background(region(grid, x, 0, 64, layout.header_height)), "the column label is drawn above it"
        assert not is_background(region(grid, 0, layout.cell_origin(row, 0)[1], layout.label_width, 48)), "the prompt is drawn at the row start"
    first, second = (region(grid, 0, layout.cell_origin(row, 0)[1], layout.label_width, 48) for row in (0, 1))
    assert not np.array_equal(first, second)
    assert is_background(region(grid, 0, 0, layout.label_width, layout.header_height)), "the corner stays empty"


def test_labelled_grid_refuses_cells_of_different_sizes():
    with pytest.raises(ValueError):
        grids.labelled_grid([[noise_image(8, 8, 0), noise_image(9, 8, 0)]], ["p"], [["a"], ["b"]])
    with pytest.raises(ValueError):
        grids.labelled_grid([[noise_image(8, 8, 0)]], ["p", "q"], [["a"]])


def test_grid_layout_depends_on_sizes_only_and_scales_its_text():
    small, large = grids.GridLayout.for_cells(2, 3, 64, 64), grids.GridLayout.for_cells(2, 3, 1024, 1024)
    assert small == grids.GridLayout.for_cells(2, 3, 64, 64)
    assert (small.font_size, large.font_size) == (grids.MIN_FONT_SIZE, grids.MAX_FONT_SIZE)
    assert large.label_width > small.label_width and large.header_height > small.header_height


def test_grid_size_cap_names_what_to_lower():
    grids.check_grid_size(10, 3, 512, 512)  # the lab's 10 prompts at three strengths
    grids.check_grid_size(10, 6, 1024, 1024)  # two SDXL LoRAs at three strengths
    with pytest.raises(SettingsError) as error:
        grids.check_grid_size(10, 8, 1024, 1024)
    message = str(error.value)
    assert "10 prompts x 8 columns of 1024x1024 px (84 megapixels)" in message and "lower width and height" in message
    assert message.endswith(".") and "\n" not in message


# --------------------------------------------------------------------------- captioned sheet


def test_captioned_sheet_centres_images_of_different_sizes_and_writes_under_them():
    pictures = [noise_image(96, 32, 1), noise_image(32, 96, 2), noise_image(64, 64, 3)]
    sheet, layout = grids.captioned_sheet(pictures, ["96x32  a.png", "32x96  b.png", "64x64  c.png"], ["a wide one", "a tall one", "word " * 80])
    assert sheet.size == layout.size and layout.columns == 2 and layout.rows == 2 and layout.scale == 1.0
    assert (layout.box_width, layout.box_height) == (grids.MIN_TILE_WIDTH, 96)
    for index, picture in enumerate(pictures):
        x, y = layout.image_origin(index, picture.size)
        assert np.array_equal(region(sheet, x, y, *picture.size), np.asarray(picture))
        text_x, text_y = layout.text_origin(index)
        assert not is_background(region(sheet, text_x, text_y, layout.box_width, layout.text_height))
    text_x, text_y = layout.text_origin(3)
    assert is_background(region(sheet, text_x, text_y, layout.box_width, layout.text_height)), "no fourth tile"


def test_captioned_sheet_shrinks_evenly_past_its_pixel_limit():
    pictures = [noise_image(256, 256, seed) for seed in range(4)]
    sheet, layout = grids.captioned_sheet(pictures, ["h"] * 4, ["c"] * 4, max_pixels=200_000)
    assert layout.scale < 1 and sheet.size[0] * sheet.size[1] <= 200_000
    full, _ = grids.captioned_sheet(pictures, ["h"] * 4, ["c"] * 4)
    assert full.size[0] > sheet.size[0]
