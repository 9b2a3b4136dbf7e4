"""Decoding untrusted requests: payload forms → bytes → uint8 CHW tensors, with real files in real formats."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from convserve.common.errors import InputError
from convserve.common.images import decode_image
from convserve.serving.payload import image_bytes


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A real photo, cropped to a non-square size so orientation mistakes show."""
    from skimage import data

    return data.chelsea()[:200, :300]  # (200, 300, 3) uint8


def encode(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def as_hwc(tensor) -> np.ndarray:
    return tensor.permute(1, 2, 0).numpy()


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def expect_error(data: bytes, status: int, words: str, **kwargs) -> InputError:
    with pytest.raises(InputError) as info:
        decode_image(data, **kwargs)
    assert info.value.status == status
    assert words in info.value.message
    return info.value


# --- formats -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_lossless_formats_decode_exactly(photo, fmt):
    tensor = decode_image(encode(Image.fromarray(photo), fmt))
    assert tensor.dtype.is_floating_point is False and tensor.shape == (3, 200, 300)
    assert np.array_equal(as_hwc(tensor), photo)


@pytest.mark.parametrize(("fmt", "options"), [("JPEG", {"quality": 95}), ("WEBP", {"quality": 95})])
def test_lossy_formats_decode_close_to_the_original(photo, fmt, options):
    tensor = decode_image(encode(Image.fromarray(photo), fmt, **options))
    assert tensor.shape == (3, 200, 300)
    assert mean_abs_diff(as_hwc(tensor), photo) < 4


def test_lossless_webp(photo):
    tensor = decode_image(encode(Image.fromarray(photo), "WEBP", lossless=True))
    assert np.array_equal(as_hwc(tensor), photo)


def test_animated_gif_gives_its_first_frame(photo):
    frames = [Image.fromarray(photo).quantize(64), Image.fromarray(255 - photo).quantize(64)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)
    tensor = decode_image(data)
    assert tensor.shape == (3, 200, 300)
    assert np.array_equal(as_hwc(tensor), np.asarray(frames[0].convert("RGB")))


def test_multipage_tiff_gives_its_first_page(photo):
    pages = [Image.fromarray(photo), Image.fromarray(photo[::-1].copy())]
    data = encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    assert np.array_equal(as_hwc(decode_image(data)), photo)


# --- modes ---------------------------------------------------------------------------------------------------


def test_exif_orientation_is_applied(photo):
    """A phone stores the sensor's pixels and says "rotate 90° clockwise to view" (orientation 6)."""
    stored = Image.fromarray(photo).transpose(Image.Transpose.ROTATE_90)  # what the sensor wrote: 300 x 200
    exif = Image.Exif()
    exif[0x0112] = 6
    tensor = decode_image(encode(stored, "JPEG", quality=95, exif=exif.tobytes()))
    assert tensor.shape == (3, 200, 300)  # upright again
    assert mean_abs_diff(as_hwc(tensor), photo) < 4


def test_cmyk_jpeg_becomes_rgb(photo):
    cmyk = Image.fromarray(photo).convert("CMYK")
    tensor = decode_image(encode(cmyk, "JPEG", quality=95))
    assert tensor.shape == (3, 200, 300)
    assert mean_abs_diff(as_hwc(tensor), np.asarray(cmyk.convert("RGB"))) < 4


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16bit_grayscale_is_scaled_not_clipped(fmt):
    values = np.arange(0, 256, dtype=np.uint16).reshape(16, 16)
    wide = Image.fromarray(values * 257)  # the full 16-bit range; Pillow's convert("L") would clip it to 255
    assert wide.mode == "I;16"
    rgb = decode_image(encode(wide, fmt))
    assert rgb.shape == (3, 16, 16)
    assert np.array_equal(rgb[0].numpy(), values.astype(np.uint8))
    assert np.array_equal(decode_image(encode(wide, fmt), channels=1)[0].numpy(), values.astype(np.uint8))


def test_palette_png(photo):
    palette = Image.fromarray(photo).quantize(32)
    tensor = decode_image(encode(palette, "PNG"))
    assert np.array_equal(as_hwc(tensor), np.asarray(palette.convert("RGB")))


def test_palette_transparency_composites_on_white(photo):
    palette = Image.fromarray(photo).quantize(32)
    data = encode(palette, "PNG", transparency=0)  # palette entry 0 is transparent
    tensor = as_hwc(decode_image(data))
    index = np.asarray(palette)
    assert (tensor[index == 0] == 255).all()
    assert np.array_equal(tensor[index != 0], np.asarray(palette.convert("RGB"))[index != 0])


def test_rgba_composites_on_white(photo):
    alpha = np.full(photo.shape[:2], 255, np.uint8)
    alpha[:, :100] = 0  # transparent left third
    alpha[:, 100:200] = 128  # half-transparent middle
    rgba = Image.fromarray(np.dstack([photo, alpha]))
    tensor = as_hwc(decode_image(encode(rgba, "PNG")))
    assert (tensor[:, :100] == 255).all()
    assert np.array_equal(tensor[:, 200:], photo[:, 200:])
    expected = (photo[:, 100:200].astype(float) * 128 + 255 * 127) / 255
    assert np.abs(tensor[:, 100:200] - expected).max() <= 1


def test_grayscale_alpha(photo):
    gray = np.asarray(Image.fromarray(photo).convert("L"))
    la = Image.fromarray(np.dstack([gray, np.zeros_like(gray)]), mode="LA")
    assert (decode_image(encode(la, "PNG")) == 255).all()


def test_bilevel_and_grayscale_images_give_three_equal_channels(photo):
    gray = Image.fromarray(photo).convert("L")
    for img in (gray, gray.convert("1")):
        tensor = decode_image(encode(img, "PNG"))
        assert tensor.shape == (3, 200, 300)
        assert np.array_equal(tensor[0], tensor[1]) and np.array_equal(tensor[1], tensor[2])
        assert np.array_equal(tensor[0].numpy(), np.asarray(img.convert("L")))


def test_grayscale_models_get_one_luma_channel(photo):
    tensor = decode_image(encode(Image.fromarray(photo), "PNG"), channels=1)
    assert tensor.shape == (1, 200, 300)
    assert np.array_equal(tensor[0].numpy(), np.asarray(Image.fromarray(photo).convert("L")))


# --- bad images ------------------------------------------------------------------------------------------------


def test_empty_bytes_are_400():
    expect_error(b"", 400, "empty")


@pytest.mark.parametrize("data", [b"hello, this is text", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", bytes(range(256)) * 4])
def test_not_an_image_is_415(data):
    expect_error(data, 415, "supported")


@pytest.mark.parametrize(
    ("data", "fmt"),
    [(b"GIF89a broken", "GIF"), (b"\x89PNG\r\n\x1a\n" + bytes(30), "PNG"), (b"RIFF\x10\0\0\0WEBPVP8 ", "WEBP")],
)
def test_supported_signature_with_a_broken_header_is_400(data, fmt):
    expect_error(data, 400, f"corrupt {fmt}")


def test_unsupported_image_format_is_415(photo):
    expect_error(encode(Image.fromarray(photo), "PPM"), 415, "unsupported image format PPM")


def test_floating_point_tiff_is_415():
    img = Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8), mode="F")
    expect_error(encode(img, "TIFF"), 415, "floating-point")


@pytest.mark.parametrize(("fmt", "keep"), [("JPEG", 0.5), ("PNG", 0.5), ("WEBP", 0.5), ("GIF", 0.5), ("BMP", 0.6)])
def test_truncated_images_are_400_never_padded(photo, fmt, keep):
    img = Image.fromarray(photo)
    data = encode(img.quantize(64) if fmt == "GIF" else img, fmt)
    error = expect_error(data[: int(len(data) * keep)], 400, "")
    assert fmt in error.message or "corrupt" in error.message


def test_corrupt_png_data_is_400(photo):
    data = bytearray(encode(Image.fromarray(photo), "PNG"))
    data[200:400] = bytes(200)  # inside the compressed pixel data
    expect_error(bytes(data), 400, "PNG")


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that claims width x height pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_pixel_limit_is_checked_before_decoding():
    expect_error(png_header_only(5000, 5000), 413, "over the limit of 1000000", max_pixels=1_000_000)


def test_huge_header_is_413_even_past_pillows_own_guard():
    expect_error(png_header_only(40_000, 40_000), 413, "pixels")


def test_real_bomb_compressed_small(photo):
    big = encode(Image.new("L", (4000, 3000)), "PNG")  # 12 Mpx of zeros in a few KB
    assert len(big) < 100_000
    expect_error(big, 413, "4000x3000", max_pixels=10_000_000)
    assert decode_image(big, max_pixels=12_000_000).shape == (3, 3000, 4000)


# --- request payloads --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def png(photo) -> bytes:
    return encode(Image.fromarray(photo), "PNG")


def test_raw_body(png):
    assert image_bytes({"body": png}) == png
    assert image_bytes({"body": bytearray(png)}) == png


@pytest.mark.parametrize("field", ["data", "image", "file", "upload"])
def test_multipart_field(png, field):
    assert image_bytes({field: png}) == png


def test_multipart_with_other_fields_uses_the_image_field(png):
    assert image_bytes({"data": png, "note": "hello"}) == png
    with pytest.raises(InputError, match="no image field"):
        image_bytes({"a": png, "b": png})


@pytest.mark.parametrize("key", ["image", "data", "b64"])
def test_json_base64(png, key):
    assert image_bytes({"body": {key: base64.b64encode(png).decode()}}) == png


def test_base64_variants(png):
    text = base64.b64encode(png).decode()
    assert image_bytes({"body": {"image": "data:image/png;base64," + text}}) == png
    assert image_bytes({"body": {"image": base64.urlsafe_b64encode(png).decode().rstrip("=")}}) == png
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    assert image_bytes({"body": {"image": wrapped}}) == png
    assert image_bytes({"image": text.replace("+", " ")}) == png  # a form field: its '+' arrive as spaces


def test_base64_text_arriving_as_bytes(png):
    text = base64.b64encode(png)
    assert image_bytes({"image": text.replace(b"+", b" ")}) == png  # form field, '+' decoded to ' '
    assert image_bytes({"body": b"data:image/png;base64," + text + b"\n"}) == png
    assert image_bytes({"body": png}) == png  # real image bytes are never mistaken for base64


def test_json_body_the_worker_did_not_parse(png):
    raw = ('{"image": "' + base64.b64encode(png).decode() + '"}').encode()
    assert image_bytes({"body": raw}) == png


@pytest.mark.parametrize(
    ("request_", "status", "words"),
    [
        (None, 400, "empty request"),
        ({}, 400, "empty request"),
        ({"body": b""}, 400, "empty body"),
        ({"body": "just some text"}, 415, "text body"),
        ({"body": {"picture": "abc"}}, 400, 'no "image" field'),
        ({"body": {"image": 42}}, 400, "base64 string"),
        ({"body": {"image": "!!!not base64!!!"}}, 400, "not valid base64"),
        ({"body": {"image": ""}}, 400, "empty"),
        ({"body": [1, 2, 3]}, 400, "must be an object"),
        ({"body": b"{not json"}, 400, "not valid JSON"),
    ],
)
def test_bad_payloads(request_, status, words):
    with pytest.raises(InputError) as info:
        image_bytes(request_)
    assert info.value.status == status
    assert words in info.value.message
