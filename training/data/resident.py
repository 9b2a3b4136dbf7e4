"""Datasets small enough to live where the model trains (digits, MNIST, Fashion-MNIST, CIFAR-10): their uint8
images are copied to the training device once, each epoch's order is drawn there, and every batch is resized,
cropped, flipped and normalised as a whole there by the same code on a CPU or a GPU. Nothing crosses the host-
device link per step, and no worker process decodes or augments one image at a time."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.nn import functional as nn_functional
from torch.utils.data import Dataset

from convserve.common.preprocessing import Preprocessing
from convserve.training.data.presets import BatchAffine
from convserve.training.engine.distributed import DistInfo

RESIDENT = frozenset({"digits", "mnist", "fashion-mnist", "cifar10"})
POLICIES = ("digits", "small")  # the train presets this path reproduces (TrainPreset's, on whole batches)


def pad_crop_flip(batch: torch.Tensor, pad: int) -> torch.Tensor:
    """Per image: a random crop of the zero-padded image (RandomCrop(padding=pad)) and a coin-flip horizontal
    mirror, as one gather over the batch."""
    n, c, h, w = batch.shape
    device = batch.device
    padded = nn_functional.pad(batch, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n, 1), device=device)
    dx = torch.randint(0, 2 * pad + 1, (n, 1), device=device)
    rows = torch.arange(h, device=device) + dy
    cols = torch.arange(w, device=device) + dx
    flip = torch.rand(n, 1, device=device) < 0.5
    cols = torch.where(flip, cols.flip(1), cols)
    images = torch.arange(n, device=device).view(n, 1, 1, 1)
    channels = torch.arange(c, device=device).view(1, c, 1, 1)
    return padded[images, channels, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


class BatchTrainPreset:
    """TrainPreset's "digits" and "small" policies for uint8 (N, C, H, W) batches: resize to the input size
    (bilinear with antialias, as v2.Resize), for "small" a RandomCrop with padding size // 8 and a horizontal
    flip, then grey to RGB, scale to [0, 1] and normalise; for "digits" the affine jitter (BatchAffine) last."""

    def __init__(self, pre: Preprocessing, policy: str, device: torch.device):
        if policy not in POLICIES:
            raise ValueError(f"no batch preset for the {policy!r} policy")
        self.size, self.policy = pre.input_size, policy
        self.mean = torch.tensor(pre.mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(pre.std, device=device).view(1, -1, 1, 1)
        self.affine = BatchAffine(pre, 10.0, 0.1, (0.9, 1.1)) if policy == "digits" else None

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.float()
        if x.shape[-2:] != (self.size, self.size):
            x = nn_functional.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True)
        if self.policy == "small":
            x = pad_crop_flip(x, max(1, self.size // 8))  # padding is 0: black, as RandomCrop pads uint8
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x / 255.0 - self.mean) / self.std
        return self.affine(x) if self.affine is not None else x


def stack_split(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """A dataset of (uint8 CHW image, label) pairs as one uint8 (N, C, H, W) tensor and an int64 label tensor."""
    images, labels = zip(*(ds[i] for i in range(len(ds))), strict=True)
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


class ResidentLoader:
    """Batches of a resident training split, in an order drawn for each epoch (``set_epoch``) from the run's
    seed: every rank draws the same permutation and takes its own shard of it, as DistributedSampler does."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        transform: BatchTrainPreset,
        device: torch.device,
        info: DistInfo = DistInfo(),
        drop_last: bool = False,
    ):
        self.images, self.labels = images.to(device), labels.to(device)
        self.batch_size, self.transform, self.device, self.info = batch_size, transform, device, info
        self.per_rank = math.ceil(len(labels) / info.world_size)
        self.drop_last = drop_last
        self.order = torch.arange(self.per_rank, device=device)

    def set_epoch(self, seed: int) -> None:
        """This epoch's order (``seed``: derived from the run's seed and the epoch)."""
        order = torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(seed))
        if self.info.enabled:  # pad by wrapping around, as DistributedSampler, so every rank has as many
            order = torch.cat([order, order[: self.per_rank * self.info.world_size - len(order)]])
            order = order[self.info.rank :: self.info.world_size]
        self.order = order.to(self.device)

    def __len__(self) -> int:
        n = len(self.order)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for k in range(len(self)):
            index = self.order[k * self.batch_size : (k + 1) * self.batch_size]
            yield self.transform(self.images[index]), self.labels[index]
