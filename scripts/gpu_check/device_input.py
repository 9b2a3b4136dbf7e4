"""An input pipeline that lives on the device: uint8 images resident there, batches drawn from a permutation
made there, and training/data's "small" augmentation policy (TrainPreset: resize, pad-crop, flip; then scale
and normalise) run on whole batches there. Nothing crosses the host-device link per step."""

from __future__ import annotations

import torch
from torch.nn import functional as nn_functional

from convserve.common.preprocessing import Preprocessing


class ResidentImages:
    """uint8 (N, C, H, W) images and labels copied to ``device`` once; ``next()`` gives the next batch of a
    fresh random permutation each epoch (drop_last, as the trainer's loader)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, device: torch.device, batch: int):
        if len(images) < batch:
            raise ValueError(f"{len(images)} images cannot fill a batch of {batch}")
        self.images, self.labels = images.to(device), labels.to(device)
        self.batch, self.device = batch, device
        self.order = torch.randperm(len(images), device=device)
        self.position = 0

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.position + self.batch > len(self.order):
            self.order = torch.randperm(len(self.order), device=self.device)
            self.position = 0
        index = self.order[self.position : self.position + self.batch]
        self.position += self.batch
        return self.images[index], self.labels[index]


def pad_crop_flip(batch: torch.Tensor, pad: int) -> torch.Tensor:
    """Per image: a random crop of the zero-padded image (RandomCrop(padding=pad)) and a coin-flip horizontal
    mirror, as one gather over the batch."""
    n, c, h, w = batch.shape
    device = batch.device
    padded = nn_functional.pad(batch, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1), device=device)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), device=device)
    rows = torch.arange(h, device=device) + dy  # (n, h)
    cols = torch.arange(w, device=device) + dx  # (n, w)
    flip = torch.rand(n, 1, device=device) < 0.5
    cols = torch.where(flip, cols.flip(1), cols)
    images = torch.arange(n, device=device).view(n, 1, 1, 1)
    channels = torch.arange(c, device=device).view(1, c, 1, 1)
    return padded[images, channels, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


class DeviceAugment:
    """TrainPreset's "small" policy for uint8 batches on the device: resize to the input size (bilinear; an
    upsample, so antialiasing changes nothing), RandomCrop with padding size // 8, horizontal flip, then
    scale to [0, 1] and normalise with the preprocessing's mean and std; channels-last when asked."""

    def __init__(self, pre: Preprocessing, device: torch.device, channels_last: bool = True):
        self.size, self.pad = pre.input_size, max(1, pre.input_size // 8)
        self.mean = torch.tensor(pre.mean, device=device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(pre.std, device=device).view(1, -1, 1, 1) * 255.0
        self.channels_last = channels_last

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.float()
        if x.shape[-2:] != (self.size, self.size):
            x = nn_functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = (pad_crop_flip(x, self.pad) - self.mean) / self.std  # padding is 0 = black before normalising
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
