"""The model captioners: the WD14 tagger (a tiny random ONNX graph built here), Florence-2 (a tiny random
model built here), modes, the caption cache, batching, the one-sentence errors. No network."""
from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from captioner_support import TAGS, build_tiny_florence2, build_tiny_tagger, reference_scores, write_color_images, write_config
from core.captioners import (
    CAPTION_CACHE, CaptionCache, Florence2Settings, TaggerSettings, WD14Tagger, caption_dataset, merge_caption, select_tags,
    tag_key, tagger_input, write_caption_files,
)
from core.captioners import runner, wd14
from core.captioners.wd14 import read_tag_list
from core.dataset import load_folder_dataset
from core.errors import DatasetError, SettingsError

NAMES = [t[0] for t in TAGS]


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    return build_tiny_tagger(tmp_path_factory.mktemp("models") / "tiny-tagger")


@pytest.fixture(scope="module")
def tag_list(tagger):
    return read_tag_list(tagger / "selected_tags.csv")


@pytest.fixture
def colors(tmp_path):
    return load_folder_dataset(write_color_images(tmp_path / "colors"), allow_uncaptioned=True)


@pytest.fixture(autouse=True)
def fresh_cache():
    CAPTION_CACHE.clear()
    yield
    CAPTION_CACHE.clear()


def scores_for(**named) -> np.ndarray:
    """A score vector: every tag 0 except those named."""
    scores = np.zeros(len(TAGS), dtype=np.float32)
    for name, value in named.items():
        scores[NAMES.index(name)] = value
    return scores


# --------------------------------------------------------------------------- tag selection (no model)


def test_thresholds_and_order_characters_first_then_general_by_confidence(tag_list):
    scores = scores_for(**{"1girl": 0.5, "solo": 0.9, "long_hair": 0.34, "red_theme": 0.35, "hatsune_miku": 0.86, "megurine_luka": 0.84,
                           "kagamine_rin_(vocaloid)": 0.99})
    tags = select_tags(scores, tag_list, TaggerSettings())
    assert tags == ["kagamine rin \\(vocaloid\\)", "hatsune miku", "solo", "1girl", "red theme"], "0.35 is kept (>=), 0.34 is not"
    lower = select_tags(scores, tag_list, TaggerSettings(general_threshold=0.3, character_threshold=0.8))
    assert lower == ["kagamine rin \\(vocaloid\\)", "hatsune miku", "megurine luka", "solo", "1girl", "red theme", "long hair"]
    assert select_tags(scores, tag_list, TaggerSettings(max_tags=3)) == ["kagamine rin \\(vocaloid\\)", "hatsune miku", "solo"]


def test_exclusion_escaping_underscores_and_kaomoji(tag_list):
    scores = scores_for(**{"star_(symbol)": 0.9, "^_^": 0.8, ":d": 0.7, "long_hair": 0.6, "1girl": 0.5})
    assert select_tags(scores, tag_list, TaggerSettings()) == ["star \\(symbol\\)", "^_^", ":d", "long hair", "1girl"]
    raw = TaggerSettings(underscores_to_spaces=False, escape_parentheses=False)
    assert select_tags(scores, tag_list, raw) == ["star_(symbol)", "^_^", ":d", "long_hair", "1girl"]
    # Excluded tags match however they are typed: spaces or underscores, escaped or not, any case.
    excluded = TaggerSettings(exclude=("Long Hair", "star \\(symbol\\)", "1girl"))
    assert select_tags(scores, tag_list, excluded) == ["^_^", ":d"]


def test_rating_on_off_is_the_most_likely_rating_last(tag_list):
    scores = scores_for(**{"general": 0.2, "sensitive": 0.7, "questionable": 0.4, "1girl": 0.5})
    assert select_tags(scores, tag_list, TaggerSettings()) == ["1girl"]
    assert select_tags(scores, tag_list, TaggerSettings(rating=True)) == ["1girl", "sensitive"]
    assert select_tags(scores, tag_list, TaggerSettings(rating=True, exclude=("sensitive",))) == ["1girl"]


def test_tag_list_and_settings_are_checked(tmp_path):
    (tmp_path / "bad.csv").write_text("id,label\n1,cat\n")
    with pytest.raises(DatasetError, match=r"not a WD14 tag list: it needs the columns tag_id, name, category, count"):
        read_tag_list(tmp_path / "bad.csv")
    with pytest.raises(SettingsError, match=r"general threshold must be between 0 and 1"):
        TaggerSettings(general_threshold=1.5)
    with pytest.raises(SettingsError, match=r"Max tags"):
        TaggerSettings(max_tags=-1)


def test_preprocessing_pads_on_white_resizes_and_gives_bgr_0_255():
    red_strip = Image.new("RGB", (40, 20), (255, 0, 0))
    array = tagger_input(red_strip, 32)
    assert array.shape == (32, 32, 3) and array.dtype == np.float32
    assert tuple(array[16, 16]) == (0.0, 0.0, 255.0), "BGR: red is the last channel"
    assert tuple(array[0, 16]) == (255.0, 255.0, 255.0) and tuple(array[31, 16]) == (255.0, 255.0, 255.0), "padded on white, centred"
    assert tagger_input(Image.new("RGB", (32, 32), (1, 2, 3)), 32)[0, 0].tolist() == [3.0, 2.0, 1.0], "no resize at the model's size"


# --------------------------------------------------------------------------- the ONNX tagger


def test_tagger_scores_are_the_graphs_and_batching_equals_one_by_one(tagger, colors):
    model = WD14Tagger.load(wd14.locate(str(tagger)), device="cpu")
    assert (model.size, model.max_batch, model.name) == (32, None, "tiny-tagger")
    images = [entry.open_image() for entry in colors.entries]
    batched = model.scores(images)
    expected = reference_scores(np.stack([tagger_input(image, 32) for image in images]))
    np.testing.assert_allclose(batched, expected, rtol=1e-5, atol=1e-6)
    one_by_one = np.concatenate([model.scores([image]) for image in images])
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-6, atol=1e-7)
    big = caption_dataset(colors, "wd14_tagger", model=str(tagger), batch_size=8, cache=None)
    single = caption_dataset(colors, "wd14_tagger", model=str(tagger), batch_size=1, cache=None)
    assert [e.caption for e in big.entries] == [e.caption for e in single.entries]


def test_tagger_captions_solid_colours_as_its_weights_say(tagger, colors):
    captioned = caption_dataset(colors, "wd14_tagger", model=str(tagger), trigger="sks", settings=TaggerSettings(rating=True))
    by_name = {entry.name: entry.caption for entry in captioned.entries}
    assert by_name["red.png"] == "sks, kagamine rin \\(vocaloid\\), red theme, ^_^, :d, 1girl, solo, sensitive"
    assert by_name["green.png"] == "sks, hatsune miku, star \\(symbol\\), ^_^, :d, 1girl, solo, general"
    assert by_name["blue.png"] == "sks, blue theme, ^_^, :d, 1girl, solo, general"
    assert "4 caption(s) by tiny-tagger" in captioned.summary() and "trigger 'sks' added" in captioned.summary()


def test_fixed_batch_and_flat_layout_taggers(tmp_path, colors):
    flat = build_tiny_tagger(tmp_path / "wd14_tagger" / "flat-tagger", fixed_batch=1, layout="flat")
    assert flat.name == "flat-tagger.onnx" and (tmp_path / "wd14_tagger" / "flat-tagger.csv").is_file()
    source = wd14.locate("flat-tagger", [tmp_path / "wd14_tagger"])
    model = WD14Tagger.load(source, device="cpu")
    assert model.max_batch == 1
    assert len(model.scores([entry.open_image() for entry in colors.entries])) == 4, "a batch-1 model takes the images one at a time"


def test_modes_fill_replace_append_prepend_with_dedupe_and_prefix_suffix(tagger, tmp_path):
    root = write_color_images(tmp_path / "half", captions={"red": "1girl, my red drawing", "blue": "blue theme"})
    dataset = load_folder_dataset(root, allow_uncaptioned=True)

    def run(mode, **extra):
        result = caption_dataset(dataset, "wd14_tagger", model=str(tagger), mode=mode, settings=TaggerSettings(max_tags=3), **extra)
        return {entry.name: entry.caption for entry in result.entries}

    fill = run("fill")
    assert fill["red.png"] == "1girl, my red drawing" and fill["green.png"] == "hatsune miku, star \\(symbol\\), ^_^"
    assert run("replace")["red.png"] == "kagamine rin \\(vocaloid\\), red theme, ^_^"
    appended = run("append")
    assert appended["blue.png"] == "blue theme, ^_^, :d", "blue theme is there already: not repeated"
    assert appended["red.png"] == "1girl, my red drawing, kagamine rin \\(vocaloid\\), red theme, ^_^"
    assert appended["green.png"] == "hatsune miku, star \\(symbol\\), ^_^", "no caption before: just the tags"
    assert run("prepend")["blue.png"] == "^_^, :d, blue theme"
    framed = run("replace", trigger="sks", prefix="anime style", suffix="best quality")
    assert framed["white.png"].startswith("sks, anime style, ") and framed["white.png"].endswith(", best quality")
    overwritten = caption_dataset(dataset, "wd14_tagger", model=str(tagger), overwrite=True, settings=TaggerSettings(max_tags=3))
    assert {entry.name: entry.caption for entry in overwritten.entries} == run("replace"), "overwrite is the older name of replace"
    with pytest.raises(DatasetError, match=r"Caption mode must be one of fill, replace, append, prepend"):
        caption_dataset(dataset, "wd14_tagger", model=str(tagger), mode="merge")


def test_merge_caption_and_tag_key():
    assert merge_caption("", "a, b", "fill") == "a, b" and merge_caption("x", "a", "fill") == "x"
    assert merge_caption("long hair, b", "long_hair, c, C", "append") == "long hair, b, c"
    assert merge_caption("b", "a, b", "prepend") == "a, b"
    assert tag_key("Star_\\(Symbol\\)") == tag_key("star (symbol)") == "star (symbol)"


# --------------------------------------------------------------------------- the cache


def test_cache_hits_skip_the_model_and_new_thresholds_need_no_new_run(tagger, colors, monkeypatch):
    loads = []

    def counting_load(source, device=None):
        loads.append(source.name)
        return WD14Tagger.load(source, device)

    monkeypatch.setitem(runner.MODEL_KINDS, "wd14_tagger", replace(runner.MODEL_KINDS["wd14_tagger"], load=counting_load))
    first = caption_dataset(colors, "wd14_tagger", model=str(tagger))
    assert loads == ["tiny-tagger"]
    again = caption_dataset(colors, "wd14_tagger", model=str(tagger), trigger="sks")
    assert loads == ["tiny-tagger"], "every image was in the cache: the model was not even loaded"
    assert "(4 from the cache)" in again.summary()
    assert [e.caption for e in again.entries] == ["sks, " + e.caption for e in first.entries]
    stricter = caption_dataset(colors, "wd14_tagger", model=str(tagger), settings=TaggerSettings(general_threshold=0.6))
    assert loads == ["tiny-tagger"] and all("solo" not in e.caption for e in stricter.entries), "scores are cached, not captions"
    (tagger / "model.onnx").touch()  # a replaced model file is a new model
    caption_dataset(colors, "wd14_tagger", model=str(tagger))
    assert loads == ["tiny-tagger", "tiny-tagger"]


def test_cache_is_bounded_least_recently_used_first():
    cache = CaptionCache(max_entries=2)
    cache.put("a", "1")
    cache.put("b", "2")
    assert cache.get("a") == "1"
    cache.put("c", "3")
    assert (cache.get("a"), cache.get("b"), cache.get("c"), len(cache)) == ("1", None, "3", 2)
    by_size = CaptionCache(max_bytes=100_000)
    for key in range(5):
        by_size.put(key, np.zeros(10_000, dtype=np.float32))  # 40 kB each
    assert len(by_size) == 2


# --------------------------------------------------------------------------- finding the model: one sentence each


def test_missing_and_wrong_kind_models_are_one_sentence(tmp_path, tagger):
    search = [tmp_path / "wd14_tagger"]
    with pytest.raises(DatasetError, match=r"WD14 tagger 'wd-vit-tagger-v3' was not found: put model.onnx and selected_tags.csv "
                                           r"\(from huggingface.co/SmilingWolf/wd-vit-tagger-v3\) into .*wd14_tagger/wd-vit-tagger-v3"):
        wd14.locate("wd-vit-tagger-v3", search)
    with pytest.raises(DatasetError, match=r"WD14 tagger folder ./nowhere/tagger does not exist"):
        wd14.locate("./nowhere/tagger")
    with pytest.raises(DatasetError, match=r"holds a transformers model \(config.json\), not a WD14 tagger"):
        wd14.locate(str(write_config(tmp_path / "blip", {"model_type": "blip"})))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model.onnx").write_bytes((tagger / "model.onnx").read_bytes())
    with pytest.raises(DatasetError, match=r"has no selected_tags.csv"):
        wd14.locate(str(tmp_path / "half"))
    with pytest.raises(DatasetError, match=r"needs a model"):
        wd14.locate("  ")
    with pytest.raises(DatasetError, match=r"neither a folder nor in the local Hugging Face cache"):
        WD14Tagger.load(wd14.locate("SmilingWolf/not-cached-tagger"))


def test_tagger_files_that_do_not_belong_together(tmp_path, tagger):
    from captioner_support import write_tags_csv

    mixed = build_tiny_tagger(tmp_path / "mixed")
    write_tags_csv(mixed / "selected_tags.csv", TAGS[:5])
    with pytest.raises(DatasetError, match=r"scores 15 tags but .* lists 5; both files must come from the same tagger"):
        WD14Tagger.load(wd14.locate(str(mixed)))
    (mixed / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(DatasetError, match=r"could not be loaded by onnxruntime .* not a WD14 tagger model"):
        WD14Tagger.load(wd14.locate(str(mixed)))


def test_missing_onnxruntime_is_one_sentence(tagger, colors, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(DatasetError, match=r"needs the onnxruntime package, which is not installed; run `pip install onnxruntime`"):
        caption_dataset(colors, "wd14_tagger", model=str(tagger))


def test_unknown_method_names_every_method():
    with pytest.raises(DatasetError, match=r"must be one of keep, trigger, filename, blip, wd14_tagger, florence2, got 'wd14'"):
        caption_dataset(None, "wd14")


# --------------------------------------------------------------------------- Florence-2


@pytest.fixture(scope="module")
def florence(tmp_path_factory):
    return build_tiny_florence2(tmp_path_factory.mktemp("models") / "tiny-florence2")


def test_florence2_captions_batched_like_one_by_one_and_cached(florence, colors, monkeypatch):
    from core.captioners import Florence2Captioner, florence2

    settings = Florence2Settings(task="<CAPTION>", max_new_tokens=6, num_beams=1)
    model = Florence2Captioner.load(florence2.locate(str(florence)), device="cpu")
    images = [entry.open_image() for entry in colors.entries]
    batched = model.run(images, settings)
    assert all(batched) and len(set(batched)) > 1, "gibberish from a random model, but one per image and not all the same"
    assert batched == [model.run([image], settings)[0] for image in images]
    captioned = caption_dataset(colors, "florence2", model=str(florence), settings=settings, trigger="sks", batch_size=3, device="cpu")
    assert [e.caption for e in captioned.entries] == ["sks, " + caption for caption in batched]
    runs = []
    original_run = Florence2Captioner.run
    monkeypatch.setattr(Florence2Captioner, "run", lambda self, images, options: runs.append(len(images)) or original_run(self, images, options))
    again = caption_dataset(colors, "florence2", model=str(florence), settings=settings, device="cpu")
    assert runs == [] and [e.caption for e in again.entries] == batched and "(4 from the cache)" in again.summary()
    detailed = replace(settings, task="<DETAILED_CAPTION>")
    caption_dataset(colors, "florence2", model=str(florence), settings=detailed, device="cpu")
    assert runs == [4], "another task is another output: the model runs again"


def test_florence2_wrong_kind_and_missing_are_one_sentence(tmp_path, tagger):
    from core.captioners import florence2

    with pytest.raises(DatasetError, match=r"original remote-code Florence-2, which would need trust_remote_code; use the converted"):
        florence2.locate(str(write_config(tmp_path / "remote", {"model_type": "florence2", "auto_map": {"AutoConfig": "x.Y"}})))
    with pytest.raises(DatasetError, match=r"holds a blip model, not Florence-2"):
        florence2.locate(str(write_config(tmp_path / "blip", {"model_type": "blip"})))
    with pytest.raises(DatasetError, match=r"holds a WD14 tagger \(an .onnx model\), so choose the WD14 tagger method, not Florence-2"):
        florence2.locate(str(tagger))
    with pytest.raises(DatasetError, match=r"Florence-2 model 'Florence-2-large' was not found: put the files of .* into .*florence2/Florence-2-large"):
        florence2.locate("Florence-2-large", [tmp_path / "florence2"])
    with pytest.raises(SettingsError, match=r"task must be one of <CAPTION>, <DETAILED_CAPTION>, <MORE_DETAILED_CAPTION>"):
        Florence2Settings(task="<OD>")


# --------------------------------------------------------------------------- review files


def test_review_folder_with_images_loads_back_with_the_edits(tagger, colors, tmp_path, digest):
    before = digest(tmp_path / "colors")
    captioned = caption_dataset(colors, "wd14_tagger", model=str(tagger), trigger="sks")
    written = write_caption_files(captioned, tmp_path / "review", with_images=True)
    assert sorted(p.name for p in (tmp_path / "review").iterdir()) == sorted([f"{n}.{e}" for n in ("blue", "green", "red", "white") for e in ("png", "txt")])
    assert len(written) == 4 and digest(tmp_path / "colors") == before
    (tmp_path / "review" / "red.txt").write_text("sks, my own words\n")
    reloaded = load_folder_dataset(tmp_path / "review")
    assert {e.name: e.caption for e in reloaded.entries}["red.png"] == "sks, my own words"
    write_caption_files(captioned, tmp_path / "review", with_images=True)  # again: images already there are kept


def test_images_without_a_file_are_written_as_png(tmp_path):
    from core.dataset import BytesOpener, Entry, ImageCaptionDataset
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 255, 0)).save(buffer, format="PNG")
    entries = [Entry(name="000001", caption="green", open_image=BytesOpener(lambda: buffer.getvalue(), "row 1"))]
    dataset = ImageCaptionDataset(entries=entries, source="someone/hub-dataset", layout="hub", content_hash="x")
    write_caption_files(dataset, tmp_path / "out", with_images=True)
    assert (tmp_path / "out" / "000001.txt").read_text() == "green\n"
    assert Image.open(tmp_path / "out" / "000001.png").getpixel((0, 0)) == (0, 255, 0)
