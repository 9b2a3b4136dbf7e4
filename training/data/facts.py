"""Per-dataset facts (native size, channels, normalisation, augmentation policy) — the only place they live."""

from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
        DatasetFacts("caltech101", 224, 3, IMAGENET_MEAN, IMAGENET_STD, "natural"),
        DatasetFacts("imagefolder", 224, 3, IMAGENET_MEAN, IMAGENET_STD, "natural"),
        DatasetFacts("tiny-imagenet", 64, 3, IMAGENET_MEAN, IMAGENET_STD, "small"),
    )
}
