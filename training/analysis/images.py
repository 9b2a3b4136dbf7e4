"""Decode a user's image file into the uint8 CHW tensor the eval preset expects.

torchvision's decoder does the common colour cases (JPEG incl. CMYK, PNG, GIF, WebP) with EXIF orientation
applied; Pillow does the rest with the policies serving applies to the same bytes, so a photo gets the same
answer locally and from TorchServe: transparency composited on white, 16-bit grayscale scaled by 1/257,
grayscale for 1-channel models made from RGB by Pillow (libjpeg's own gray output differs by up to ~10 levels),
BMP/TIFF and anything torchvision refuses converted by Pillow.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2 import functional as F

from training.errors import ConvserveError

MAX_PIXELS = 40_000_000  # decompression-bomb guard, the same default the model card carries
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WIDE_GRAY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _header(data: bytes, name: str) -> Image.Image:
    """Pillow reads only the header here: format, mode and size, checked before any pixel is decoded."""
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ConvserveError(f"cannot decode image {name}: not an image format that torchvision or PIL reads") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ConvserveError(f"cannot decode image {name}: {_first_line(exc)}") from None
    width, height = img.size
    if width * height > MAX_PIXELS:
        raise ConvserveError(f"image {name} is {width}x{height} px, over the {MAX_PIXELS} pixel limit")
    return img


def _needs_pillow(img: Image.Image, channels: int) -> bool:
    transparent = img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info)
    unusual = img.mode in _WIDE_GRAY_MODES or img.format not in ("JPEG", "PNG", "GIF", "WEBP")
    return transparent or unusual or (channels == 1 and img.mode != "L")


def _with_pillow(img: Image.Image, channels: int, name: str) -> torch.Tensor:
    try:
        img = ImageOps.exif_transpose(img)
        if img.mode in _WIDE_GRAY_MODES:
            gray = (np.clip(np.asarray(img).astype(np.int64), 0, 65535) / 257.0).round().astype(np.uint8)
            img = Image.fromarray(gray)
        elif img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        if channels == 3:
            img = img.convert("RGB")
        elif img.mode != "L":
            img = img.convert("RGB").convert("L")  # to RGB first, then to gray: as serving does
        array = np.asarray(img)
    except (OSError, ValueError, SyntaxError) as exc:
        raise ConvserveError(f"cannot decode image {name}: {_first_line(exc)}") from None
    tensor = torch.from_numpy(array.copy())
    return tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1).contiguous()


def decode_bytes(data: bytes, channels: int = 3, name: str = "image") -> torch.Tensor:
    """uint8 tensor of shape (channels, H, W); ``channels`` is the model's (1: grayscale-trained)."""
    if not data:
        raise ConvserveError(f"cannot decode image {name}: the file is empty")
    header = _header(data, name)
    if _needs_pillow(header, channels):
        return _with_pillow(header, channels, name)
    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    try:
        img = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=mode, apply_exif_orientation=True)
    except RuntimeError:
        return _with_pillow(header, channels, name)  # Pillow names the problem (truncated, corrupt) if it has one
    return img if img.dtype == torch.uint8 else F.to_dtype(img, torch.uint8, scale=True)


def read_image(path: Path, channels: int = 3) -> torch.Tensor:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConvserveError(f"cannot read image {path}: {exc.strerror or exc}") from None
    return decode_bytes(data, channels, str(path))
