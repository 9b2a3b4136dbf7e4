"""Transforms presets (torchvision transforms v2) for uint8 CHW image tensors with 1 or 3 channels."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as nn_functional
from torch.utils.data import default_collate
from torchvision.transforms import v2

from convserve.common.preprocessing import Preprocessing, prepare_image

CROP_RATIO = 0.875  # eval resize = crop / 0.875, as in torchvision's ImageNet references


def eval_resize_size(policy: str, input_size: int) -> int:
    return round(input_size / CROP_RATIO) if policy == "natural" else input_size


class _ToRGB(torch.nn.Module):
    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return img.expand(3, -1, -1) if img.shape[-3] == 1 else img


def _finish(pre: Preprocessing) -> list:
    return [_ToRGB(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre.mean, pre.std)]


class EvalPreset:
    """Resize (shorter side), centre-crop, scale and normalise: common/preprocessing.py, the code serving runs."""

    def __init__(self, pre: Preprocessing):
        self.pre = pre

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return prepare_image(img, self.pre)


class TrainPreset:
    def __init__(self, pre: Preprocessing, policy: str, augment: bool = True):
        size = pre.input_size
        if not augment:
            steps = [EvalPreset(pre)]  # already scaled and normalised
        elif policy == "natural":
            steps = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
        elif policy == "digits":  # the affine jitter runs on whole batches: BatchAffine
            steps = [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
        else:
            steps = [
                v2.Resize(size, antialias=True),
                v2.CenterCrop(size),
                v2.RandomCrop(size, padding=max(1, size // 8)),
                v2.RandomHorizontalFlip(),
            ]
        self.transforms = v2.Compose(steps if not augment else [*steps, *_finish(pre)])
        # applied by the loader to each collated batch (see BatchCollate); None: nothing batch-wise
        self.batch_transform = BatchAffine(pre, 10.0, 0.1, (0.9, 1.1)) if augment and policy == "digits" else None

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return self.transforms(img)


class BatchAffine:
    """Random rotation (±degrees), translation (±fraction of the side) and scale per image of a normalised
    square batch, in one affine_grid + grid_sample on the batch's device instead of a RandomAffine call per
    image. Uncovered corners get the normalised value of black."""

    def __init__(
        self, pre: Preprocessing, degrees: float, translate: float, scale: tuple[float, float], mode: str = "nearest"
    ):
        # nearest, as torchvision's RandomAffine: bilinear scored lower over 3 seeds
        self.radians, self.translate, self.scale, self.mode = math.radians(degrees), translate, scale, mode
        mean, std = torch.tensor(pre.mean), torch.tensor(pre.std)
        self.fill = (-mean / std).view(1, -1, 1, 1)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        n, device = batch.shape[0], batch.device
        angle = (torch.rand(n, device=device) * 2 - 1) * self.radians
        lo, hi = self.scale
        zoom = lo + torch.rand(n, device=device) * (hi - lo)
        shift = (torch.rand(n, 2, device=device) * 2 - 1) * (2 * self.translate)  # grid coordinates span [-1, 1]
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom  # theta maps output to input points
        theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        grid = nn_functional.affine_grid(theta, list(batch.shape), align_corners=False)
        fill = self.fill.to(device=device, dtype=batch.dtype)
        # grid_sample pads with zeros: shift so that "zero" is black, then back (sampling weights sum to 1)
        return nn_functional.grid_sample(batch - fill, grid, mode=self.mode, align_corners=False) + fill


class BatchCollate:
    """collate_fn: the default collation, then a batch transform on the images (picklable for workers)."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, samples: list) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = default_collate(samples)
        return self.transform(images), labels
