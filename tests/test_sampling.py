"""Sample previews during training: images reach the callback and disk, and never change the LoRA."""
import pytest
import torch

from core.lora import LoRASettings
from core.training import TrainSettings, train

QUICK = dict(steps=4, learning_rate=5e-3, resolution=64, batch_size=2, lr_scheduler="constant", seed=2)
PREVIEWS = dict(sample_every=2, sample_prompts=("a red circle", "a blue square"), sample_steps=2, sample_seed=7)


@pytest.mark.parametrize("lora_settings", [LoRASettings(rank=2, dropout=0.1), LoRASettings(rank=2, train_text_encoder=True, use_dora=True)], ids=["lora", "te+dora"])
def test_previews_do_not_change_the_trained_lora(tiny_assets, shapes, tmp_path, lora_settings):
    from PIL import Image

    base = tiny_assets["model"]
    plain = train(base, shapes, lora_settings, TrainSettings(**QUICK))
    events = []
    with_previews = train(base, shapes, lora_settings, TrainSettings(**QUICK, **PREVIEWS), checkpoint_dir=tmp_path / "ck", progress=events.append)
    for key, value in plain.lora.tensors.items():
        assert torch.equal(with_previews.lora.tensors[key], value), key
    assert with_previews.loss_history == plain.loss_history
    previews = [e for e in events if e.phase == "sample"]
    assert [e.step for e in previews] == [2, 4]
    assert all(isinstance(e.preview, Image.Image) and e.preview.size == (64, 64) for e in previews)
    names = sorted(p.name for p in (tmp_path / "ck" / "samples").iterdir())
    assert names == ["step-000002-0.png", "step-000002-1.png", "step-000004-0.png", "step-000004-1.png"]
    assert len(with_previews.samples) == 4


def test_previews_change_as_the_lora_trains_and_repeat_for_a_seed(tiny_assets, shapes):
    import numpy as np

    events = []
    train(tiny_assets["model"], shapes, LoRASettings(rank=2), TrainSettings(**{**QUICK, "learning_rate": 5e-2}, **{**PREVIEWS, "sample_every": 1, "sample_prompts": ("a red circle",)}), progress=events.append)
    images = [np.asarray(e.preview, dtype=np.int16) for e in events if e.phase == "sample"]
    assert len(images) == 4
    assert np.abs(images[0] - images[-1]).max() > 0, "previews reflect the current adapters"
    from core.sampling import generate_previews

    base = tiny_assets["model"]
    again = [generate_previews(base.unet, base.vae, base.text_encoder, base.tokenizer, base.noise_scheduler, ["a red circle"], 7, 2, 64, 7.5, torch.device("cpu"))[0] for _ in range(2)]
    assert np.array_equal(np.asarray(again[0]), np.asarray(again[1])), "a preview seed gives the same image"


def test_previews_need_a_prompt():
    from core.errors import SettingsError

    with pytest.raises(SettingsError, match="at least one prompt"):
        TrainSettings(**QUICK, sample_every=2).validate()
