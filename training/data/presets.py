"""Transforms presets (torchvision transforms v2) for uint8 CHW image tensors with 1 or 3 channels."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from training.checkpoint import Preprocessing

CROP_RATIO = 0.875  # eval resize = crop / 0.875, as in torchvision's ImageNet references


def eval_resize_size(policy: str, input_size: int) -> int:
    return round(input_size / CROP_RATIO) if policy == "natural" else input_size


class _ToRGB(torch.nn.Module):
    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return img.expand(3, -1, -1) if img.shape[-3] == 1 else img


def _finish(pre: Preprocessing) -> list:
    return [_ToRGB(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre.mean, pre.std)]


class EvalPreset:
    """Resize (shorter side) then centre-crop; exactly what export and serving reproduce from the card."""

    def __init__(self, pre: Preprocessing):
        self.transforms = v2.Compose(
            [
                v2.Resize(pre.resize_size, antialias=True),
                v2.CenterCrop(pre.input_size),
                *_finish(pre),
            ]
        )

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return self.transforms(img)


class TrainPreset:
    def __init__(self, pre: Preprocessing, policy: str, augment: bool = True):
        size = pre.input_size
        if not augment:
            steps = [v2.Resize(pre.resize_size, antialias=True), v2.CenterCrop(size)]
        elif policy == "natural":
            steps = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
        elif policy == "digits":
            steps = [
                v2.Resize(size, antialias=True),
                v2.CenterCrop(size),
                v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)),
            ]
        else:
            steps = [
                v2.Resize(size, antialias=True),
                v2.CenterCrop(size),
                v2.RandomCrop(size, padding=max(1, size // 8)),
                v2.RandomHorizontalFlip(),
            ]
        self.transforms = v2.Compose([*steps, *_finish(pre)])

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return self.transforms(img)
