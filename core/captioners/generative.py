"""What the image-to-text captioners (BLIP, Florence-2) share: a loaded model and processor on one device, and
generating captions from the processor's inputs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class GenerativeCaptioner:
    """A loaded transformers captioning model and its processor, on one device."""

    model: Any
    processor: Any
    device: Any
    name: str
    identity: str = ""  # the model files' fingerprint, part of the caption cache's key

    def generate_captions(self, inputs, **generate_options) -> list[str]:
        """Captions for a batch of processor inputs, each on one line with single spaces."""
        import torch

        inputs = inputs.to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.no_grad():
            output = self.model.generate(**inputs, **generate_options)
        return [" ".join(text.split()) for text in self.processor.batch_decode(output, skip_special_tokens=True)]
