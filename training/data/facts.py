"""Per-dataset facts (native size, channels, normalisation, augmentation policy) — the only place they live.

Known data sets have fixed facts (``FACTS``). Folders of arbitrary images (``MEASURED``: imagefolder,
caltech101) have theirs measured on a seeded sample of the training split (``measure_facts``), so a folder of
28x28 digit PNGs trains as digits, not as ImageNet:

- native size: the median of the sampled images' shorter sides (a robust statistic: a few thumbnails or
  posters do not move it), capped at ImageNet's 224 px; the architecture's minimum still raises it later.
- channels: 1 when every sampled image is grayscale (a single-channel file, or RGB with equal channels up to
  JPEG rounding), else 3. One colour image makes the folder colour.
- mean/std: per channel, of the pixels scaled to [0, 1], on each image's centre square (what the eval crop
  keeps) shrunk to at most ``STATS_SIDE`` px. Each image weighs the same, as it does once the eval transform
  has made it input_size x input_size; raw pixels would let a few large images dominate. Shrinking only
  touches images of at least the "natural" size, so small images are measured pixel for pixel; for photos
  it leaves the mean as it is and the std 1-2 % below that of a 224 px view (half the decoding time:
  ~0.5 s for 300 photo JPEGs on a busy core).
- policy: native size >= ``LARGE_SIDE`` px: "natural" (photos: random-resized-crop + flip, eval resize + crop
  0.875). Smaller: "small" (pad-crop + flip) for colour, "digits" (no flip, small affine jitter) for
  grayscale — a flip is safe for small colour objects (CIFAR), not for glyphs, and an unknown grayscale folder
  is more often characters or scans than mirror-symmetric objects.

``data.input_size`` still overrides the size, and an explicit mean/std the normalisation (``preprocessing_for``);
measured facts reach the checkpoint's ``preprocessing``, hence export and serving, like fixed ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset

from convserve.training.data.image_files import center_square, decode_rgb_view

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MEASURED = frozenset({"caltech101", "imagefolder"})  # data sets whose facts come from their own images
MEASURE_SAMPLE = 300  # training images decoded to measure (seeded sample of the training split)
STATS_SIDE = 128  # mean/std are measured on centre squares at most this side
LARGE_SIDE = 128  # native size from which images are photos ("natural" policy)
NATURAL_SIDE = 224  # native size cap: larger photos train at ImageNet's size, not at their own
GRAY_TOLERANCE = 2  # RGB channels differing by at most this much are gray (JPEG's chroma rounding)


@dataclass(frozen=True)
class DatasetFacts:
    name: str
    native_size: int  # the size models get by default (raised to an architecture's minimum)
    channels: int  # 1: grayscale data, fed to 3-channel models by repeating the channel
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # "digits": no flips (a flipped 2 is not a 2), small affine jitter; "small": pad-crop + flip;
    # "natural": random-resized-crop + flip for training, resize + centre crop (ratio 0.875) for eval
    policy: str
    downloadable: bool = False
    measured_on: int = 0  # training images the facts were measured on; 0: fixed facts


def _gray(value: float) -> tuple[float, float, float]:
    return (value, value, value)


FACTS: dict[str, DatasetFacts] = {
    f.name: f
    for f in (
        # digits statistics measured on sklearn's 1,797 images scaled to [0, 1]
        DatasetFacts("digits", 32, 1, _gray(0.3053), _gray(0.3760), "digits"),
        DatasetFacts("mnist", 28, 1, _gray(0.1307), _gray(0.3081), "digits", downloadable=True),
        DatasetFacts("fashion-mnist", 28, 1, _gray(0.2860), _gray(0.3530), "small", downloadable=True),
        DatasetFacts("cifar10", 32, 3, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), "small", downloadable=True),
        # placeholders only: build_datasets measures these on the data (measure_facts)
        DatasetFacts("caltech101", 224, 3, IMAGENET_MEAN, IMAGENET_STD, "natural"),
        DatasetFacts("imagefolder", 224, 3, IMAGENET_MEAN, IMAGENET_STD, "natural"),
        DatasetFacts("tiny-imagenet", 64, 3, IMAGENET_MEAN, IMAGENET_STD, "small"),
    )
}


def sample_indices(count: int, sample: int, seed: int) -> list[int]:
    """``sample`` of ``range(count)`` (all when fewer), sorted; the same for the same seed."""
    if count <= sample:
        return list(range(count))
    return sorted(np.random.default_rng(seed).choice(count, size=sample, replace=False).tolist())


def policy_for(native_size: int, channels: int) -> str:
    if native_size >= LARGE_SIDE:
        return "natural"
    return "digits" if channels == 1 else "small"


def facts_from_sample(name: str, views: Sequence[np.ndarray], short_sides: Sequence[int]) -> DatasetFacts:
    """Facts from sampled images: ``views`` HxWxC uint8 (C 1 or 3, as measured), ``short_sides`` of the files."""
    if not views or len(views) != len(short_sides):
        raise ValueError(f"need one shorter side per view, got {len(views)} views and {len(short_sides)} sides")
    gray = all(v.shape[2] == 1 or _equal_channels(v) for v in views)
    sums, squares = np.zeros(3), np.zeros(3)
    for view in views:
        x = view.reshape(-1, view.shape[2]).astype(np.float64) / 255.0
        sums += x.mean(axis=0)  # broadcasts a single channel to all three
        squares += (x * x).mean(axis=0)
    mean = sums / len(views)
    std = np.sqrt(np.maximum(squares / len(views) - mean * mean, 0.0))
    if gray:  # one value for the channel that gets repeated
        mean, std = np.full(3, mean.mean()), np.full(3, std.mean())
    native = min(int(round(float(np.median(short_sides)))), NATURAL_SIDE)
    channels = 1 if gray else 3
    return DatasetFacts(
        name=name,
        native_size=native,
        channels=channels,
        mean=tuple(round(float(m), 4) for m in mean),
        std=tuple(round(max(float(s), 1e-3), 4) for s in std),  # a blank folder must not divide by zero
        policy=policy_for(native, channels),
        measured_on=len(views),
    )


def _equal_channels(view: np.ndarray) -> bool:
    wide = view.astype(np.int16)
    return int(np.abs(wide - wide[..., :1]).max()) <= GRAY_TOLERANCE


def measure_facts(name: str, train: Dataset, seed: int, sample: int = MEASURE_SAMPLE) -> DatasetFacts:
    """Facts of ``train`` from ``sample`` seeded images: files (``ImageFiles``) are decoded cheaply at a
    reduced scale; other data sets are indexed (uint8 CHW tensors)."""
    paths = getattr(train, "paths", None)
    views, sides = [], []
    for i in sample_indices(len(train), sample, seed):
        if paths is not None:
            view, side = decode_rgb_view(paths[i], STATS_SIDE)
        else:
            pixels = train[i][0].numpy().transpose(1, 2, 0)
            view, side = center_square(pixels, STATS_SIDE), min(pixels.shape[:2])
        views.append(view)
        sides.append(side)
    return facts_from_sample(name, views, sides)


def describe(facts: DatasetFacts) -> str:
    """One line for the start of a run, e.g. "data facts measured on 300 training images: 28 px, grayscale,
    mean 0.13 std 0.31, policy digits"."""

    def values(v: tuple[float, ...]) -> str:
        return f"{v[0]:.2f}" if facts.channels == 1 else "/".join(f"{x:.2f}" for x in v)

    where = f"measured on {facts.measured_on} training images" if facts.measured_on else f"of {facts.name}"
    colour = "grayscale" if facts.channels == 1 else "colour"
    return (
        f"data facts {where}: {facts.native_size} px, {colour}, mean {values(facts.mean)} "
        f"std {values(facts.std)}, policy {facts.policy}"
    )
