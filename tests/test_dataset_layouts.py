"""Folder layouts beyond image/+text/: kohya repeat folders, metadata imagefolders, sidecars, image modes."""
import json
import os

import pytest
from PIL import Image

from core import tiny
from core.dataset import detect_layout, load_folder_dataset, open_rgb_image
from core.errors import DatasetError


def square(path, size=(32, 32), colour="red", mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


def kohya_tree(root):
    for folder, names in (("10_mychar", ["a", "b"]), ("3_style_art", ["c"])):
        for name in names:
            square(root / folder / f"{name}.png")
    (root / "10_mychar" / "a.txt").write_text("mychar, smiling")
    (root / "10_mychar" / "b.txt").write_text("mychar, sitting")
    return root


def test_kohya_repeats_per_folder_and_metadata(tmp_path, digest):
    root = kohya_tree(tmp_path / "img")
    square(root / "loose.png")
    before = digest(root)
    dataset = load_folder_dataset(root)
    assert dataset.layout == "kohya"
    assert [(e.name, e.repeats, e.caption) for e in dataset.entries] == [  # folders in natural order: 3 before 10
        ("3_style_art/c.png", 3, "style art"),  # no c.txt: the folder name is the caption, as kohya does
        ("10_mychar/a.png", 10, "mychar, smiling"),
        ("10_mychar/b.png", 10, "mychar, sitting"),
    ]
    assert dataset.num_samples == 23
    assert dataset.dataset_dirs() == {"3_style_art": {"n_repeats": 3, "img_count": 1}, "10_mychar": {"n_repeats": 10, "img_count": 2}}
    assert dataset.tag_frequency_by_dir()["10_mychar"] == {"mychar": 2, "smiling": 1, "sitting": 1}
    summary = dataset.summary()
    assert "3 images, 23 with repeats in 2 folders" in summary and "(kohya)" in summary
    assert "captioned with their folder's name" in summary and "directly in img are ignored" in summary
    assert load_folder_dataset(root, repeats=2).num_samples == 46
    assert digest(root) == before


def test_kohya_repeat_count_changes_the_hash(tmp_path):
    root = kohya_tree(tmp_path / "img")
    first = load_folder_dataset(root).content_hash
    (root / "10_mychar").rename(root / "5_mychar")
    assert load_folder_dataset(root).content_hash != first


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_metadata_imagefolder(tmp_path, digest, kind):
    root = tmp_path / "folder"
    square(root / "train" / "x.png", (40, 30))
    square(root / "y.jpg")
    square(root / "unlisted.png")
    rows = [{"file_name": "train/x.png", "text": "first, caption"}, {"file_name": "y.jpg", "text": "second"}]
    if kind == "jsonl":
        (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    else:
        (root / "metadata.csv").write_text("file_name,text\n" + "".join(f'{r["file_name"]},"{r["text"]}"\n' for r in rows))
    before = digest(root)
    dataset = load_folder_dataset(root)
    assert dataset.layout == "imagefolder"
    assert [(e.name, e.caption, e.size) for e in dataset.entries] == [("train/x.png", "first, caption", (40, 30)), ("y.jpg", "second", (32, 32))]
    assert "1 image(s) not listed in metadata" in dataset.summary()
    assert digest(root) == before


def test_metadata_errors_name_columns_and_rows(tmp_path):
    root = tmp_path / "folder"
    square(root / "x.png")
    (root / "metadata.jsonl").write_text('{"file_name": "x.png", "label": "cat"}\n')
    with pytest.raises(DatasetError, match=r"no caption column .*its columns are: file_name, label"):
        load_folder_dataset(root)
    with pytest.raises(DatasetError, match=r"Caption column 'caption' is not in metadata.jsonl; its columns are: file_name, label"):
        load_folder_dataset(root, caption_column="caption")
    assert load_folder_dataset(root, caption_column="label").entries[0].caption == "cat"
    (root / "metadata.jsonl").write_text('{"file_name": "gone.png", "text": "x"}\n')
    with pytest.raises(DatasetError, match=r"lists 1 image\(s\) that do not exist: gone.png"):
        load_folder_dataset(root)
    (root / "metadata.jsonl").write_text('{"file_name": "../x.png", "text": "x"}\n')
    with pytest.raises(DatasetError, match=r"names files outside"):
        load_folder_dataset(root)
    (root / "metadata.jsonl").write_text('{"file_name": "x.png", "text": "x"}\nnot json\n')
    with pytest.raises(DatasetError, match=r"metadata.jsonl line 2 is not valid JSON"):
        load_folder_dataset(root)
    (root / "metadata.jsonl").write_text('{"file_name": "x.png", "text": ""}\n')
    with pytest.raises(DatasetError, match=r"have no caption: x.png"):
        load_folder_dataset(root)
    assert load_folder_dataset(root, allow_uncaptioned=True).caption_count == 0


def test_sidecar_with_custom_caption_extension(tmp_path, digest):
    root = tmp_path / "side"
    square(root / "a.png")
    square(root / "deep" / "b.webp")
    (root / "a.caption").write_text("first")
    (root / "deep" / "b.caption").write_text("second")
    (root / "a.txt").write_text("ignored: other extension")
    before = digest(root)
    dataset = load_folder_dataset(root, caption_extension="caption")
    assert dataset.layout == "sidecar"
    assert [(e.name, e.caption) for e in dataset.entries] == [("a.png", "first"), ("deep/b.webp", "second")]
    with pytest.raises(DatasetError, match=r"image extension"):
        load_folder_dataset(root, caption_extension=".png")
    assert digest(root) == before


def test_layout_detection_order(tmp_path):
    assert detect_layout(tiny.write_synthetic_dataset(tmp_path / "it", count=1, size=16)) == "image-text"
    assert detect_layout(kohya_tree(tmp_path / "k")) == "kohya"
    square(tmp_path / "m" / "a.png")
    (tmp_path / "m" / "metadata.csv").write_text("file_name,text\na.png,x\n")
    assert detect_layout(tmp_path / "m") == "imagefolder"
    square(tmp_path / "s" / "a.png")
    assert detect_layout(tmp_path / "s") == "sidecar"


def test_kohya_layout_forced_on_a_plain_folder(tmp_path):
    square(tmp_path / "plain" / "a.png")
    with pytest.raises(DatasetError, match=r"no kohya folders named like 10_mychar"):
        load_folder_dataset(tmp_path / "plain", layout="kohya")
    with pytest.raises(DatasetError, match=r"Layout must be one of"):
        load_folder_dataset(tmp_path / "plain", layout="zip")


def test_missing_caption_can_be_allowed_for_captioning(tmp_path):
    root = tiny.write_synthetic_dataset(tmp_path / "d", count=3, size=16)
    (root / "text" / "1.txt").unlink()
    with pytest.raises(DatasetError, match=r"1 image\(s\) in .* have no caption: text/1.txt is missing; add the caption files or caption them"):
        load_folder_dataset(root)
    dataset = load_folder_dataset(root, allow_uncaptioned=True)
    assert [bool(e.caption) for e in dataset.entries] == [True, False, True]
    assert "2 captions" in dataset.summary() and "1 image(s) have no caption" in dataset.summary()


def test_small_images_are_reported(tmp_path):
    root = tmp_path / "side"
    square(root / "big.png", (600, 520))
    square(root / "small.png", (300, 200))
    for name in ("big", "small"):
        (root / f"{name}.txt").write_text(name)
    dataset = load_folder_dataset(root)
    assert "1 image(s) are smaller than 512 px on the short side and will be upscaled (e.g. small.png, 300x200)" in dataset.summary()
    assert "smaller than" not in load_folder_dataset(root, resolution=128).summary()
    assert [e.name for e in dataset.small_images(1024)] == ["big.png", "small.png"]


def test_exif_rotated_size_is_the_displayed_size(tmp_path):
    root = tmp_path / "side"
    image = Image.new("RGB", (40, 20), "blue")
    exif = image.getexif()
    exif[0x0112] = 6
    root.mkdir()
    image.save(root / "r.jpg", exif=exif)
    (root / "r.txt").write_text("rotated")
    entry = load_folder_dataset(root).entries[0]
    assert entry.size == (20, 40) == entry.open_image().size


@pytest.mark.parametrize(
    "mode, colour, expected",
    [
        ("LA", (0, 0), (255, 255, 255)),  # fully transparent grey: white
        ("LA", (0, 255), (0, 0, 0)),  # opaque black stays black
        ("CMYK", (0, 255, 255, 0), (255, 0, 0)),  # pure red in CMYK
        ("I;16", 65535, (255, 255, 255)),  # 16-bit white is white, not clipped garbage
        ("I;16", 32768, (128, 128, 128)),
    ],
)
def test_image_modes_convert_to_rgb(tmp_path, mode, colour, expected):
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    Image.new(mode, (16, 16), colour).save(path)
    assert open_rgb_image(path).getpixel((3, 3)) == expected


def test_palette_transparency_is_white(tmp_path):
    image = Image.new("P", (16, 16), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.info["transparency"] = 0
    image.save(tmp_path / "p.png", transparency=0)
    assert open_rgb_image(tmp_path / "p.png").getpixel((0, 0)) == (255, 255, 255)


def test_unreadable_image_and_folder_are_named(tmp_path, monkeypatch):
    """Tests run as root, who reads everything: permission failures are simulated."""
    root = tiny.write_synthetic_dataset(tmp_path / "d", count=2, size=16)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if str(path) == str(root) else real_access(path, mode))
    with pytest.raises(DatasetError, match=r"is not readable by this process; check its permissions"):
        load_folder_dataset(root)
    monkeypatch.setattr(os, "access", real_access)
    real_open = Image.open

    def deny(path, *args, **kwargs):
        if str(path).endswith("1.png"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", deny)
    with pytest.raises(DatasetError, match=r"Image .*image/1.png is not readable by this process"):
        load_folder_dataset(root)


def test_zero_images_in_each_layout(tmp_path):
    (tmp_path / "k" / "5_x").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"holds no images .* in the kohya layout"):
        load_folder_dataset(tmp_path / "k")
    (tmp_path / "it" / "image").mkdir(parents=True)
    (tmp_path / "it" / "text").mkdir()
    with pytest.raises(DatasetError, match=r"holds no images .* in the image-text layout"):
        load_folder_dataset(tmp_path / "it")
