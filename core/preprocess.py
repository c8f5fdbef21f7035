"""Image → training tensor: resize, crop, scale to [-1, 1]."""
from __future__ import annotations

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


def resize_to_cover(image, width: int, height: int):
    """Resize (LANCZOS, aspect kept) to the smallest size that covers width x height."""
    from PIL import Image

    scale = max(width / image.width, height / image.height)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    return image if size == image.size else image.resize(size, Image.Resampling.LANCZOS)


def center_crop_to(image, width: int, height: int):
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))
