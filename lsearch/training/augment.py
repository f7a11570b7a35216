"""Batched image preprocessing and augmentation as tensor ops on the device.

No per-sample Python: a batch of uint8 images goes in, a normalised float batch comes out.
Randomness comes only from the `torch.Generator` passed in, so a seed's run is repeatable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lsearch.spec import Augment


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Pad each image by `padding` (zeros) and cut a random window of the original size."""
    if padding == 0:
        return images
    batch, _, height, width = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    offsets = torch.randint(
        0, 2 * padding + 1, (2, batch), generator=generator, device=generator.device
    ).to(images.device)
    rows = offsets[0, :, None] + torch.arange(height, device=images.device)  # B x H
    cols = offsets[1, :, None] + torch.arange(width, device=images.device)  # B x W
    batch_index = torch.arange(batch, device=images.device)[:, None, None]
    cropped = padded.permute(0, 2, 3, 1)[batch_index, rows[:, :, None], cols[:, None, :]]
    return cropped.permute(0, 3, 1, 2)


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(images.shape[0], generator=generator, device=generator.device) < 0.5
    return torch.where(flip.to(images.device)[:, None, None, None], images.flip(-1), images)


def prepare(
    images: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    image_size: int | None,
    in_channels: int,
    augment: Augment | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """uint8 N x C x H x W -> float, augmented (when `augment` is given), resized, normalised."""
    if augment is not None:
        assert generator is not None, "augmentation needs a generator"
        images = random_crop(images, augment.crop_padding, generator)
        if augment.flip:
            images = random_flip(images, generator)
    # Convert and normalise at the stored size, then resize once: the expensive size sees
    # one operation (bilinear resizing is linear, so the order does not change the result
    # beyond rounding).
    x = (images.float().div_(255.0) - mean) / std
    if image_size is not None and image_size != x.shape[-1]:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    if x.shape[1] != in_channels:  # grayscale into a 3-channel model
        x = x.expand(-1, in_channels, -1, -1)
    return x
