"""Aspect-ratio buckets and caption augmentation: pure functions, then one small training run."""

import pytest
import torch

from core.augment import CaptionAugmentation
from core.buckets import assign_bucket, batches_per_epoch, bucket_grid, epoch_batches
from core.errors import SettingsError
from core.lora import LoRASettings
from core.training import Trainer, TrainSettings, generator, train
from training_support import aspect_dataset


def test_grid_at_512_is_kohya_like():
    grid = bucket_grid(512 * 512)
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512 for w, h in grid)
    assert (512, 512) in grid and (256, 1024) in grid and (1024, 256) in grid and (576, 448) in grid
    assert all((h, w) in grid for w, h in grid)
    assert min(min(b) for b in grid) == 256 and max(max(b) for b in grid) == 1024


@pytest.mark.parametrize("size, bucket", [
    ((1000, 1000), (512, 512)),
    ((1600, 900), (640, 384)),   # 16:9 -> ratio 1.67
    ((900, 1600), (384, 640)),
    ((1200, 900), (576, 448)),   # 4:3 -> 1.29, the nearest ratio on the grid
    ((3000, 700), (1024, 256)),  # wider than the grid: the widest bucket
])
def test_aspect_ratios_land_in_expected_buckets(size, bucket):
    assert assign_bucket(size, bucket_grid(512 * 512)) == bucket


def test_no_upscale_never_enlarges():
    grid = bucket_grid(512 * 512)
    for size in [(300, 200), (200, 300), (130, 500), (512, 512), (1024, 700), (70, 70)]:
        width, height = assign_bucket(size, grid, no_upscale=True)
        assert width % 64 == 0 and height % 64 == 0
        if min(size) >= 64:
            assert width <= size[0] and height <= size[1], size
    assert assign_bucket((300, 200), grid, no_upscale=True) == (256, 192)
    assert assign_bucket((300, 200), grid) == (640, 384)  # without the option it is upscaled to the grid
    assert assign_bucket((1024, 700), grid, no_upscale=True) == assign_bucket((1024, 700), grid)


def test_epoch_batches_one_shape_each_and_deterministic():
    pool = [(64, 64)] * 5 + [(128, 64)] * 3 + [(64, 128)]
    make = lambda *parts: generator(0, 1, 7, *parts)  # noqa: E731
    batches = epoch_batches(pool, 2, make)
    assert len(batches) == batches_per_epoch(pool, 2) == 3 + 2 + 1
    assert all(len(b) == 2 and len({pool[p] for p in b}) == 1 for b in batches)
    assert set(p for b in batches for p in b) == set(range(len(pool)))  # every image seen each epoch
    assert epoch_batches(pool, 2, make) == batches
    assert epoch_batches(pool, 2, lambda *parts: generator(1, 1, 7, *parts)) != batches


def test_caption_augmentation_keeps_tokens_and_is_seeded():
    augmentation = CaptionAugmentation(shuffle_tags=True, keep_tokens=2, tag_dropout=0.3)
    caption = "sks, photo, a, b, c, d, e, f"
    outputs = [augmentation.apply(caption, generator(0, i)) for i in range(200)]
    assert all(o.startswith("sks, photo") for o in outputs)
    assert outputs == [augmentation.apply(caption, generator(0, i)) for i in range(200)]
    assert len(set(outputs)) > 100
    kept = sum(len(o.split(", ")) - 2 for o in outputs) / (6 * len(outputs))
    assert abs(kept - 0.7) < 0.05  # 30 % of the shuffleable tags dropped
    dropout = CaptionAugmentation(caption_dropout=0.25)
    empty = sum(dropout.apply("x, y", generator(1, i)) == "" for i in range(2000)) / 2000
    assert abs(empty - 0.25) < 0.03
    assert CaptionAugmentation().apply(caption, generator(0)) == caption


@pytest.mark.parametrize("kwargs, message", [
    ({"caption_dropout": 1.0}, "Caption dropout must be a probability"),
    ({"tag_dropout": -0.1}, "Tag dropout must be a probability"),
    ({"keep_tokens": -1}, "Keep tokens must be 0 or more"),
    ({"no_upscale": True}, "turn bucketing on"),
    ({"bucket": True, "max_area": 100}, "outside 64x64"),
])
def test_bad_data_settings(kwargs, message):
    with pytest.raises(SettingsError, match=message):
        TrainSettings(**kwargs).validate()


@pytest.fixture
def mixed_shapes(tmp_path):
    """Six images of three aspect ratios at 128 px training size (grid 64..256)."""
    return aspect_dataset(tmp_path / "shapes", [(128, 128), (140, 136), (256, 64), (250, 70), (64, 256), (40, 80)], resolution=128)


FAST = dict(steps=3, resolution=128, batch_size=2, learning_rate=1e-3, seed=5, random_flip=True)


def test_bucketed_training_batches_are_one_shape_and_runs_repeat(base_model, mixed_shapes):
    settings = TrainSettings(**FAST, bucket=True, no_upscale=True, shuffle_tags=True, keep_tokens=1, caption_dropout=0.3)
    trainer = Trainer(base_model, mixed_shapes, LoRASettings(rank=2), settings)
    buckets = [trainer.plan.bucket_of(i) for i in range(len(mixed_shapes))]
    assert buckets == [(128, 128), (128, 128), (256, 64), (192, 64), (64, 256), (64, 64)]
    assert all(b[0] <= s[0] and b[1] <= s[1] for b, s in zip(buckets, (e.size for e in mixed_shapes.entries)) if min(s) >= 64)
    shapes = []
    original = trainer.images.batch

    def record(indices, rng):
        latents, size_ids = original(indices, rng)
        shapes.append(tuple(latents.shape))
        assert {buckets[i] for i in indices} == {(latents.shape[-1] * 8, latents.shape[-2] * 8)}
        return latents, size_ids

    trainer.images.batch = record
    result = trainer.run()
    assert len(shapes) == 3 and all(s[0] == 2 for s in shapes)
    metadata = result.lora.metadata
    assert metadata["ss_enable_bucket"] == "True" and metadata["ss_shuffle_caption"] == "True"
    assert '"resolution": [256, 64]' in metadata["ss_bucket_info"]
    again = train(base_model, mixed_shapes, LoRASettings(rank=2), settings)
    for key, value in result.lora.tensors.items():
        assert torch.equal(again.lora.tensors[key], value), key


def test_augmented_captions_reach_the_text_encoder_and_the_cache_stays_exact(base_model, mixed_shapes):
    settings = TrainSettings(**{**FAST, "steps": 2}, shuffle_tags=True, keep_tokens=1, caption_dropout=0.3)
    trainer = Trainer(base_model, mixed_shapes, LoRASettings(rank=2), settings)
    trainer.captions.build(base_model.text_encoders)
    assert "" in trainer.captions.cache  # the dropped-out caption is encoded up front
    seen = set()
    for step in range(30):
        indices = trainer.plan.batch_indices(step, 0)
        cached = trainer.captions.batch(indices, base_model.text_encoders)["hidden"]
        rng = generator(settings.seed, step, 0, 17)
        captions = [settings.caption_augmentation.apply(mixed_shapes.entries[i].caption, rng) for i in indices]
        seen.update(captions)
        with torch.no_grad():
            direct = trainer._encode_text(base_model.text_encoders, captions)["hidden"].float()
        assert torch.allclose(cached, direct, atol=1e-5)
    stored = {e.caption for e in mixed_shapes.entries}
    assert "" in seen and seen - stored - {""}, "shuffled variants were drawn"
    assert all(c.startswith("shape ") for c in seen if c)  # keep_tokens=1 keeps the first tag
    plain = trainer.captions.batch([0, 1], base_model.text_encoders)["hidden"]  # evaluation passes plain lists: stored captions
    assert torch.allclose(plain, torch.stack([trainer.captions.cache[mixed_shapes.entries[i].caption]["hidden"] for i in (0, 1)]))
