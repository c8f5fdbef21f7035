import os

import pytest
from PIL import Image

from core import tiny
from core.dataset import load_folder_dataset, open_rgb_image
from core.errors import DatasetError


def test_image_text_layout_with_numeric_stems(dataset_dir, digest):
    before = digest(dataset_dir)
    dataset = load_folder_dataset(dataset_dir)
    assert dataset.layout == "image-text"
    assert [e.name for e in dataset.entries][:3] == ["image/0.png", "image/1.png", "image/2.png"]
    assert dataset.entries[0].caption == (dataset_dir / "text" / "0.txt").read_text()
    assert dataset.entries[0].open_image().size == (64, 64)
    assert digest(dataset_dir) == before


def test_natural_order_and_stable_hash(tmp_path):
    root = tiny.write_synthetic_dataset(tmp_path / "d", count=12, size=32)
    first = load_folder_dataset(root)
    assert [e.name for e in first.entries][:3] == ["image/0.png", "image/1.png", "image/2.png"]
    assert first.entries[10].name == "image/10.png"
    assert load_folder_dataset(root).content_hash == first.content_hash
    (root / "text" / "3.txt").write_text("changed caption")
    assert load_folder_dataset(root).content_hash != first.content_hash


def test_sidecar_layout_recursive(tmp_path, digest):
    root = tiny.write_synthetic_dataset(tmp_path / "side", count=3, size=32, layout="sidecar")
    (root / "sub").mkdir()
    Image.new("RGB", (32, 32), "red").save(root / "sub" / "x.jpg")
    (root / "sub" / "x.txt").write_text("a red square")
    before = digest(root)
    dataset = load_folder_dataset(root)
    assert dataset.layout == "sidecar"
    assert len(dataset) == 4
    assert "sub/x.jpg" in [e.name for e in dataset.entries]
    assert digest(root) == before


def test_repeats_count_in_samples(dataset_dir):
    dataset = load_folder_dataset(dataset_dir, repeats=3)
    assert dataset.num_samples == 3 * len(dataset)
    assert "with repeats" in dataset.summary()


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda root: (root / "text" / "2.txt").unlink(), r"no caption file: image/2.png|2.txt is missing"),
        (lambda root: (root / "text" / "99.txt").write_text("orphan"), r"have no image: text/99.txt"),
        (lambda root: (root / "image" / "1.png").write_bytes(b"not a png"), r"not readable images: image/1.png"),
        (lambda root: (root / "text" / "0.txt").write_bytes(b"\xff\xfe\xfa bad"), r"not UTF-8"),
    ],
)
def test_bad_folders_name_the_files(dataset_dir, damage, message, digest):
    damage(dataset_dir)
    before = digest(dataset_dir)
    with pytest.raises(DatasetError, match=message):
        load_folder_dataset(dataset_dir)
    assert digest(dataset_dir) == before


def test_empty_missing_and_file_paths(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        load_folder_dataset(tmp_path / "empty")
    with pytest.raises(DatasetError, match="does not exist"):
        load_folder_dataset(tmp_path / "missing")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DatasetError, match="is a file"):
        load_folder_dataset(tmp_path / "file.txt")


def test_alpha_is_composited_on_white(tmp_path):
    path = tmp_path / "transparent.png"
    Image.new("RGBA", (16, 16), (0, 0, 0, 0)).save(path)
    assert open_rgb_image(path).getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    image = Image.new("RGB", (40, 20), "blue")
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° on display
    image.save(path, exif=exif)
    assert open_rgb_image(path).size == (20, 40)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_folder(tmp_path):
    root = tiny.write_synthetic_dataset(tmp_path / "locked", count=2, size=32)
    root.chmod(0)
    try:
        with pytest.raises(DatasetError, match="not readable"):
            load_folder_dataset(root)
    finally:
        root.chmod(0o755)
