"""Image grids with text labels, contact sheets with captions, and ComfyUI's IMAGE layout, with PIL only.

ComfyUI's IMAGE is a float tensor [batch, height, width, channels] in 0..1; PIL images are 8-bit.
Going to 8 bits truncates (255·x, clipped), exactly as ComfyUI's SaveImage and PreviewImage do, so a
cell of a grid has the pixels its image would have when saved on its own.

The text is drawn with Pillow's built-in font (no font files to find, the same on every machine); it
covers ASCII, so the labels here use "x" and "..." rather than "×" and "…". Nothing here imports
ComfyUI; torch, numpy and PIL are imported where they are used.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

from .errors import SettingsError

BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (20, 20, 20)
GAP = 4  # px between cells, and after the last one, so neighbouring images never touch
ELLIPSIS = "..."
MIN_FONT_SIZE, MAX_FONT_SIZE = 12, 40
MIN_LABEL_WIDTH = 160  # the prompt column stays readable next to small cells
# rows x columns x width x height of a comparison grid. As float IMAGE tensors the grid and the batch of
# its cells take 12 bytes a pixel each: 64 megapixels is about 1.5 GB of RAM, e.g. 10 prompts x 6
# columns at 1024 px (SDXL) or 10 prompts x 24 columns at 512 px.
MAX_GRID_PIXELS = 64_000_000
MAX_SHEET_PIXELS = 16_000_000  # a dataset preview larger than this is scaled down evenly
MIN_TILE_WIDTH = 192  # a preview tile is at least this wide, so a caption under a small image is readable
CAPTION_LINES = 3


# --------------------------------------------------------------------------- text


@functools.lru_cache(maxsize=16)
def label_font(size: int):
    """Pillow's built-in font at ``size`` px; its fixed bitmap font when Pillow has no FreeType (size ignored)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow before 10.1, or built without FreeType
        return ImageFont.load_default()


def font_size_for(side: int) -> int:
    """Text size that suits an image side: 1/24 of it, within 12..40 px."""
    return max(MIN_FONT_SIZE, min(MAX_FONT_SIZE, side // 24))


def line_height(font) -> int:
    """Distance between baselines of consecutive lines: the tallest glyphs' extent plus a little air."""
    bottom = font.getbbox("Ag|")[3]
    return bottom + max(2, bottom // 5)


def text_width(text: str, font) -> float:
    return font.getlength(text)


def truncate_line(text: str, font, max_width: float) -> str:
    """``text`` if it fits in ``max_width`` px, else its longest prefix that fits with "..." after it."""
    return text if text_width(text, font) <= max_width else cut_with_ellipsis(text, font, max_width)


def cut_with_ellipsis(text: str, font, max_width: float) -> str:
    """The longest prefix of ``text`` that fits in ``max_width`` px with "..." after it (always ends with "...")."""
    kept = text
    while kept and text_width(kept.rstrip() + ELLIPSIS, font) > max_width:
        kept = kept[:-1]
    return kept.rstrip() + ELLIPSIS


def _split_long_word(word: str, font, max_width: float) -> list[str]:
    """A word wider than the line, cut into pieces that fit (at least one character each)."""
    pieces = []
    while word and text_width(word, font) > max_width:
        cut = 1
        while cut < len(word) and text_width(word[: cut + 1], font) <= max_width:
            cut += 1
        pieces.append(word[:cut])
        word = word[cut:]
    return pieces + ([word] if word else [])


def wrap_text(text: str, font, max_width: float, max_lines: int) -> list[str]:
    """Lines of ``text`` at most ``max_width`` px wide, broken between words (inside a word only when it
    alone is too wide); when more than ``max_lines`` are needed, the last kept line ends with "..."."""
    if max_lines < 1:
        return []
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}" if current else word
        if text_width(candidate, font) <= max_width:
            current = candidate
            continue
        if current:
            lines.append(current)
        *full, current = _split_long_word(word, font, max_width)
        lines.extend(full)
    if current:
        lines.append(current)
    if len(lines) <= max_lines:
        return lines
    kept = lines[:max_lines]
    kept[-1] = cut_with_ellipsis(kept[-1] + " " + lines[max_lines], font, max_width)
    return kept


def _draw_lines(draw, lines: Sequence[str], font, left: int, top: int, width: int | None = None) -> None:
    """Draw lines from (left, top) down; centred in ``width`` px when a width is given."""
    step = line_height(font)
    for number, line in enumerate(lines):
        x = left if width is None else left + max(0, (width - text_width(line, font)) / 2)
        draw.text((x, top + number * step), line, fill=TEXT_COLOUR, font=font)


# --------------------------------------------------------------------------- ComfyUI IMAGE <-> PIL


def image_batch_to_pil(images) -> list:
    """A ComfyUI IMAGE [B, H, W, C] (0..1) as B RGB PIL images, truncated to 8 bits as SaveImage does."""
    import numpy as np
    from PIL import Image

    array = images.detach().float().cpu().numpy()
    result = []
    for item in array:
        pixels = np.clip(255.0 * item, 0, 255).astype(np.uint8)
        if pixels.shape[-1] == 1:
            pixels = np.repeat(pixels, 3, axis=-1)
        result.append(Image.fromarray(np.ascontiguousarray(pixels[..., :3]), "RGB"))
    return result


def pil_to_image_batch(images: Sequence) -> "torch.Tensor":  # noqa: F821
    """PIL images of one size as a ComfyUI IMAGE [B, H, W, 3], float32 in 0..1 (k/255 for 8-bit value k)."""
    import numpy as np
    import torch

    sizes = {image.size for image in images}
    if len(sizes) != 1:
        raise ValueError(f"an IMAGE batch holds images of one size, got {sorted(sizes)}")
    array = np.stack([np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images])
    return torch.from_numpy(array).float().div(255.0)


def training_pixels_to_pil(pixels):
    """A training tensor [3, H, W] in [-1, 1] (core.preprocess.pil_to_tensor) back as the 8-bit image it was."""
    import numpy as np
    import torch
    from PIL import Image

    array = ((pixels.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return Image.fromarray(np.ascontiguousarray(array.permute(1, 2, 0).numpy()), "RGB")


# --------------------------------------------------------------------------- labelled grid


def check_grid_size(rows: int, columns: int, width: int, height: int, limit: int = MAX_GRID_PIXELS) -> None:
    """Refuse, in one sentence naming what to lower, a grid whose cells would not fit in memory."""
    pixels = rows * columns * width * height
    if pixels > limit:
        raise SettingsError(
            f"The grid would be {rows} prompts x {columns} columns of {width}x{height} px ({pixels / 1e6:.0f} megapixels), "
            f"over the {limit / 1e6:.0f}-megapixel limit; lower width and height, or use fewer prompts, strengths or LoRAs."
        )


@dataclass(frozen=True)
class GridLayout:
    """Where everything sits in a labelled grid: prompts down the left, column labels along the top."""

    rows: int
    columns: int
    cell_width: int
    cell_height: int
    label_width: int
    header_height: int
    font_size: int
    gap: int = GAP

    @classmethod
    def for_cells(cls, rows: int, columns: int, cell_width: int, cell_height: int, header_lines: int = 2) -> "GridLayout":
        font_size = font_size_for(min(cell_width, cell_height))
        label_width = max(MIN_LABEL_WIDTH, min(2 * cell_width, 16 * font_size))
        header_height = header_lines * line_height(label_font(font_size)) + 2 * GAP
        return cls(rows, columns, cell_width, cell_height, label_width, header_height, font_size)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the whole grid image."""
        return (self.label_width + self.columns * (self.cell_width + self.gap),
                self.header_height + self.rows * (self.cell_height + self.gap))

    def cell_origin(self, row: int, column: int) -> tuple[int, int]:
        """Top-left corner (x, y) of a cell."""
        return (self.label_width + column * (self.cell_width + self.gap), self.header_height + row * (self.cell_height + self.gap))


def labelled_grid(cells: Sequence[Sequence], row_labels: Sequence[str], column_labels: Sequence[Sequence[str]]):
    """(grid image, layout) for ``cells[row][column]`` PIL images of one size: each row's label wrapped at
    its start (cut with "..." when it is longer than the cell is high), each column's lines above it."""
    from PIL import Image, ImageDraw

    rows, columns = len(cells), len(cells[0]) if cells else 0
    sizes = {cell.size for row in cells for cell in row}
    if rows == 0 or columns == 0 or len(sizes) != 1 or any(len(row) != columns for row in cells):
        raise ValueError(f"a grid needs equal rows of cells of one size, got {rows} rows and sizes {sorted(sizes)}")
    if len(row_labels) != rows or len(column_labels) != columns:
        raise ValueError(f"{len(row_labels)} row labels and {len(column_labels)} column labels for a {rows}x{columns} grid")
    (cell_width, cell_height), = sizes
    header_lines = max(1, max(len(lines) for lines in column_labels))
    layout = GridLayout.for_cells(rows, columns, cell_width, cell_height, header_lines)
    grid = Image.new("RGB", layout.size, BACKGROUND)
    draw = ImageDraw.Draw(grid)
    font = label_font(layout.font_size)
    max_lines = max(1, cell_height // line_height(font))
    for row, (label, row_cells) in enumerate(zip(row_labels, cells)):
        for column, cell in enumerate(row_cells):
            grid.paste(cell.convert("RGB"), layout.cell_origin(row, column))
        _, top = layout.cell_origin(row, 0)
        _draw_lines(draw, wrap_text(label, font, layout.label_width - 2 * GAP, max_lines), font, GAP, top)
    for column, lines in enumerate(column_labels):
        left, _ = layout.cell_origin(0, column)
        shown = [truncate_line(line, font, cell_width) for line in lines]
        _draw_lines(draw, shown, font, left, GAP, width=cell_width)
    return grid, layout


# --------------------------------------------------------------------------- captioned contact sheet


@dataclass(frozen=True)
class SheetLayout:
    """Where everything sits in a contact sheet: tiles in rows, each an image box with text under it."""

    count: int
    columns: int
    box_width: int
    box_height: int
    font_size: int
    text_lines: int
    scale: float = 1.0  # < 1 when the images were shrunk to keep the sheet under its pixel limit
    gap: int = GAP

    @property
    def rows(self) -> int:
        return math.ceil(self.count / self.columns)

    @property
    def text_height(self) -> int:
        return self.text_lines * line_height(label_font(self.font_size)) + self.gap

    @property
    def tile_size(self) -> tuple[int, int]:
        return (self.box_width + self.gap, self.box_height + self.text_height + self.gap)

    @property
    def size(self) -> tuple[int, int]:
        tile_width, tile_height = self.tile_size
        return (self.gap + self.columns * tile_width, self.gap + self.rows * tile_height)

    def box_origin(self, index: int) -> tuple[int, int]:
        tile_width, tile_height = self.tile_size
        return (self.gap + (index % self.columns) * tile_width, self.gap + (index // self.columns) * tile_height)

    def image_origin(self, index: int, image_size: tuple[int, int]) -> tuple[int, int]:
        """Top-left corner of an image of ``image_size`` (as pasted) in tile ``index``: centred in its box."""
        x, y = self.box_origin(index)
        return (x + (self.box_width - image_size[0]) // 2, y + (self.box_height - image_size[1]) // 2)

    def text_origin(self, index: int) -> tuple[int, int]:
        x, y = self.box_origin(index)
        return (x, y + self.box_height + self.gap)

    @classmethod
    def for_images(cls, sizes: Sequence[tuple[int, int]], text_lines: int, max_pixels: int = MAX_SHEET_PIXELS) -> "SheetLayout":
        count = len(sizes)
        columns = math.ceil(math.sqrt(count))
        layout = cls._sized(count, columns, sizes, text_lines, 1.0)
        # The text bands and the minimum tile width do not shrink with the images: step down until it fits
        # (or the images are 1/20 of their size, when the text alone is what is large).
        while layout.size[0] * layout.size[1] > max_pixels and layout.scale > 0.05:
            ratio = math.sqrt(max_pixels / (layout.size[0] * layout.size[1]))
            layout = cls._sized(count, columns, sizes, text_lines, layout.scale * min(0.95, ratio))
        return layout

    @classmethod
    def _sized(cls, count, columns, sizes, text_lines, scale) -> "SheetLayout":
        box_width = max(MIN_TILE_WIDTH, max(scaled_size(size, scale)[0] for size in sizes))
        box_height = max(scaled_size(size, scale)[1] for size in sizes)
        return cls(count, columns, box_width, box_height, max(MIN_FONT_SIZE, min(28, box_width // 28)), text_lines, scale)


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    return size if scale >= 1.0 else (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))


def captioned_sheet(images: Sequence, headings: Sequence[str], captions: Sequence[str], max_pixels: int = MAX_SHEET_PIXELS):
    """(sheet image, layout): each image at its own size (shrunk evenly only past ``max_pixels``), centred
    in a box, with a one-line heading and its caption, wrapped to three lines and cut with "...", under it."""
    from PIL import Image, ImageDraw

    if not images or not len(images) == len(headings) == len(captions):
        raise ValueError(f"a sheet needs images with one heading and one caption each, got {len(images)}, {len(headings)}, {len(captions)}")
    layout = SheetLayout.for_images([image.size for image in images], 1 + CAPTION_LINES, max_pixels)
    sheet = Image.new("RGB", layout.size, BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = label_font(layout.font_size)
    for index, (image, heading, caption) in enumerate(zip(images, headings, captions)):
        shown = image.convert("RGB")
        size = scaled_size(shown.size, layout.scale)
        if size != shown.size:
            shown = shown.resize(size, Image.Resampling.LANCZOS)
        sheet.paste(shown, layout.image_origin(index, size))
        lines = [truncate_line(heading, font, layout.box_width)] + wrap_text(caption, font, layout.box_width, CAPTION_LINES)
        _draw_lines(draw, lines, font, *layout.text_origin(index))
    return sheet, layout
