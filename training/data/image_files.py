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
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from training.errors import ConvserveError

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WIDE_GRAY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
# the formats serving accepts (serving/images.py), so a model never trains on what it could not be sent
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


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_image_bytes(path: str | Path) -> bytes:
    """An image file's bytes; a missing, unreadable or empty file is a one-line ConvserveError."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConvserveError(f"cannot read image {path}: {exc.strerror or exc}") from None
    if not data:
        raise ConvserveError(f"cannot decode image {path}: the file is empty")
    return data


def _decode(path: str | Path, draft_side: int | None = None) -> tuple[np.ndarray, int]:
    """(HxWx3 uint8 pixels, the file's shorter side); ``draft_side``: let JPEGs decode at a reduced scale."""
    data = read_image_bytes(path)
    try:
        with Image.open(io.BytesIO(data)) as img:
            short = min(img.size)  # orientation does not change the shorter side
            if draft_side is not None and img.format == "JPEG":
                img.draft(None, (draft_side, draft_side))  # still at least draft_side on each side
            return _rgb_pixels(_upright(img)), short
    except UnidentifiedImageError:
        raise ConvserveError(f"cannot decode image {path}: not an image format Pillow reads") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ConvserveError(f"cannot decode image {path}: {_reason(exc)}") from None


def decode_rgb(path: str | Path) -> torch.Tensor:
    """Decode an image file to a uint8 3xHxW RGB tensor with serving's policies (serving/images.py).

    The same decoder (Pillow) and the same rules as for uploads, so a model sees the same pixels in training
    as in production: EXIF orientation applied, transparency composited on white, 16-bit gray scaled to 8 bits,
    grayscale and CMYK converted by Pillow, the first frame of an animation. (torchvision.io's decoders are
    deprecated since torchvision 0.29.)
    """
    pixels, _ = _decode(path)
    # numpy's transposing copy: 15x faster than torch's permute().contiguous() on a busy CPU, and writable
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


def decode_rgb_view(path: str | Path, max_side: int) -> tuple[np.ndarray, int]:
    """An image as data-facts measurement sees it: (HxWx3 uint8 centre square, the file's shorter side).

    Decoded by ``decode_rgb``'s rules, cut to the centre square (what the eval crop keeps) and, when that is
    larger than ``max_side``, shrunk to ``max_side`` (antialiased; JPEGs are decoded at a reduced scale first).
    """
    pixels, short = _decode(path, draft_side=max_side)
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


def _upright(img: Image.Image) -> Image.Image:
    img.load()  # decode errors (truncation) surface here, not as a lost orientation below
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block costs the orientation, as in serving
        return img


def _rgb_pixels(img: Image.Image) -> np.ndarray:
    if img.mode in _WIDE_GRAY_MODES:
        gray = (np.clip(np.asarray(img).astype(np.int64), 0, 65535) / 257.0).round().astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


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
