"""Folder datasets read as they ship: Caltech101, ImageNet-style folders, Tiny-ImageNet-200."""

from __future__ import annotations

from pathlib import Path

from training.data.splits import RawSplits
from training.errors import ConvserveError


def load_caltech101(root: Path, seed: int) -> RawSplits:
    raise ConvserveError("caltech101 loader not implemented yet")


def load_imagefolder(root: Path, seed: int) -> RawSplits:
    raise ConvserveError("imagefolder loader not implemented yet")


def load_tiny_imagenet(root: Path, seed: int) -> RawSplits:
    raise ConvserveError("tiny-imagenet loader not implemented yet")
