"""Image files on disk as a dataset: listed up front (paths and labels only), decoded lazily to uint8 RGB.

What counts as an image: a file with an image extension (``IMAGE_SUFFIXES``, any case) whose name and folders
do not start with ``.``. Everything else (Tiny-ImageNet's ``*_boxes.txt``, ``.DS_Store``, ``Thumbs.db``,
READMEs) is not an image and is left out of the listing.

A listed file that cannot be decoded is an error, not a skip: ``ImageFiles`` raises a one-line
``ConvserveError`` naming the file when it is first read. Skipping would silently change the data set (and its
class balance), and finding bad files before training means decoding every image up front, minutes for an
ImageNet-sized folder.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from convserve.common.errors import ConvserveError, InputError, first_line
from convserve.common.files import read_image_bytes
from convserve.common.images import decode_array, decode_file

# the formats serving accepts (common/images.py), so a model never trains on what it could not be sent
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` and its sub-folders, sorted; hidden files and folders are skipped."""
    found = []
    for top, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(Path(top) / f for f in files if is_image_name(f))
    return sorted(found)


def class_folders(folder: Path) -> list[Path]:
    """Sub-folders of ``folder`` (one per class), sorted by name, hidden ones skipped."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def decode_rgb(path: str | Path) -> torch.Tensor:
    """Decode an image file to a uint8 3xHxW RGB tensor with the project's one decoder (common/images.py)."""
    return decode_file(path, channels=3)


def decode_rgb_view(path: str | Path, max_side: int) -> tuple[np.ndarray, int]:
    """An image as data-facts measurement sees it: (HxWx3 uint8 centre square, the file's shorter side).

    Decoded by ``decode_rgb``'s rules, cut to the centre square (what the eval crop keeps) and, when that is
    larger than ``max_side``, shrunk to ``max_side`` (antialiased; JPEGs are decoded at a reduced scale first).
    """
    data = read_image_bytes(path)
    try:
        short = min(Image.open(io.BytesIO(data)).size)  # header only; orientation keeps the shorter side
        pixels = decode_array(data, channels=3, draft_side=max_side).transpose(1, 2, 0)
    except InputError as exc:
        raise ConvserveError(f"cannot decode image {path}: {exc.message}") from None
    except Exception as exc:  # the header alone is unreadable: decode_array names the problem
        raise ConvserveError(f"cannot decode image {path}: {first_line(exc)}") from None
    return center_square(pixels, max_side), short


def center_square(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """The centre square of HxWxC uint8 pixels (offsets rounded as torchvision's CenterCrop), at most max_side."""
    h, w = pixels.shape[:2]
    side = min(h, w)
    top, left = round((h - side) / 2), round((w - side) / 2)
    square = pixels[top : top + side, left : left + side]
    if side > max_side:
        img = Image.fromarray(square[..., 0] if square.shape[2] == 1 else square)
        square = np.asarray(img.resize((max_side, max_side), Image.BILINEAR)).reshape(max_side, max_side, -1)
    return square


class ImageFiles(Dataset):
    """Image files with integer labels; ``__getitem__`` decodes one file to a uint8 3xHxW tensor."""

    def __init__(self, paths: Sequence[str | Path], labels: Sequence[int]):
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.paths = [str(p) for p in paths]  # str, not Path: cheaper to hold and to send to workers
        self.labels = [int(y) for y in labels]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return decode_rgb(self.paths[i]), self.labels[i]

    def targets(self) -> list[int]:
        return list(self.labels)

    def subset(self, indices: Sequence[int]) -> ImageFiles:
        return ImageFiles([self.paths[i] for i in indices], [self.labels[i] for i in indices])
