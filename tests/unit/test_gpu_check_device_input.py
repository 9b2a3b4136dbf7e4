"""The GPU check's device-resident input pipeline (scripts/gpu_check/device_input.py), on the CPU: each
augmented image is a pad-crop (maybe mirrored) of its own source, normalised as the trainer normalises, and
batches walk a permutation."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch.nn import functional as nn_functional

from convserve.common.preprocessing import Preprocessing

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("gpu_check_device_input", REPO / "scripts/gpu_check/device_input.py")
device_input = importlib.util.module_from_spec(spec)
spec.loader.exec_module(device_input)

CPU = torch.device("cpu")


def crops(padded: torch.Tensor, size: int) -> list[torch.Tensor]:
    span = padded.shape[-1] - size + 1
    return [padded[:, dy : dy + size, dx : dx + size] for dy in range(span) for dx in range(span)]


def test_each_image_is_a_crop_of_its_own_padded_source_some_mirrored():
    torch.manual_seed(0)
    batch = torch.arange(40 * 3 * 5 * 5, dtype=torch.float32).view(40, 3, 5, 5) + 1  # every pixel distinct
    out = device_input.pad_crop_flip(batch, pad=2)
    padded = nn_functional.pad(batch, (2, 2, 2, 2))
    plain = mirrored = 0
    for i in range(len(batch)):
        options = crops(padded[i], 5)
        is_plain = any(torch.equal(out[i], c) for c in options)
        is_mirrored = any(torch.equal(out[i], c.flip(-1)) for c in options)
        assert is_plain or is_mirrored, f"image {i} is not a crop of its own source"
        plain, mirrored = plain + is_plain, mirrored + is_mirrored
    assert plain and mirrored  # both happen in 40 coin flips
    assert len({tuple(o.flatten().tolist()[:3]) for o in out}) > 20  # offsets differ between images


def test_augment_resizes_normalises_and_pads_with_black():
    pre = Preprocessing(input_size=16, resize_size=16, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.5], channels=3)
    white = torch.full((8, 3, 8, 8), 255, dtype=torch.uint8)
    out = device_input.DeviceAugment(pre, CPU)(white)
    assert out.shape == (8, 3, 16, 16) and out.is_contiguous(memory_format=torch.channels_last)
    mean, std = torch.tensor(pre.mean).view(1, 3, 1, 1), torch.tensor(pre.std).view(1, 3, 1, 1)
    is_white = torch.isclose(out, ((1 - mean) / std).expand_as(out), atol=1e-5)
    is_black = torch.isclose(out, (-mean / std).expand_as(out), atol=1e-5)
    assert (is_white | is_black).all()
    assert is_white.any() and is_black.any()  # some images were shifted into the padding (pad 2 at 16 px)


def test_batches_walk_a_fresh_permutation_each_epoch():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 2, 2).contiguous()
    source = device_input.ResidentImages(images, torch.arange(10), CPU, batch=3)
    for _ in range(2):  # two epochs of 3 batches (drop_last): 9 distinct images each
        labels = torch.cat([source.next()[1] for _ in range(3)])
        assert len(set(labels.tolist())) == 9
    x, y = source.next()
    assert torch.equal(x[:, 0, 0, 0].long(), y)  # each label travels with its image
