"""Captioner logic: trigger words, file names, a tiny random BLIP (gibberish captions, real plumbing), write-back rules."""
import pytest
from PIL import Image

from core import tiny
from core.captioning import BlipCaptioner, add_tags, caption_dataset, caption_from_file_name, write_caption_files
from core.dataset import load_folder_dataset
from core.errors import DatasetError, OutputPathError

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "cat", "dog", "on", "the", "square", "circle"]


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory):
    """A random-weight BLIP with the real architecture shrunk, saved as a local folder (no download)."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder = tmp_path_factory.mktemp("blip") / "tiny-blip"
    folder.mkdir()
    (folder.parent / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    tokenizer = BertTokenizer(str(folder.parent / "vocab.txt"), model_max_length=32)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=32, bos_token_id=tokenizer.bos_token_id, sep_token_id=tokenizer.sep_token_id,
                eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)
    torch.manual_seed(0)
    BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=32)).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture
def half_captioned(tmp_path):
    root = tiny.write_synthetic_dataset(tmp_path / "data", count=5, size=16)
    for stem in (1, 3, 4):
        (root / "text" / f"{stem}.txt").unlink()
    return root


def test_trigger_prefix_suffix_are_tags_added_once():
    assert add_tags("a cat", trigger="sks") == "sks, a cat"
    assert add_tags("sks, a cat", trigger="sks") == "sks, a cat"
    assert add_tags("a cat", trigger="sks", prefix="photo", suffix="best quality") == "sks, photo, a cat, best quality"
    assert add_tags("", trigger="sks") == "sks"


def test_caption_from_file_name():
    assert caption_from_file_name("sub/red_cat-01.png") == "red cat"
    assert caption_from_file_name("0.png") == ""


def test_trigger_method_changes_captions_and_hash(dataset_dir, digest):
    before = digest(dataset_dir)
    dataset = load_folder_dataset(dataset_dir)
    triggered = caption_dataset(dataset, "trigger", trigger="shapez")
    assert all(e.caption.startswith("shapez, a ") for e in triggered.entries)
    assert triggered.content_hash != dataset.content_hash
    assert "trigger 'shapez' added" in triggered.summary()
    assert dataset.entries[0].caption.startswith("a ")  # the input dataset is not changed
    assert caption_dataset(dataset, "keep") is dataset  # nothing to do: same hash, caches stay valid
    assert digest(dataset_dir) == before


def test_filename_method_fills_only_missing_unless_overwrite(tmp_path):
    root = tmp_path / "side"
    root.mkdir()
    for name in ("red_cat", "blue_dog"):
        Image.new("RGB", (16, 16)).save(root / f"{name}.png")
    (root / "red_cat.txt").write_text("my own caption")
    dataset = load_folder_dataset(root, allow_uncaptioned=True)
    assert [e.caption for e in caption_dataset(dataset, "filename").entries] == ["blue dog", "my own caption"]
    assert [e.caption for e in caption_dataset(dataset, "filename", overwrite=True).entries] == ["blue dog", "red cat"]


def test_blip_captions_only_uncaptioned_in_batches(tiny_blip, half_captioned, digest):
    before = digest(half_captioned)
    dataset = load_folder_dataset(half_captioned, allow_uncaptioned=True)
    events = []
    captioned = caption_dataset(dataset, "blip", model=tiny_blip, batch_size=2, max_new_tokens=4, device="cpu", progress=events.append)
    assert [(e.phase, e.step, e.total) for e in events] == [("caption", 2, 3), ("caption", 3, 3)]
    for old, new in zip(dataset.entries, captioned.entries):
        if old.caption:
            assert new.caption == old.caption
        else:
            assert new.caption and set(new.caption.split()) <= set(WORDS)  # gibberish, from the tiny vocabulary
    assert captioned.caption_count == 5 and "3 caption(s) by tiny-blip" in captioned.summary()
    events.clear()
    again = caption_dataset(dataset, "blip", model=tiny_blip, overwrite=True, batch_size=4, max_new_tokens=4, device="cpu", progress=events.append)
    assert [e.step for e in events] == [4, 5]
    assert all(e.caption for e in again.entries)
    assert digest(half_captioned) == before


def test_blip_from_a_models_folder_and_missing_model(tiny_blip, tmp_path):
    captioner = BlipCaptioner.load("tiny-blip", device="cpu", search_dirs=[tiny_blip.parent])
    assert captioner.name == "tiny-blip"
    with pytest.raises(DatasetError, match=r"neither a folder nor in the local Hugging Face cache"):
        BlipCaptioner.load("Salesforce/not-cached-blip", device="cpu")
    with pytest.raises(DatasetError, match=r"BLIP model folder ./nowhere/blip does not exist"):
        BlipCaptioner.load("./nowhere/blip", device="cpu")
    with pytest.raises(DatasetError, match=r"needs a model"):
        BlipCaptioner.load("", device="cpu")


def test_write_back_goes_only_where_asked(half_captioned, tmp_path, digest):
    dataset = caption_dataset(load_folder_dataset(half_captioned, allow_uncaptioned=True), "trigger", trigger="sks")
    before = digest(half_captioned)
    written = write_caption_files(dataset, tmp_path / "captions")
    assert [p.relative_to(tmp_path / "captions").as_posix() for p in written] == [f"image/{i}.txt" for i in range(5)]
    assert (tmp_path / "captions" / "image" / "1.txt").read_text() == "sks\n"
    assert digest(half_captioned) == before
    with pytest.raises(OutputPathError, match=r"inside the dataset folder"):
        write_caption_files(dataset, half_captioned / "image")
    assert digest(half_captioned) == before
    allowed = write_caption_files(dataset, half_captioned / "new_text", allow_source_folder=True)
    assert len(allowed) == 5 and all(p.is_relative_to(half_captioned / "new_text") for p in allowed)


def test_write_back_never_escapes_the_folder(tmp_path):
    from dataclasses import replace

    dataset = load_folder_dataset(tiny.write_synthetic_dataset(tmp_path / "d", count=1, size=16))
    dataset.entries = [replace(dataset.entries[0], name="../../evil.png")]
    with pytest.raises(OutputPathError, match=r"would write outside"):
        write_caption_files(dataset, tmp_path / "out" / "captions")
    assert not (tmp_path / "evil.txt").exists()


def test_unknown_method():
    with pytest.raises(DatasetError, match=r"Caption method must be one of keep, trigger, filename, blip"):
        caption_dataset(None, "wd14")
