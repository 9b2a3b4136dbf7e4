"""MNIST, Fashion-MNIST and CIFAR-10 through torchvision, with a clear error when files are missing offline."""

from __future__ import annotations

from pathlib import Path

from training.data.splits import RawSplits
from training.errors import ConvserveError


def load_mnist(root: Path, download: bool, seed: int, fashion: bool = False) -> RawSplits:
    raise ConvserveError("mnist loader not implemented yet")


def load_cifar10(root: Path, download: bool, seed: int) -> RawSplits:
    raise ConvserveError("cifar10 loader not implemented yet")
