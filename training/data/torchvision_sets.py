"""MNIST, Fashion-MNIST and CIFAR-10 in torchvision's on-disk layout, with a clear error when files are missing.

Layouts (``root`` is ``data.data_dir``):
- MNIST: ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (or the ``.gz`` files, which we unpack
  beside them as torchvision's download does); Fashion-MNIST: the same under ``FashionMNIST/raw``.
- CIFAR-10: ``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` (the "python version").

Missing files are found before any download is tried; ``download`` then fetches them with torchvision, and a
failed download (offline) becomes one ``ConvserveError`` naming the folder and the files expected.

MNIST is read by ``torchvision.datasets.MNIST`` itself. CIFAR-10's batches are pickles; torchvision only reads
them after their md5 matches the official files (so it never unpickles anything else), and rejects any other
copy. We read any copy in that format, so we unpickle with an allow-list of numpy's array constructors: a data
file can build arrays, lists and dicts, never call arbitrary code.

Splits: val is a seeded stratified 10% of the official train set; test is the official test set.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import pickle
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets import CIFAR10, MNIST, FashionMNIST
from torchvision.datasets.utils import download_and_extract_archive

from convserve.common.errors import ConvserveError
from convserve.training.data.splits import RawSplits, TensorImages, stratified_split

VAL_FRACTION = 0.1
DOWNLOAD_TIMEOUT_S = 60  # per socket operation: a dead network fails instead of hanging the run
MNIST_NAMES = [str(d) for d in range(10)]  # as the embedded digits data set names them


def _split_train(images: torch.Tensor, labels: torch.Tensor, seed: int) -> tuple[TensorImages, TensorImages]:
    train, val = stratified_split(labels.tolist(), (1 - VAL_FRACTION, VAL_FRACTION), seed)
    return TensorImages(images[train], labels[train]), TensorImages(images[val], labels[val])


def _cause(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__  # torchvision's mirror loop puts the cause last


def _fetch(download: Callable[[], object], allowed: bool, missing: str, folder: Path) -> None:
    """Run ``download`` (a torchvision call filling ``folder``) or raise ``missing`` plus why, as one line."""
    if not allowed:
        raise ConvserveError(f"{missing}; downloading is off (data.download: false), place the files there")
    new_dirs = [p for p in (folder, *folder.parents) if not p.exists()]
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        download()
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; torchvision wraps mirror failures
        for made in new_dirs:  # deepest first; rmdir leaves any folder that is not empty
            with contextlib.suppress(OSError):
                made.rmdir()
        raise ConvserveError(f"{missing}; download failed ({_cause(exc)}); download needs internet") from None
    finally:
        socket.setdefaulttimeout(previous)


# --- MNIST / Fashion-MNIST --------------------------------------------------------------------------------


def _unpack_gz(raw: Path, names: list[str]) -> None:
    """Unpack ``NAME.gz`` beside itself where ``NAME`` is missing, as torchvision's download leaves them."""
    for name in names:
        packed, target = raw / f"{name}.gz", raw / name
        if target.is_file() or not packed.is_file():
            continue
        partial = target.with_name(f".{name}.{os.getpid()}.partial")  # torchrun ranks may unpack at once
        try:
            with gzip.open(packed, "rb") as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst)
            partial.replace(target)  # never leave a half-written file under the real name
        except (OSError, EOFError) as exc:  # BadGzipFile is an OSError
            partial.unlink(missing_ok=True)
            raise ConvserveError(f"cannot unpack {packed}: {_cause(exc)}") from None


def _read_mnist(cls: type[MNIST], root: Path, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    raw = root / cls.__name__ / "raw"
    try:
        ds = cls(str(root), train=train, download=False)
    except (AssertionError, RuntimeError, ValueError, TypeError) as exc:  # torchvision asserts on a bad header
        raise ConvserveError(f"{cls.__name__} files under {raw} are not valid IDX files ({_cause(exc)})") from None
    images, labels = ds.data, ds.targets
    if len(images) != len(labels) or len(labels) == 0 or int(labels.min()) < 0 or int(labels.max()) > 9:
        split = "train" if train else "t10k"
        raise ConvserveError(
            f"{cls.__name__} {split} files under {raw} disagree: {len(images)} images, {len(labels)} labels "
            "(labels must be 0..9)"
        )
    return images.unsqueeze(1).contiguous(), labels


def load_mnist(root: Path, download: bool, seed: int, fashion: bool = False) -> RawSplits:
    cls = FashionMNIST if fashion else MNIST
    raw = root / cls.__name__ / "raw"
    names = [Path(filename).stem for filename, _ in cls.resources]  # "train-images-idx3-ubyte.gz" -> without .gz
    _unpack_gz(raw, names)
    missing = [n for n in names if not (raw / n).is_file()]
    if missing:
        expected = ", ".join(f"{cls.__name__}/raw/{n}(.gz)" for n in missing)
        message = f"{cls.__name__} not found under {root}: expected {expected}"
        _fetch(lambda: cls(str(root), train=True, download=True), download, message, raw)
    train, val = _split_train(*_read_mnist(cls, root, train=True), seed)
    test = TensorImages(*_read_mnist(cls, root, train=False))
    return RawSplits(train, val, test, list(cls.classes) if fashion else list(MNIST_NAMES))


# --- CIFAR-10 ---------------------------------------------------------------------------------------------

_ARRAY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3's protocol 2 writes bytes
}


class _ArrayUnpickler(pickle.Unpickler):
    """Builds dicts, lists, strings and numpy arrays only: a data set file is data, not code."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ARRAY_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core."):  # NumPy 1 wrote numpy.core; NumPy 2 calls it numpy._core
            module = "numpy._core." + module.removeprefix("numpy.core.")
        return super().find_class(module, name)


def read_cifar_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            entry = _ArrayUnpickler(f, encoding="latin1").load()
    except (OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
        raise ConvserveError(f"cannot read CIFAR-10 file {path}: {_cause(exc)}") from None
    if not isinstance(entry, dict):
        raise ConvserveError(f"CIFAR-10 file {path} does not hold a dict")
    return entry


def _read_cifar_batches(folder: Path, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = [], []
    for name in names:
        entry = read_cifar_pickle(folder / name)
        data, targets = entry.get("data"), entry.get("labels")
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise ConvserveError(f"CIFAR-10 file {folder / name}: 'data' must be a uint8 N x 3072 array")
        if not isinstance(targets, list) or len(targets) != len(data):
            raise ConvserveError(f"CIFAR-10 file {folder / name}: 'labels' must be a list of {len(data)} ints")
        images.append(data)
        labels.extend(targets)
    # rows are 1024 red, 1024 green, 1024 blue values: already channel-first
    return torch.from_numpy(np.concatenate(images).reshape(-1, 3, 32, 32)), torch.tensor(labels, dtype=torch.int64)


def _cifar_names(folder: Path) -> list[str]:
    path = folder / CIFAR10.meta["filename"]
    names = read_cifar_pickle(path).get(CIFAR10.meta["key"])
    if not isinstance(names, list) or len(names) != 10 or not all(isinstance(n, str) for n in names):
        raise ConvserveError(f"{path}: '{CIFAR10.meta['key']}' must list 10 class names")
    return names


def load_cifar10(root: Path, download: bool, seed: int) -> RawSplits:
    folder = root / CIFAR10.base_folder
    train_names = [name for name, _ in CIFAR10.train_list]
    test_names = [name for name, _ in CIFAR10.test_list]
    missing = [n for n in [*train_names, *test_names, CIFAR10.meta["filename"]] if not (folder / n).is_file()]
    if missing:
        expected = ", ".join(f"{CIFAR10.base_folder}/{n}" for n in missing)

        def fetch() -> None:
            download_and_extract_archive(CIFAR10.url, str(root), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)

        _fetch(fetch, download, f"CIFAR-10 not found under {root}: expected {expected}", folder)
    names = _cifar_names(folder)
    train_images, train_labels = _read_cifar_batches(folder, train_names)
    test_images, test_labels = _read_cifar_batches(folder, test_names)
    for labels in (train_labels, test_labels):
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(names)):
            raise ConvserveError(f"CIFAR-10 files under {folder} have labels outside 0..{len(names) - 1}")
    train, val = _split_train(train_images, train_labels, seed)
    return RawSplits(train, val, TensorImages(test_images, test_labels), names)
