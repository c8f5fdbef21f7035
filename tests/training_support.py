"""Shared helpers for tests that look inside a training run."""
import torch

from core.training import Trainer


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
