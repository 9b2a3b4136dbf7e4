"""Decoded images → one normalised float batch, reproducing training's EvalPreset from the card's facts.

Per image (sizes differ): resize the shorter side to ``resize_size`` (antialiased) and centre-crop
``input_size`` on uint8, exactly as EvalPreset does; then the batch is stacked once and scaled, expanded to
3 channels and normalised in one vectorised step.
"""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from export.artifact import PreprocessingCard

_MODES = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


def resize_and_crop(image: torch.Tensor, pre: PreprocessingCard) -> torch.Tensor:
    """uint8 (C, H, W) → uint8 (C, input_size, input_size)."""
    resized = F.resize(image, [pre.resize_size], interpolation=_MODES[pre.interpolation], antialias=True)
    return F.center_crop(resized, [pre.input_size, pre.input_size])


def prepare_batch(images: list[torch.Tensor], pre: PreprocessingCard) -> torch.Tensor:
    """List of uint8 (C, H, W) images, all with the card's channel count → float32 (N, 3, S, S)."""
    batch = torch.stack([resize_and_crop(img, pre) for img in images])
    if batch.shape[1] == 1:  # grayscale-trained models take the channel repeated, as in training
        batch = batch.expand(-1, 3, -1, -1)
    # torchvision's own ops, so the numbers are EvalPreset's to the last bit
    batch = F.to_dtype(batch, torch.float32, scale=True)
    return F.normalize(batch, list(pre.mean), list(pre.std))
