"""Write tiny data sets in the real on-disk formats of MNIST, CIFAR-10, Caltech101, ImageNet-style folders and
Tiny-ImageNet-200, from real images (sklearn's handwritten digits, scikit-image's sample photos).

Each writer returns what it wrote so tests can check a loader against it: pixel arrays and labels for the
binary formats, ``{path: (class name, (height, width))}`` for the folder formats.
"""

from __future__ import annotations

import gzip
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# Photos that serve as "classes": each class's images are crops of one photo.
PHOTOS = ("chelsea", "astronaut", "coffee", "rocket")


@dataclass
class Written:
    """Images (N x H x W or N x 3 x H x W uint8) and labels per split, as they went into the files."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]


def _photo(name: str) -> np.ndarray:
    from skimage import data

    return getattr(data, name)()


def photo_crops(
    name: str, count: int, rng: np.random.Generator, max_side: int = 64, large: bool = False
) -> list[np.ndarray]:
    """``count`` random crops (various sizes and aspect ratios) of a sample photo, scaled to at most ``max_side``.

    Crops span 1/4 to 1/2 of each side, or 1/2 to all of it when ``large`` (photo-sized: 150-640 px).
    """
    photo = _photo(name)
    h, w = photo.shape[:2]
    lo, hi = (2, 1) if large else (4, 2)
    crops = []
    for _ in range(count):
        ch, cw = int(rng.integers(h // lo, h // hi)), int(rng.integers(w // lo, w // hi))
        y, x = int(rng.integers(0, h - ch)), int(rng.integers(0, w - cw))
        img = Image.fromarray(photo[y : y + ch, x : x + cw])
        img.thumbnail((max_side, max_side))
        crops.append(np.asarray(img))
    return crops


def _save_jpeg(path: Path, pixels: np.ndarray) -> tuple[int, int]:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)
    return pixels.shape[0], pixels.shape[1]


# --- MNIST IDX files ----------------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, gzipped: bool) -> None:
    """IDX as LeCun's files are: big-endian magic (0x0000 08 ndim: 2049 labels, 2051 images), sizes, uint8 data."""
    header = (0x0800 + array.ndim).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gzipped:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def mnist_like_digits(per_class: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Real sklearn digits drawn like MNIST: 8x8 upsampled to a 20x20 glyph centred on a 28x28 black field."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images, labels = [], []
    for digit in range(10):
        for i in np.flatnonzero(bunch.target == digit)[offset : offset + per_class]:
            glyph = Image.fromarray(np.round(bunch.images[i] * 255 / 16).astype(np.uint8))
            field = np.zeros((28, 28), np.uint8)
            field[4:24, 4:24] = np.asarray(glyph.resize((20, 20), Image.BILINEAR))
            images.append(field)
            labels.append(digit)
    return np.stack(images), np.asarray(labels, np.uint8)


def write_mnist(
    root: Path, fashion: bool = False, gzipped: bool = False, train_per_class: int = 10, test_per_class: int = 3
) -> Written:
    """``root/MNIST/raw/*-ubyte[.gz]`` (``FashionMNIST/raw`` for ``fashion``) holding real digits."""
    raw = root / ("FashionMNIST" if fashion else "MNIST") / "raw"
    train_x, train_y = mnist_like_digits(train_per_class, 0)
    test_x, test_y = mnist_like_digits(test_per_class, train_per_class)
    for prefix, x, y in (("train", train_x, train_y), ("t10k", test_x, test_y)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", x, gzipped)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y, gzipped)
    return Written(train_x, train_y, test_x, test_y, [str(d) for d in range(10)])


# --- CIFAR-10 python batches --------------------------------------------------------------------------

CIFAR_SOURCES = ("chelsea", "astronaut", "coffee", "rocket", "cat", "hubble_deep_field", "immunohistochemistry")
CIFAR_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _cifar_images(count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` 32x32 RGB crops of sample photos, as N x 3 x 32 x 32."""
    out = []
    for k in range(count):
        photo = _photo(CIFAR_SOURCES[k % len(CIFAR_SOURCES)])
        side = int(rng.integers(48, min(photo.shape[:2])))
        y, x = int(rng.integers(0, photo.shape[0] - side)), int(rng.integers(0, photo.shape[1] - side))
        out.append(np.asarray(Image.fromarray(photo[y : y + side, x : x + side]).resize((32, 32), Image.BILINEAR)))
    return np.stack(out).transpose(0, 3, 1, 2).copy()


def _cifar_batch(path: Path, label: str, images: np.ndarray, labels: np.ndarray) -> None:
    entry = {
        "batch_label": label,
        "labels": [int(y) for y in labels],
        "data": images.reshape(len(images), 3072),  # 1024 red, 1024 green, 1024 blue values per row
        "filenames": [f"crop_{i:05d}.png" for i in range(len(images))],
    }
    path.write_bytes(pickle.dumps(entry, protocol=2))


def write_cifar10(root: Path, train_per_class: int = 5, test_per_class: int = 2, seed: int = 0) -> Written:
    """``root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}``; train spread over the 5 batches."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train_y = np.tile(np.arange(10), train_per_class)
    test_y = np.tile(np.arange(10), test_per_class)
    train_x, test_x = _cifar_images(len(train_y), rng), _cifar_images(len(test_y), rng)
    for b, part in enumerate(np.array_split(np.arange(len(train_y)), 5), start=1):
        _cifar_batch(folder / f"data_batch_{b}", f"training batch {b} of 5", train_x[part], train_y[part])
    _cifar_batch(folder / "test_batch", "testing batch 1 of 1", test_x, test_y)
    meta = {"num_cases_per_batch": len(train_y) // 5, "label_names": CIFAR_NAMES, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return Written(train_x, train_y, test_x, test_y, list(CIFAR_NAMES))


# --- Folder layouts -----------------------------------------------------------------------------------


def write_caltech101(root: Path, per_class: int = 10, seed: int = 0) -> dict[Path, tuple[str, tuple[int, int]]]:
    """``root/101_ObjectCategories/<photo>/image_0001.jpg ...``; one image of the first class is grayscale.

    Also writes what a real folder holds besides images: BACKGROUND_Google (excluded), a .DS_Store, a .txt file.
    """
    rng = np.random.default_rng(seed)
    top = root / "101_ObjectCategories"
    written = {}
    for name in PHOTOS:
        for i, pixels in enumerate(photo_crops(name, per_class, rng), start=1):
            if name == PHOTOS[0] and i == 1:
                pixels = np.asarray(Image.fromarray(pixels).convert("L"))
            path = top / name / f"image_{i:04d}.jpg"
            written[path] = (name, _save_jpeg(path, pixels))
    for i, pixels in enumerate(photo_crops("coins", 2, rng), start=1):
        _save_jpeg(top / "BACKGROUND_Google" / f"image_{i:04d}.jpg", pixels)
    (top / PHOTOS[0] / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (top / PHOTOS[1] / "README.txt").write_text("not an image\n")
    return written


def write_imagefolder(
    root: Path, counts: dict[str, int] | None = None, seed: int = 0, max_side: int = 64, large: bool = False
) -> dict[Path, tuple[str, tuple[int, int]]]:
    """``root/{train,val,test}/<photo>/*.jpg`` (ImageNet-10 style); ``counts``: images per class per split.

    Crops of at most ``max_side`` px; ``large`` with a large ``max_side``: photo-sized crops (see photo_crops).
    """
    counts = counts or {"train": 6, "val": 2, "test": 2}
    rng = np.random.default_rng(seed)
    written = {}
    for split, per_class in counts.items():
        for name in PHOTOS:
            for i, pixels in enumerate(photo_crops(name, per_class, rng, max_side, large)):
                path = root / split / name / f"{name}_{split}_{i}.jpg"
                written[path] = (name, _save_jpeg(path, pixels))
    return written


def write_digit_folder(root: Path, counts: dict[str, int] | None = None, rgb: bool = False) -> dict[str, np.ndarray]:
    """``root/{train,val}/<digit>/*.png``: sklearn's real digits drawn MNIST-style as 28x28 grayscale PNGs.

    ``counts``: images per class per split; ``rgb``: saved as RGB PNGs with equal channels. Returns each
    split's pixels (N x 28 x 28 uint8), in file order.
    """
    counts = counts or {"train": 10, "val": 3}
    written, offset = {}, 0
    for split, per_class in counts.items():
        images, labels = mnist_like_digits(per_class, offset)
        offset += per_class
        for i, (pixels, digit) in enumerate(zip(images, labels, strict=True)):
            path = root / split / str(digit) / f"{split}_{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).convert("RGB" if rgb else "L").save(path)
        written[split] = images
    return written


# Real ImageNet wnids; two share the first synonym "crane" (the bird and the machine), as in ImageNet.
TINY_CLASSES = {
    "n02123045": ("chelsea", "tabby, tabby cat"),
    "n07920052": ("coffee", "espresso"),
    "n02012849": ("astronaut", "crane"),
    "n03126707": ("rocket", "crane"),
}
TINY_WORDS_EXTRA = ["n00001740\tentity", "n01443537\tgoldfish, Carassius auratus"]


def write_tiny_imagenet(
    root: Path, train_per_class: int = 10, val_per_class: int = 3, seed: int = 0
) -> dict[Path, tuple[str, tuple[int, int]]]:
    """``root/tiny-imagenet-200/`` as the zip extracts: 64x64 JPEGs, wnids.txt, words.txt, boxes, annotations."""
    rng = np.random.default_rng(seed)
    top = root / "tiny-imagenet-200"
    top.mkdir(parents=True, exist_ok=True)
    (top / "wnids.txt").write_text("".join(f"{w}\n" for w in TINY_CLASSES))
    words = TINY_WORDS_EXTRA + [f"{w}\t{syn}" for w, (_, syn) in TINY_CLASSES.items()]
    (top / "words.txt").write_text("\n".join(sorted(words)) + "\n")
    written: dict[Path, tuple[str, tuple[int, int]]] = {}
    notes, v = [], 0
    for wnid, (photo, _) in TINY_CLASSES.items():
        boxes = []
        for i, pixels in enumerate(_tiny_crops(photo, train_per_class, rng)):
            path = top / "train" / wnid / "images" / f"{wnid}_{i}.JPEG"
            written[path] = (wnid, _save_jpeg(path, pixels))
            boxes.append(f"{path.name}\t8\t8\t55\t55\n")
        (top / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(boxes))
        for pixels in _tiny_crops(photo, val_per_class, rng):
            path = top / "val" / "images" / f"val_{v}.JPEG"
            written[path] = (wnid, _save_jpeg(path, pixels))
            notes.append(f"{path.name}\t{wnid}\t0\t4\t60\t62\n")
            v += 1
    (top / "val" / "val_annotations.txt").write_text("".join(notes))
    for i, pixels in enumerate(_tiny_crops("hubble_deep_field", 2, rng)):  # unlabelled: the loader ignores it
        _save_jpeg(top / "test" / "images" / f"test_{i}.JPEG", pixels)
    return written


def _tiny_crops(photo: str, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [np.asarray(Image.fromarray(c).resize((64, 64), Image.BILINEAR)) for c in photo_crops(photo, count, rng)]
