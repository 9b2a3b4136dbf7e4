"""The preprocessing spec (written once by training into the checkpoint, copied into the model card) and the one
eval transform that applies it: training's evaluation, the export check and serving all call ``prepare_batch``.

Per image (sizes differ): resize the shorter side to ``resize_size`` (antialiased) and centre-crop
``input_size`` on uint8, as EvalPreset does; then the batch is stacked once and scaled, expanded to 3
channels and normalised in one vectorised step.

Plain torch ops, no torchvision: TorchServe's worker imports torch anyway, but torchvision would add ~170 MB
to every ONNX worker. The ops are the ones torchvision v2 runs for uint8 tensors on the CPU (the same
``interpolate`` call, output-size rule, crop anchor and scaling), and a unit test holds them equal to
torchvision's ``resize``/``center_crop``/``to_dtype``/``normalize`` bit for bit.
"""

from __future__ import annotations

import platform
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.nn.functional import interpolate

from convserve.common.errors import ConvserveError

_MODES = ("bilinear", "bicubic", "nearest")


class Preprocessing(BaseModel):
    """What a consumer must do to an image before the model sees it."""

    model_config = ConfigDict(extra="forbid")

    input_size: int = Field(ge=8)
    resize_size: int = Field(ge=8)  # shorter side resized to this, then a centre crop of input_size
    crop: Literal["center"] = "center"
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    mean: list[float] = Field(min_length=3, max_length=3)
    std: list[float] = Field(min_length=3, max_length=3)
    channels: Literal[1, 3] = 3  # 1: the model was trained on grayscale; convert, then repeat to 3 channels
    max_pixels: int = 40_000_000  # decompression-bomb guard for decoders

    def to_dict(self) -> dict:
        return self.model_dump()


def resized_shape(height: int, width: int, shorter: int) -> tuple[int, int]:
    """torchvision's rule for a one-number size: the shorter side becomes ``shorter``, the longer truncates."""
    if width <= height:
        return int(shorter * height / width), shorter
    return shorter, int(shorter * width / height)


def _uint8_native(mode: str) -> bool:
    # torchvision resizes uint8 directly (no float round trip) for these; elsewhere it goes through float32
    if mode == "bilinear":
        return torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or platform.machine() in (
            "aarch64",
            "arm64",
        )
    return True


def resize_shorter(image: torch.Tensor, shorter: int, mode: str) -> torch.Tensor:
    """uint8 (C, H, W) → uint8 with its shorter side ``shorter``, antialiased for bilinear/bicubic."""
    if mode not in _MODES:
        raise ConvserveError(f"unknown interpolation {mode!r} in the model card; expected one of {_MODES}")
    channels, height, width = image.shape
    size = resized_shape(height, width, shorter)
    if size == (height, width):
        return image
    smooth = mode != "nearest"
    native = not smooth or _uint8_native(mode)
    batch = image.unsqueeze(0)
    if batch.is_contiguous(memory_format=torch.channels_last):
        # keep HWC memory through interpolate (it would otherwise allocate NCHW and repack: slower, same values)
        batch = batch.as_strided((1, channels, height, width), (image.numel(), *image.stride()))
    out = interpolate(
        batch if native else batch.float(),
        size=list(size),
        mode=mode,
        align_corners=False if smooth else None,
        antialias=smooth,
    )
    if not native:
        out = out.clamp_(0, 255).round_().to(torch.uint8)
    return out[0]


def center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    height, width = image.shape[-2:]
    if size > height or size > width:
        raise ConvserveError(f"cannot centre-crop {size} px from a {height}x{width} image (resize_size < input_size?)")
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    return image[..., top : top + size, left : left + size]


def resize_and_crop(image: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """uint8 (C, H, W) → uint8 (C, input_size, input_size)."""
    return center_crop(resize_shorter(image, pre.resize_size, pre.interpolation), pre.input_size)


def prepare_batch(images: list[torch.Tensor], pre: Preprocessing) -> torch.Tensor:
    """List of uint8 (C, H, W) images, all with the card's channel count → float32 (N, 3, S, S)."""
    batch = torch.stack([resize_and_crop(img, pre) for img in images])
    if batch.shape[1] == 1:  # grayscale-trained models take the channel repeated, as in training
        batch = batch.expand(-1, 3, -1, -1)
    batch = batch.to(torch.float32).mul_(1.0 / 255)
    mean = torch.tensor(pre.mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(pre.std, dtype=torch.float32).view(-1, 1, 1)
    return batch.sub_(mean).div_(std)


def prepare_image(image: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """One uint8 (C, H, W) image → float32 (3, S, S): ``prepare_batch`` of one."""
    return prepare_batch([image], pre)[0]
