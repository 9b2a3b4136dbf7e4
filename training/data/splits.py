"""Small dataset building blocks shared by the loaders: in-memory images, transforms, seeded splits."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset


class TensorImages(Dataset):
    """uint8 CHW images held in memory with integer labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.images[i], int(self.labels[i])

    def targets(self) -> list[int]:
        return self.labels.tolist()


class Transformed(Dataset):
    """Apply a transform to the image of another dataset's (image, label) pairs."""

    def __init__(self, base: Dataset, transform: Callable[[torch.Tensor], torch.Tensor]):
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img, label = self.base[i]
        return self.transform(img), label


def stratified_split(labels: Sequence[int], fractions: Sequence[float], seed: int) -> list[list[int]]:
    """Split indices per class by ``fractions`` (summing to 1), seeded; every part gets each class if it can."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    parts: list[list[int]] = [[] for _ in fractions]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        bounds = np.round(np.cumsum(fractions)[:-1] * len(idx)).astype(int)
        for part, chunk in zip(parts, np.split(idx, bounds), strict=True):
            part.extend(chunk.tolist())
    return [sorted(p) for p in parts]


def limit_per_class(labels: Sequence[int], limit: int) -> list[int]:
    """Keep the first ``limit`` indices of each class (deterministic, order preserved)."""
    seen: dict[int, int] = {}
    keep = []
    for i, y in enumerate(labels):
        if seen.get(y, 0) < limit:
            seen[y] = seen.get(y, 0) + 1
            keep.append(i)
    return keep


class RawSplits:
    """What every loader returns: datasets of (uint8 CHW tensor, label) and the class names by index."""

    def __init__(self, train: Dataset, val: Dataset, test: Dataset | None, class_names: list[str]):
        self.train, self.val, self.test, self.class_names = train, val, test, class_names
