"""The real dataset loaders on tiny data sets written in the real on-disk formats from real images.

Fixtures come from tests/fixture_datasets.py: MNIST IDX files (raw and gzipped) of sklearn's digits, CIFAR-10
python pickle batches of photo crops, Caltech101 / ImageNet-style / Tiny-ImageNet-200 trees of JPEGs cut from
scikit-image's sample photos.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convserve.common.errors import ConvserveError
from convserve.training.config import DataConfig
from convserve.training.data import build_datasets
from convserve.training.data.folders import load_caltech101, load_imagefolder, load_tiny_imagenet
from convserve.training.data.image_files import decode_rgb
from convserve.training.data.torchvision_sets import load_cifar10, load_mnist
from tests.conftest import PYTHON, REPO
from tests.fixture_datasets import (
    CIFAR_NAMES,
    PHOTOS,
    TINY_CLASSES,
    write_caltech101,
    write_cifar10,
    write_imagefolder,
    write_mnist,
    write_tiny_imagenet,
)

MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
# A proxy on a closed local port: urllib's download fails at once, with or without internet.
NO_NETWORK = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "no_proxy": ""}


def one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(ConvserveError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def items(ds) -> list[tuple[torch.Tensor, int]]:
    return [ds[i] for i in range(len(ds))]


def image_keys(ds) -> Counter:
    """Each image's bytes with its label: lets a test find every loaded image among those written."""
    return Counter((img.numpy().tobytes(), label) for img, label in items(ds))


def written_keys(written) -> Counter:
    pairs = zip(written.train_images, written.train_labels, strict=True)
    return Counter((x.tobytes(), int(y)) for x, y in pairs)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, tuple[Path, object]]:
    root = tmp_path_factory.mktemp("datasets")
    return {
        "mnist": (root / "mnist", write_mnist(root / "mnist")),
        "mnist-gz": (root / "mnist-gz", write_mnist(root / "mnist-gz", gzipped=True)),
        "fashion-mnist": (root / "fashion", write_mnist(root / "fashion", fashion=True, gzipped=True)),
        "cifar10": (root / "cifar", write_cifar10(root / "cifar")),
        "caltech101": (root / "caltech", write_caltech101(root / "caltech")),
        "imagefolder": (root / "folder", write_imagefolder(root / "folder")),
        "tiny-imagenet": (root / "tiny", write_tiny_imagenet(root / "tiny")),
    }


# --- MNIST / Fashion-MNIST -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mnist", "mnist-gz"])
def test_mnist_reads_idx_files(datasets, name):
    root, written = datasets[name]
    splits = load_mnist(root, download=False, seed=0)
    assert splits.class_names == [str(d) for d in range(10)]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (90, 10, 30)
    img, label = splits.test[0]
    assert img.shape == (1, 28, 28) and img.dtype == torch.uint8 and isinstance(label, int)
    # the test split is the t10k files, in order and pixel for pixel
    assert torch.equal(splits.test.images[:, 0], torch.from_numpy(written.test_images))
    assert splits.test.targets() == written.test_labels.tolist()
    # train + val are the train files, split without loss or overlap, one val image per class
    assert image_keys(splits.train) + image_keys(splits.val) == written_keys(written)
    assert sorted(splits.val.targets()) == list(range(10))


def test_mnist_gz_is_unpacked_beside_the_archives(datasets):
    raw = datasets["mnist-gz"][0] / "MNIST" / "raw"
    load_mnist(raw.parents[1], download=False, seed=0)
    assert sorted(p.name for p in raw.iterdir()) == sorted(MNIST_FILES + [f"{n}.gz" for n in MNIST_FILES])


def test_fashion_mnist_reads_its_own_folder(datasets):
    root, written = datasets["fashion-mnist"]
    splits = load_mnist(root, download=False, seed=0, fashion=True)
    assert splits.class_names[0] == "T-shirt/top" and len(splits.class_names) == 10
    assert splits.test.targets() == written.test_labels.tolist()
    assert "FashionMNIST/raw/train-images-idx3-ubyte(.gz)" in one_line_error(
        load_mnist, datasets["mnist"][0], download=False, seed=0, fashion=True
    )


def test_mnist_missing_files_named_before_any_download(tmp_path):
    message = one_line_error(load_mnist, tmp_path / "mnist", download=False, seed=0)
    assert f"MNIST not found under {tmp_path / 'mnist'}" in message
    assert all(f"MNIST/raw/{n}(.gz)" in message for n in MNIST_FILES)
    assert not (tmp_path / "mnist").exists()  # nothing created when downloading is off


def test_mnist_lists_only_the_missing_files(tmp_path):
    write_mnist(tmp_path, train_per_class=2, test_per_class=1)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    message = one_line_error(load_mnist, tmp_path, download=False, seed=0)
    assert "expected MNIST/raw/t10k-labels-idx1-ubyte(.gz); downloading is off" in message


def test_mnist_failed_download_is_one_line(tmp_path, monkeypatch):
    """The download really runs and fails: this machine has no internet, and the proxy is a closed port."""
    for key, value in NO_NETWORK.items():
        monkeypatch.setenv(key, value)
    # urlopen builds its process-wide opener, proxies included, on first use: keep this one's closed proxy here
    monkeypatch.setattr(urllib.request, "_opener", None)
    message = one_line_error(load_mnist, tmp_path / "mnist", download=True, seed=0)
    assert "download failed" in message and "MNIST/raw/train-images-idx3-ubyte(.gz)" in message
    assert not (tmp_path / "mnist").exists()  # the empty folders torchvision made are gone again


def test_mnist_corrupt_idx_files(tmp_path):
    write_mnist(tmp_path, train_per_class=2, test_per_class=1)
    raw = tmp_path / "MNIST" / "raw"
    (raw / "t10k-labels-idx1-ubyte").write_bytes((2049).to_bytes(4, "big") + (3).to_bytes(4, "big") + b"\x01\x02\x03")
    assert "disagree: 10 images, 3 labels" in one_line_error(load_mnist, tmp_path, download=False, seed=0)
    (raw / "train-images-idx3-ubyte").write_bytes(b"<html>not found</html>")
    assert "not valid IDX files" in one_line_error(load_mnist, tmp_path, download=False, seed=0)
    (raw / "train-images-idx3-ubyte").unlink()
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"truncated")
    assert "cannot unpack" in one_line_error(load_mnist, tmp_path, download=False, seed=0)


# --- CIFAR-10 ------------------------------------------------------------------------------------------


def test_cifar10_reads_python_batches(datasets):
    root, written = datasets["cifar10"]
    splits = load_cifar10(root, download=False, seed=0)
    assert splits.class_names == CIFAR_NAMES  # from batches.meta
    assert (len(splits.train), len(splits.val), len(splits.test)) == (40, 10, 20)
    img, _ = splits.train[0]
    assert img.shape == (3, 32, 32) and img.dtype == torch.uint8
    assert torch.equal(splits.test.images, torch.from_numpy(written.test_images))
    assert splits.test.targets() == written.test_labels.tolist()
    assert image_keys(splits.train) + image_keys(splits.val) == written_keys(written)


def test_cifar10_fixture_is_what_torchvision_reads(datasets, monkeypatch):
    """torchvision's own reader agrees pixel for pixel (its md5 check, which only official files pass, is off)."""
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    root, _ = datasets["cifar10"]
    reference = tv_cifar.CIFAR10(str(root), train=False)
    ours = load_cifar10(root, download=False, seed=0).test
    assert reference.classes == CIFAR_NAMES
    assert torch.equal(ours.images, torch.from_numpy(reference.data).permute(0, 3, 1, 2))
    assert ours.targets() == reference.targets


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_cifar10_refuses_pickles_that_run_code(tmp_path):
    write_cifar10(tmp_path, train_per_class=1, test_per_class=1)
    marker = tmp_path / "pwned"
    entry = {"data": np.zeros((1, 3072), np.uint8), "labels": [0], "payload": _RunsCode(marker)}
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(pickle.dumps(entry, protocol=2))
    message = one_line_error(load_cifar10, tmp_path, download=False, seed=0)
    assert "data_batch_3" in message and "refusing to load" in message and "open" in message
    assert not marker.exists()


def test_cifar10_bad_or_missing_batches(tmp_path):
    write_cifar10(tmp_path, train_per_class=1, test_per_class=1)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "test_batch").write_bytes(pickle.dumps({"data": np.zeros((2, 1024), np.uint8), "labels": [0, 1]}))
    assert "test_batch: 'data' must be a uint8 N x 3072 array" in one_line_error(load_cifar10, tmp_path, False, 0)
    (folder / "data_batch_2").unlink()
    (folder / "batches.meta").unlink()
    message = one_line_error(load_cifar10, tmp_path, download=False, seed=0)
    assert message.endswith(
        "expected cifar-10-batches-py/data_batch_2, cifar-10-batches-py/batches.meta; "
        "downloading is off (data.download: false), place the files there"
    )


# --- Caltech101 ----------------------------------------------------------------------------------------


def assert_labels_and_shapes(ds, class_names: list[str], written: dict) -> None:
    """Every image's label is the class it was written under and it decodes to 3 x (the size written)."""
    for path, label in zip(ds.paths, ds.targets(), strict=True):
        name, (h, w) = written[Path(path)]
        assert class_names[label] == name
    img, _ = ds[0]
    assert img.dtype == torch.uint8 and img.shape == (3, *written[Path(ds.paths[0])][1])


def test_caltech101_split_8_1_1(datasets):
    root, written = datasets["caltech101"]
    splits = load_caltech101(root, seed=0)
    assert splits.class_names == sorted(PHOTOS)  # BACKGROUND_Google left out, as torchvision does
    assert (len(splits.train), len(splits.val), len(splits.test)) == (32, 4, 4)
    assert all(Counter(s.targets()) == {c: n for c in range(4)} for s, n in ((splits.val, 1), (splits.test, 1)))
    for split in (splits.train, splits.val, splits.test):
        assert_labels_and_shapes(split, splits.class_names, written)
    assert set(splits.train.paths) | set(splits.val.paths) | set(splits.test.paths) == {str(p) for p in written}


def test_caltech101_grayscale_jpeg_becomes_rgb(datasets):
    root, written = datasets["caltech101"]
    gray = root / "101_ObjectCategories" / PHOTOS[0] / "image_0001.jpg"
    assert Image.open(gray).mode == "L"
    img = decode_rgb(gray)
    assert img.shape == (3, *written[gray][1])
    assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])
    assert torch.equal(img[0], torch.from_numpy(np.array(Image.open(gray))))


def test_caltech101_root_variants(datasets, tmp_path):
    root, _ = datasets["caltech101"]
    (tmp_path / "caltech101").mkdir()
    (tmp_path / "caltech101" / "101_ObjectCategories").symlink_to(root / "101_ObjectCategories")
    expected = load_caltech101(root, seed=0).class_names
    for variant in (root / "101_ObjectCategories", tmp_path):  # the folder itself; torchvision's nesting
        assert load_caltech101(variant, seed=0).class_names == expected


def test_seeded_splits_reproducible_and_disjoint(datasets):
    root, _ = datasets["caltech101"]
    first, again, other = (load_caltech101(root, seed=s) for s in (0, 0, 1))
    parts = [set(s.paths) for s in (first.train, first.val, first.test)]
    assert all(not (a & b) for i, a in enumerate(parts) for b in parts[i + 1 :])
    assert [first.val.paths, first.test.paths] == [again.val.paths, again.test.paths]
    assert first.val.paths != other.val.paths
    mnist_root, _ = datasets["mnist"]
    a, b, c = (load_mnist(mnist_root, False, s).val for s in (3, 3, 4))
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)


def test_missing_or_empty_folders_name_the_path_and_layout(tmp_path):
    message = one_line_error(load_caltech101, tmp_path / "nowhere", seed=0)
    assert str(tmp_path / "nowhere") in message and "101_ObjectCategories/<class>/*.jpg" in message
    (tmp_path / "101_ObjectCategories" / "empty_class").mkdir(parents=True)
    (tmp_path / "101_ObjectCategories" / "empty_class" / "notes.txt").write_text("no images here")
    message = one_line_error(load_caltech101, tmp_path, seed=0)
    assert f"{tmp_path / '101_ObjectCategories' / 'empty_class'} holds no images" in message
    message = one_line_error(load_imagefolder, tmp_path, seed=0)
    assert str(tmp_path / "train") in message and "train/<class>/*.jpg and val/<class>/*.jpg" in message
    message = one_line_error(load_tiny_imagenet, tmp_path, seed=0)
    assert str(tmp_path) in message and "wnids.txt" in message and "val/val_annotations.txt" in message


def test_corrupt_image_is_a_one_line_error_naming_the_file(datasets, tmp_path):
    root, _ = datasets["caltech101"]
    shutil.copytree(root, tmp_path / "caltech")
    rocket = tmp_path / "caltech" / "101_ObjectCategories" / "rocket"
    truncated, fake = rocket / "image_0001.jpg", rocket / "image_0002.jpg"
    truncated.write_bytes(truncated.read_bytes()[:400])
    fake.write_text("this is not a JPEG")
    splits = load_caltech101(tmp_path / "caltech", seed=0)  # listing works: images are decoded lazily
    every = {p: (s, i) for s in (splits.train, splits.val, splits.test) for i, p in enumerate(s.paths)}
    for bad in (truncated, fake):
        split, i = every[str(bad)]
        assert f"cannot decode image {bad}:" in one_line_error(split.__getitem__, i)


def test_decode_follows_serving_policies(tmp_path):
    """Transparency on white, other formats through Pillow: what common/images.py does with uploads."""
    from skimage import data

    rgba = np.dstack([data.chelsea()[:40, :50], np.zeros((40, 50), np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "clear.png")
    assert torch.all(decode_rgb(tmp_path / "clear.png") == 255)
    Image.fromarray(data.coffee()[:30, :20]).save(tmp_path / "coffee.bmp")
    assert torch.equal(decode_rgb(tmp_path / "coffee.bmp"), torch.from_numpy(data.coffee()[:30, :20]).permute(2, 0, 1))
    deep = data.camera()[:16, :24].astype(np.uint16) * 257  # 16-bit grayscale PNG: scaled, not clipped
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert torch.equal(decode_rgb(tmp_path / "deep.png"), torch.from_numpy(data.camera()[:16, :24]).expand(3, -1, -1))


# --- ImageNet-style folders ----------------------------------------------------------------------------


def test_imagefolder_reads_train_val_test(datasets, tmp_path):
    root, written = datasets["imagefolder"]
    splits = load_imagefolder(root, seed=0)
    assert splits.class_names == sorted(PHOTOS)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (24, 8, 8)
    for split in (splits.train, splits.val, splits.test):
        assert_labels_and_shapes(split, splits.class_names, written)
    shutil.copytree(root / "train", tmp_path / "train")
    shutil.copytree(root / "val", tmp_path / "val")
    assert load_imagefolder(tmp_path, seed=0).test is None
    shutil.copytree(root / "val" / "rocket", tmp_path / "val" / "zebra")
    assert f"{tmp_path / 'val'} has class folders that train/ lacks: zebra" in one_line_error(
        load_imagefolder, tmp_path, seed=0
    )


# --- Tiny-ImageNet-200 ---------------------------------------------------------------------------------


def test_tiny_imagenet_reads_the_real_layout(datasets):
    root, written = datasets["tiny-imagenet"]
    splits = load_tiny_imagenet(root, seed=0)
    wnids = sorted(TINY_CLASSES)
    # words.txt's first synonym; the two "crane"s keep their wnid to stay distinct
    assert splits.class_names == ["crane (n02012849)", "tabby", "crane (n03126707)", "espresso"]
    assert (len(splits.train), len(splits.val), len(splits.test)) == (36, 4, 12)
    for split in (splits.train, splits.val, splits.test):
        for path, label in zip(split.paths, split.targets(), strict=True):
            assert written[Path(path)][0] == wnids[label]
    assert all("/val/images/" in p for p in splits.test.paths)  # official val is our test; test/ is unlabelled
    assert splits.test[0][0].shape == (3, 64, 64)
    assert load_tiny_imagenet(root / "tiny-imagenet-200", seed=0).class_names == splits.class_names


def test_tiny_imagenet_bad_annotations(datasets, tmp_path):
    shutil.copytree(datasets["tiny-imagenet"][0], tmp_path, dirs_exist_ok=True)
    notes = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    lines = notes.read_text().splitlines()
    notes.write_text("\n".join([*lines[:2], "val_0.JPEG\tn99999999\t0\t0\t1\t1"]) + "\n")
    assert f"{notes} line 3:" in one_line_error(load_tiny_imagenet, tmp_path, seed=0)
    notes.write_text("\n".join([*lines[:1], "missing.JPEG\tn02123045\t0\t0\t1\t1"]) + "\n")
    assert "missing.JPEG does not exist" in one_line_error(load_tiny_imagenet, tmp_path, seed=0)


@pytest.mark.parametrize(
    ("dataset", "key", "size", "train_len"),
    [("caltech101", "caltech101", 32, 8), ("cifar10", "cifar10", 32, 20), ("mnist", "mnist", 28, 20)],
)
def test_registry_builds_each_dataset(datasets, dataset, key, size, train_len):
    """build_datasets over our loaders: limit_per_class reads labels without decoding, presets get uint8 CHW."""
    root, _ = datasets[key]
    cfg = DataConfig(name=dataset, data_dir=root, limit_per_class=2, input_size=size, download=False)
    bundle = build_datasets(cfg, "mlp", seed=0)
    assert len(bundle.train) == train_len and len(bundle.class_names) == len(set(bundle.class_names))
    img, label = bundle.val[0]
    assert img.shape == (3, size, size) and img.dtype == torch.float32 and 0 <= label < len(bundle.class_names)
    # folders of arbitrary images have their facts measured on the training split; known data sets fixed ones
    assert bundle.facts.measured_on == (32 if dataset == "caltech101" else 0)
    pre, facts = bundle.preprocessing, bundle.facts
    assert pre.mean == list(facts.mean) and pre.std == list(facts.std) and pre.channels == facts.channels


# --- End to end through the trainer CLI ----------------------------------------------------------------


def run_train(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [str(PYTHON), "training/train.py", "--epochs", "1", "--model", "mlp", "--batch-size", "8", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


@pytest.mark.slow
@pytest.mark.parametrize(
    ("dataset", "key", "extra"),
    [
        ("mnist", "mnist-gz", []),  # stands for the torchvision family (cifar10: registry test above)
        ("caltech101", "caltech101", ["--input-size", "32"]),
        ("imagefolder", "imagefolder", ["--input-size", "32"]),
        ("tiny-imagenet", "tiny-imagenet", ["--input-size", "32"]),
    ],
)
def test_train_cli_on_each_loader(datasets, tmp_path, dataset, key, extra):
    root, _ = datasets[key]
    result = run_train("--dataset", dataset, "--data-dir", str(root), "--output-dir", str(tmp_path / "run"), *extra)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "run" / "summary.json").is_file()


@pytest.mark.slow
def test_train_cli_mnist_offline_is_one_line_exit_2(tmp_path):
    """Relies on the download failing: this machine has no internet, and the proxy is set to a closed port."""
    result = run_train(
        "--dataset",
        "mnist",
        "--data-dir",
        str(tmp_path / "data"),
        "--output-dir",
        str(tmp_path / "run"),
        env=NO_NETWORK,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: MNIST not found under")
    assert all(f"MNIST/raw/{n}(.gz)" in lines[0] for n in MNIST_FILES) and "download needs internet" in lines[0]
