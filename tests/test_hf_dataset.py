"""Hugging Face sources built on disk in the test: save_to_disk, parquet folders, imagefolders, the offline hub."""
import io

import pytest
from PIL import Image

from core.errors import DatasetError
from core.hf_dataset import load_hf_dataset

datasets = pytest.importorskip("datasets")


def png_bytes(size=(40, 24), colour="red"):
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def pokemon_like(count=5, corrupt_row=None):
    """Rows shaped like svjack/pokemon-blip-captions-en-zh: image, en_text, zh_text."""
    images = [{"bytes": png_bytes((40 + i, 24)), "path": None} for i in range(count)]
    if corrupt_row is not None:
        images[corrupt_row] = {"bytes": b"not an image", "path": None}
    features = datasets.Features({"image": datasets.Image(), "en_text": datasets.Value("string"), "zh_text": datasets.Value("string")})
    return datasets.Dataset.from_dict(
        {"image": images, "en_text": [f"a drawing of pokemon {i}" for i in range(count)], "zh_text": ["宝可梦"] * count},
        features=features,
    )


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "hf_cache"


def test_save_to_disk_dataset_dict_with_splits(tmp_path, digest):
    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": pokemon_like(5), "test": pokemon_like(2)}).save_to_disk(str(folder))
    before = digest(folder)
    dataset = load_hf_dataset(folder)
    assert len(dataset) == 5 and dataset.entries[0].caption == "a drawing of pokemon 0"
    assert "captions from column 'en_text'" in dataset.summary() and dataset.layout == "hf save_to_disk, split train"
    assert dataset.entries[3].open_image().size == (43, 24)
    from core.dataset import image_size

    assert image_size(dataset.entries[4]) == (44, 24)  # read from the header for bucketing
    assert len(load_hf_dataset(folder, split="test")) == 2
    assert load_hf_dataset(folder, caption_column="zh_text").entries[0].caption == "宝可梦"
    with pytest.raises(DatasetError, match=r"Split 'validation' is not in .*; its splits are: train, test"):
        load_hf_dataset(folder, split="validation")
    assert digest(folder) == before


def test_parquet_folder_columns_hash_and_max_samples(tmp_path, cache, digest):
    folder = tmp_path / "pq"
    (folder / "data").mkdir(parents=True)
    pokemon_like(6).to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    before = digest(folder)
    dataset = load_hf_dataset(folder, cache_dir=cache)
    assert len(dataset) == 6 and dataset.entries[5].open_image().size == (45, 24)
    assert load_hf_dataset(folder, cache_dir=cache).content_hash == dataset.content_hash
    limited = load_hf_dataset(folder, max_samples=2, cache_dir=cache)
    assert len(limited) == 2 and "first 2 of 6 rows" in limited.summary()
    assert limited.content_hash != dataset.content_hash
    assert load_hf_dataset(folder, caption_column="zh_text", cache_dir=cache).content_hash != dataset.content_hash
    with pytest.raises(DatasetError, match=r"Caption column 'text' is not in the dataset; its columns are: image, en_text, zh_text"):
        load_hf_dataset(folder, caption_column="text", cache_dir=cache)
    with pytest.raises(DatasetError, match=r"Image column 'picture' is not in the dataset; its columns are: image, en_text, zh_text"):
        load_hf_dataset(folder, image_column="picture", cache_dir=cache)
    assert digest(folder) == before, "the HF cache, not the source folder, holds the converted table"


def test_single_parquet_file(tmp_path, cache):
    path = tmp_path / "one.parquet"
    pokemon_like(3).to_parquet(str(path))
    assert len(load_hf_dataset(path, cache_dir=cache)) == 3


def test_images_are_decoded_only_when_opened(tmp_path):
    folder = tmp_path / "saved"
    pokemon_like(4, corrupt_row=2).save_to_disk(str(folder))
    dataset = load_hf_dataset(folder)  # indexing does not decode: the broken row is found only when opened
    assert dataset.entries[1].open_image().size == (41, 24)
    with pytest.raises(DatasetError, match=r"row 2 of .* could not be read"):
        dataset.entries[2].open_image()


def test_table_without_image_or_caption_column(tmp_path, cache):
    folder = tmp_path / "csv"
    folder.mkdir()
    (folder / "train.csv").write_text("name,score\na,1\nb,2\n")
    with pytest.raises(DatasetError, match=r"no image column \(an Image feature\); its columns are: name, score"):
        load_hf_dataset(folder, cache_dir=cache)
    saved = tmp_path / "nocap"
    datasets.Dataset.from_dict({"image": [png_bytes()], "label": [3]}, features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})).save_to_disk(str(saved))
    with pytest.raises(DatasetError, match=r"has no caption column .*its columns are: image, label; name the caption column"):
        load_hf_dataset(saved)
    assert load_hf_dataset(saved, allow_uncaptioned=True).caption_count == 0


def test_empty_captions_are_named_by_row(tmp_path):
    rows = pokemon_like(3)
    rows = rows.map(lambda row, i: {"en_text": "" if i == 1 else row["en_text"]}, with_indices=True)
    rows.save_to_disk(str(tmp_path / "saved"))
    with pytest.raises(DatasetError, match=r"1 row\(s\) of .* have an empty 'en_text' caption \(rows 1\)"):
        load_hf_dataset(tmp_path / "saved")


def test_imagefolder_path_is_indexed_in_place(tmp_path, digest):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (20, 20)).save(folder / f"{i}.png")
    (folder / "metadata.jsonl").write_text("".join(f'{{"file_name": "{i}.png", "caption": "pic {i}"}}\n' for i in range(3)))
    before = digest(folder)
    dataset = load_hf_dataset(folder, max_samples=2)
    assert [e.caption for e in dataset.entries] == ["pic 0", "pic 1"] and dataset.layout == "imagefolder"
    assert digest(folder) == before


def test_offline_hub_id_without_cache_is_one_sentence(cache):
    with pytest.raises(DatasetError, match=r"^Dataset svjack/not-cached-here is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"):
        load_hf_dataset("svjack/not-cached-here", cache_dir=cache)


@pytest.mark.parametrize("source, message", [
    ("", "name is empty"),
    ("./missing/folder", "neither an existing folder nor a Hugging Face hub id"),
])
def test_bad_sources(source, message):
    with pytest.raises(DatasetError, match=message):
        load_hf_dataset(source)


def test_folder_without_data_files(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.png").write_bytes(png_bytes())
    with pytest.raises(DatasetError, match=r"holds no dataset files .* use the folder dataset instead"):
        load_hf_dataset(tmp_path / "d")
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(DatasetError, match=r"is a file but not a data file"):
        load_hf_dataset(tmp_path / "notes.md")


def test_list_of_captions_uses_the_first(tmp_path):
    features = datasets.Features({"image": datasets.Image(), "captions": datasets.List(datasets.Value("string"))})
    datasets.Dataset.from_dict({"image": [png_bytes()], "captions": [["first one", "second one"]]}, features=features).save_to_disk(str(tmp_path / "s"))
    assert load_hf_dataset(tmp_path / "s").entries[0].caption == "first one"


def test_the_cli_downloads_a_named_dataset_unless_told_offline(monkeypatch):
    """Without --offline the CLI leaves the hub reachable for datasets; --offline closes it and the message says so."""
    import os

    from core import cli

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", cli.OFFLINE_REASON):
        monkeypatch.setenv(name, "")  # recorded first, so the teardown puts back what was there
        monkeypatch.delenv(name)
    cli._quiet_libraries(offline=False)
    assert "HF_HUB_OFFLINE" not in os.environ and "HF_DATASETS_OFFLINE" not in os.environ
    cli._quiet_libraries(offline=True)
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ[cli.OFFLINE_REASON] == "--offline was given"
    with pytest.raises(DatasetError, match=r"HF_HUB_OFFLINE is set \(--offline was given\); run without --offline once"):
        load_hf_dataset("svjack/not-cached-either")
    monkeypatch.delenv(cli.OFFLINE_REASON)
    with pytest.raises(DatasetError, match=r"HF_HUB_OFFLINE is set \(it is set in your environment\); unset HF_HUB_OFFLINE once"):
        load_hf_dataset("svjack/not-cached-either")
