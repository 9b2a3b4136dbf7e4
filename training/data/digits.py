"""scikit-learn's bundled 1,797 real 8x8 handwritten digits (no download), seeded stratified split."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from convserve.training.data.splits import TensorImages

DIGIT_NAMES = [str(d) for d in range(10)]


def load_digit_splits(seed: int, val_fraction: float = 0.15, test_fraction: float = 0.15):
    """Return (train, val, test, class_names); images as uint8 1x8x8 tensors, 0..16 scaled to 0..255."""
    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    idx = np.arange(len(labels))
    rest, test = train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=seed)
    train, val = train_test_split(
        rest, test_size=val_fraction / (1 - test_fraction), stratify=labels[rest], random_state=seed
    )
    tensor = torch.from_numpy(images).unsqueeze(1)
    target = torch.from_numpy(labels)
    return (
        TensorImages(tensor[train], target[train]),
        TensorImages(tensor[val], target[val]),
        TensorImages(tensor[test], target[test]),
        list(DIGIT_NAMES),
    )
