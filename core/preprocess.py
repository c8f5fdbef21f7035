"""Image → training tensor: resize, crop, scale to [-1, 1], and where the crop was taken."""
from __future__ import annotations

from dataclasses import dataclass

import torch


def resize_for_training(image, resolution: int):
    """Resize so the short side equals the resolution (LANCZOS, as kohya does)."""
    from PIL import Image

    width, height = image.size
    scale = resolution / min(width, height)
    size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def center_crop(image, resolution: int):
    width, height = image.size
    left, top = (width - resolution) // 2, (height - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def pil_to_tensor(image) -> torch.Tensor:
    import numpy as np

    array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())
    return array.permute(2, 0, 1).float().div(127.5).sub(1.0)


def cover_size(size: tuple[int, int], width: int, height: int) -> tuple[int, int]:
    """The smallest (w, h) with ``size``'s aspect ratio that covers width x height."""
    scale = max(width / size[0], height / size[1])
    return (max(width, round(size[0] * scale)), max(height, round(size[1] * scale)))


def resize_to_cover(image, width: int, height: int):
    """Resize (LANCZOS, aspect kept) to the smallest size that covers width x height."""
    from PIL import Image

    size = cover_size(image.size, width, height)
    return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)


def center_crop_to(image, width: int, height: int):
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


@dataclass(frozen=True)
class Geometry:
    """Where an image's training pixels came from, in px: what SDXL's size conditioning is made of.

    ``original`` is the image as loaded (w, h); ``resized`` after covering the target;
    ``offset`` (left, top) and ``size`` (w, h) the part of the resized image that was kept
    before encoding (the whole resized image when crops are taken later, on the latent grid).
    """

    original: tuple[int, int]
    resized: tuple[int, int]
    offset: tuple[int, int]
    size: tuple[int, int]

    def size_ids(self, latent_top: int, latent_left: int, target: tuple[int, int], flipped: bool, scale: int) -> list[int]:
        """SDXL's (original h, w, crop top, left, target h, w) for a crop taken at (latent_top, latent_left) of the
        encoded part; a mirrored image's crop is measured from the mirrored image's left edge."""
        top = self.offset[1] + latent_top * scale
        left = self.offset[0] + latent_left * scale
        if flipped:
            left = (self.resized[0] - self.offset[0] - self.size[0]) + latent_left * scale
        return [self.original[1], self.original[0], top, left, target[1], target[0]]


def prepare_image(image, width: int, height: int, center: bool, bucket: bool) -> tuple[torch.Tensor, Geometry]:
    """Resize to cover width x height, center-crop to it when ``center`` (else crops come later), as a tensor.
    A square training size without buckets resizes by the short side (the same size, always resampled)."""
    original = image.size
    image = resize_to_cover(image, width, height) if bucket else resize_for_training(image, width)
    resized = image.size
    offset = (0, 0)
    if center:
        offset = ((image.width - width) // 2, (image.height - height) // 2)
        image = center_crop_to(image, width, height)
    return pil_to_tensor(image), Geometry(original, resized, offset, image.size)
