"""Caption augmentation during training, as kohya's trainer does it.

Applied per draw (never to the stored captions): caption dropout (the whole caption
becomes empty, which teaches the unconditional branch), tag dropout (each
comma-separated tag after the kept ones dropped with probability p) and tag shuffle
(the tags after the first ``keep_tokens`` reordered). Every random choice comes from
the generator the caller passes, so a seed gives the same captions on every run.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import SettingsError


def split_tags(caption: str) -> list[str]:
    return [tag.strip() for tag in caption.split(",") if tag.strip()]


@dataclass(frozen=True)
class CaptionAugmentation:
    caption_dropout: float = 0.0
    shuffle_tags: bool = False
    keep_tokens: int = 0
    tag_dropout: float = 0.0

    def validate(self) -> None:
        for name, value in (("Caption dropout", self.caption_dropout), ("Tag dropout", self.tag_dropout)):
            if not 0.0 <= value < 1.0:
                raise SettingsError(f"{name} must be a probability from 0 up to (not including) 1, got {value}.")
        if not isinstance(self.keep_tokens, int) or self.keep_tokens < 0:
            raise SettingsError(f"Keep tokens must be 0 or more, got {self.keep_tokens}.")

    @property
    def active(self) -> bool:
        """True when captions can differ from the stored ones."""
        return self.caption_dropout > 0 or self.shuffle_tags or self.tag_dropout > 0

    def apply(self, caption: str, rng: torch.Generator) -> str:
        if not self.active:
            return caption
        if self.caption_dropout > 0 and float(torch.rand((), generator=rng)) < self.caption_dropout:
            return ""
        if not (self.shuffle_tags or self.tag_dropout > 0):
            return caption
        tags = split_tags(caption)
        kept, rest = tags[: self.keep_tokens], tags[self.keep_tokens:]
        if self.tag_dropout > 0 and rest:
            keep = (torch.rand(len(rest), generator=rng) >= self.tag_dropout).tolist()
            rest = [tag for tag, stays in zip(rest, keep) if stays]
        if self.shuffle_tags and len(rest) > 1:
            rest = [rest[i] for i in torch.randperm(len(rest), generator=rng).tolist()]
        return ", ".join(kept + rest)
