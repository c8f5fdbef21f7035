"""Shared helpers for tests that look inside a training run."""
from pathlib import Path

import torch
from PIL import Image

from core.dataset import load_folder_dataset
from core.training import Trainer


def aspect_dataset(root: Path, sizes: list[tuple[int, int]], resolution: int):
    """A folder dataset of flat images of the given (width, height) sizes, each with its own caption."""
    root.mkdir()
    for index, size in enumerate(sizes):
        Image.new("RGB", size, (30 * index, 90, 160)).save(root / f"{index}.png")
        (root / f"{index}.txt").write_text(f"shape {index}, colour {index}, thing")
    return load_folder_dataset(root, resolution=resolution)


class ProbeTrainer(Trainer):
    """Records the trained (peft) UNet and text-encoder outputs before the adapters are removed."""

    probe = None

    def _restore_base(self):
        generator = torch.Generator().manual_seed(11)
        latents = torch.randn(1, 4, 8, 8, generator=generator)
        text = torch.randn(1, 77, self.unet.config.cross_attention_dim, generator=generator)
        ids = self.base.tokenizer(["a red circle"], padding="max_length", max_length=77, return_tensors="pt").input_ids
        with torch.no_grad():
            ProbeTrainer.probe = {
                "latents": latents, "text": text, "ids": ids,
                "unet": self.unet(latents, torch.tensor([400]), text).sample,
                "text_encoder": self.text_encoder(ids)[0],
            }
        super()._restore_base()


class StopAtStep:
    """Progress callback + stop check that cancels once a given step has been reported."""

    def __init__(self, step):
        self.step, self.stopped = step, False

    def __call__(self, event):
        if event.phase == "train" and event.step >= self.step:
            self.stopped = True

    def should_stop(self):
        return self.stopped
