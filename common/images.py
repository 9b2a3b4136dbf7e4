"""The one image decoder: untrusted bytes → uint8 CHW tensor (1 or 3 channels) with Pillow, or an InputError
naming the problem. Uploads to the server, training's image files, the parity check's images and a user's local
photos all go through ``decode_image``, so a model sees the same pixels in training, in checks and in production.

Policies (the README repeats them):
- Formats: JPEG (and MPO, multi-picture JPEG from phones), PNG, WebP, BMP, GIF, TIFF; animated GIF/WebP and
  multi-page TIFF give their first frame. Bytes in any other format (or no image at all) are a 415;
  a supported format whose data is broken is a 400.
- Transparency (RGBA, LA, PA, palette with a transparent colour) is composited on white: the picture a person
  sees in a viewer, and no random colours from fully transparent pixels.
- CMYK → RGB with Pillow's conversion (no ICC colour management); 16-bit grayscale is scaled to 8 bits
  (value / 257), not clipped as Pillow's own ``convert("L")`` would; Pillow reads 16-bit RGB PNGs as 8-bit RGB.
- EXIF orientation is applied, so a phone photo is classified upright.
- Decompression bombs: the pixel count from the header is checked against ``max_pixels`` (the card's
  ``preprocessing.max_pixels``) before any pixel is decoded → 413. Pillow's own guard (2 x
  ``Image.MAX_IMAGE_PIXELS``) also maps to 413.
- Truncated or corrupt data is a 400: truncated images are never padded (``LOAD_TRUNCATED_IMAGES`` stays off).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from convserve.common.errors import ConvserveError, InputError, first_line
from convserve.common.files import read_image_bytes

SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "WEBP", "BMP", "DIB", "GIF", "TIFF"})
SUPPORTED_NAMES = "JPEG, PNG, WebP, BMP, GIF, TIFF"
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WIDE_GRAY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


MAX_PIXELS = 40_000_000  # the default of the preprocessing spec's ``max_pixels``


def decode_image(
    data: bytes, channels: int = 3, max_pixels: int = MAX_PIXELS, draft_side: int | None = None
) -> torch.Tensor:
    """Decode one encoded image into a uint8 tensor of shape (channels, H, W); channels is 1 or 3.

    ``draft_side``: let a JPEG decode at a reduced scale that still leaves each side at least that long
    (cheap sampling; changes pixels, so never on the path a model is evaluated or served on).
    """
    return torch.from_numpy(decode_array(data, channels, max_pixels, draft_side))


def decode_array(
    data: bytes, channels: int = 3, max_pixels: int = MAX_PIXELS, draft_side: int | None = None
) -> np.ndarray:
    """``decode_image`` as a writable, contiguous uint8 numpy array (channels, H, W)."""
    if not data:
        raise InputError("empty image: the request carried no image bytes")
    img = _open(data, max_pixels, draft_side)
    try:
        img = _upright(img)
        array = _to_gray(img) if channels == 1 else _to_rgb(img)
    except InputError:
        raise
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ValueError...) on hostile data
        raise InputError(f"corrupt {img.format} image: {first_line(exc)}") from None
    chw = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    # one numpy copy: writable (Pillow's arrays are read-only) and contiguous; torch's permute().contiguous()
    # is many times slower on a CPU shared with other work
    return np.array(chw, order="C", copy=True)


def decode_file(path: Path | str, channels: int = 3, draft_side: int | None = None) -> torch.Tensor:
    """``decode_image`` for a file on disk; problems are one line naming the file."""
    data = read_image_bytes(path)
    try:
        return decode_image(data, channels, draft_side=draft_side)
    except InputError as exc:
        raise ConvserveError(f"cannot decode image {path}: {exc.message}") from None


def _open(data: bytes, max_pixels: int, draft_side: int | None = None) -> Image.Image:
    """Identify the format and check the pixel count before decoding; then decode, refusing truncation."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit below decides
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise InputError(f"image has too many pixels: {first_line(exc)}", 413) from None
    except UnidentifiedImageError:
        claimed = sniff_format(data)
        if claimed:  # the magic bytes of a format we take, but Pillow cannot parse the header: damaged
            raise InputError(f"corrupt {claimed} image: its header cannot be read") from None
        raise InputError(f"not an image in a supported format (supported: {SUPPORTED_NAMES})", 415) from None
    except Exception as exc:  # a recognised header with broken fields
        kind = f"{sniff_format(data)} image" if sniff_format(data) else "image"
        raise InputError(f"corrupt {kind}: {first_line(exc)}") from None
    if img.format not in SUPPORTED_FORMATS:
        raise InputError(f"unsupported image format {img.format} (supported: {SUPPORTED_NAMES})", 415)
    width, height = img.size
    if width < 1 or height < 1:
        raise InputError(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise InputError(f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}", 413)
    try:
        if draft_side is not None and img.format == "JPEG":
            img.draft(None, (draft_side, draft_side))
        img.load()
    except Exception as exc:
        raise InputError(f"corrupt or truncated {img.format} image: {first_line(exc)}") from None
    return img


def sniff_format(data: bytes) -> str | None:
    """The supported format whose signature ``data`` starts with, if any."""
    if data[:12].startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in _MAGIC if data.startswith(magic)), None)


def _upright(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block costs the orientation, not the answer
        return img


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode == "RGB":
        return np.asarray(img)
    if img.mode in _WIDE_GRAY_MODES:
        return np.repeat(_wide_gray_to_8bit(img)[..., None], 3, axis=2)
    if img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
        return np.asarray(_on_white(img))
    if img.mode == "F":
        raise InputError("floating-point images are not supported; send 8- or 16-bit images", 415)
    return np.asarray(img.convert("RGB"))  # L, 1, P, CMYK, YCbCr...


def _to_gray(img: Image.Image) -> np.ndarray:
    if img.mode == "L":
        return np.asarray(img)
    if img.mode in _WIDE_GRAY_MODES:
        return _wide_gray_to_8bit(img)
    return np.asarray(Image.fromarray(_to_rgb(img)).convert("L"))


def _on_white(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _wide_gray_to_8bit(img: Image.Image) -> np.ndarray:
    """16-bit (or 32-bit integer holding 16-bit) grayscale → 8 bits by scaling the full 16-bit range."""
    values = np.asarray(img).astype(np.int64)
    return (np.clip(values, 0, 65535) / 257.0).round().astype(np.uint8)
