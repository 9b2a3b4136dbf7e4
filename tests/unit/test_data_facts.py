"""Facts measured on the data for folders of arbitrary images (imagefolder, caltech101), on real images on disk:
sklearn's digits as 28x28 grayscale PNGs, crops of scikit-image's sample photos as JPEGs."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from convserve.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from convserve.training.config import DataConfig
from convserve.training.data import facts as facts_module
from convserve.training.data.facts import describe, facts_from_sample, measure_facts, sample_indices
from convserve.training.data.folders import load_imagefolder
from convserve.training.data.presets import BatchAffine
from convserve.training.data.registry import build_datasets, preprocessing_for
from tests.conftest import PYTHON, REPO
from tests.fixture_datasets import (
    mnist_like_digits,
    photo_crops,
    write_caltech101,
    write_digit_folder,
    write_imagefolder,
)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, tuple[Path, object]]:
    root = tmp_path_factory.mktemp("facts")
    return {
        "digits": (root / "digits", write_digit_folder(root / "digits")),
        "digits-rgb": (root / "digits-rgb", write_digit_folder(root / "digits-rgb", {"train": 3, "val": 1}, rgb=True)),
        "photos": (
            root / "photos",
            write_imagefolder(root / "photos", {"train": 5, "val": 1}, max_side=640, large=True),
        ),
        "caltech101": (root / "caltech", write_caltech101(root / "caltech")),
    }


def train_steps(bundle) -> list[type]:
    return [type(t) for t in bundle.train.transform.transforms.transforms]


def test_digit_pngs_train_as_digits(folders, caplog):
    root, written = folders["digits"]
    caplog.set_level(logging.INFO, logger="convserve.training")
    bundle = build_datasets(DataConfig(name="imagefolder", data_dir=root), "alexnet", seed=0)
    facts, pre = bundle.facts, bundle.preprocessing
    assert (facts.native_size, facts.channels, facts.policy, facts.measured_on) == (28, 1, "digits", 100)
    pixels = written["train"] / 255.0  # 100 images, fewer than the sample: all of them are measured
    assert pre.mean == pytest.approx([pixels.mean()] * 3, abs=1e-4)
    assert pre.std == pytest.approx([pixels.std()] * 3, abs=1e-4)
    # 28 px raised to AlexNet's minimum; no 0.875 eval crop, which is for photos
    assert (pre.input_size, pre.resize_size, pre.channels) == (64, 64, 1)
    steps = train_steps(bundle)
    assert v2.RandomResizedCrop not in steps and v2.RandomHorizontalFlip not in steps
    assert isinstance(bundle.train_batch_transform, BatchAffine)
    img, _ = bundle.train[0]
    assert img.shape == (3, 64, 64)
    line = f"data facts measured on 100 training images: 28 px, grayscale, mean {pixels.mean():.2f} std "
    assert caplog.messages == [f"{line}{pixels.std():.2f}, policy digits"]


def test_rgb_files_with_equal_channels_are_grayscale(folders):
    root, _ = folders["digits-rgb"]
    facts = measure_facts("imagefolder", load_imagefolder(root, seed=0).train, seed=0)
    assert (facts.channels, facts.policy) == (1, "digits")


def test_large_colour_photos_keep_the_natural_policy(folders):
    root, _ = folders["photos"]
    bundle = build_datasets(DataConfig(name="imagefolder", data_dir=root), "resnet18", seed=0)
    facts, pre = bundle.facts, bundle.preprocessing
    assert (facts.channels, facts.policy, facts.native_size) == (3, "natural", 224)  # photos >= 150 px, capped
    assert (pre.input_size, pre.resize_size) == (224, 256)
    assert len(set(pre.mean)) == 3 and all(0.05 < s < 0.5 for s in pre.std)
    assert v2.RandomResizedCrop in train_steps(bundle) and bundle.train_batch_transform is None


def test_small_colour_images_get_pad_crop_and_flip(folders):
    root, _ = folders["caltech101"]  # crops of at most 64 px, one of them a grayscale JPEG
    bundle = build_datasets(DataConfig(name="caltech101", data_dir=root), "resnet18", seed=0)
    assert (bundle.facts.channels, bundle.facts.policy, bundle.facts.measured_on) == (3, "small", 32)
    size = bundle.facts.native_size
    assert 32 < size < 64 and bundle.preprocessing.input_size == size  # above ResNet's small size: kept
    steps = train_steps(bundle)
    assert v2.RandomCrop in steps and v2.RandomHorizontalFlip in steps and v2.RandomResizedCrop not in steps
    for split in (bundle.train, bundle.val, bundle.test):
        img, label = split[0]
        assert img.shape == (3, size, size) and img.dtype == torch.float32 and 0 <= label < 4


def test_input_size_and_normalisation_still_override(folders):
    root, _ = folders["digits"]
    cfg = DataConfig(name="imagefolder", data_dir=root, input_size=96)
    bundle = build_datasets(cfg, "alexnet", seed=0)
    assert (bundle.preprocessing.input_size, bundle.preprocessing.channels) == (96, 1)
    assert bundle.val[0][0].shape == (3, 96, 96)
    pre = preprocessing_for(bundle.facts, "mlp", None, mean=[0.5], std=[0.25, 0.25, 0.25])
    assert (pre.input_size, pre.mean, pre.std) == (28, [0.5] * 3, [0.25] * 3)


def test_measured_preprocessing_is_what_the_checkpoint_stores(folders, tmp_path):
    root, _ = folders["digits"]
    pre = build_datasets(DataConfig(name="imagefolder", data_dir=root), "mlp", seed=0).preprocessing
    ckpt = Checkpoint("mlp", 10, [str(d) for d in range(10)], pre, "relu", {}, {"w": torch.zeros(1)})
    save_checkpoint(ckpt, tmp_path / "best.pt")
    assert load_checkpoint(tmp_path / "best.pt").preprocessing == pre


def test_facts_from_sample_is_a_plain_computation():
    """Real digits (1 channel) and photo crops (3 channels) as arrays, no files."""
    digits, _ = mnist_like_digits(5, 0)
    views = [d[..., None] for d in digits]
    facts = facts_from_sample("imagefolder", views, [28] * len(views))
    x = digits / 255.0
    assert facts.mean == pytest.approx((x.mean(),) * 3, abs=1e-4) and facts.std == pytest.approx(
        (x.std(),) * 3, abs=1e-4
    )
    assert (facts.channels, facts.native_size, facts.policy) == (1, 28, "digits")
    rng = np.random.default_rng(0)
    crop = photo_crops("astronaut", 1, rng)[0]
    mixed = facts_from_sample("imagefolder", [*views, crop], [28] * len(views) + [min(crop.shape[:2])])
    assert (mixed.channels, mixed.policy, mixed.native_size) == (3, "small", 28)  # one colour image: colour
    # the median, not the mean: a few huge images do not make a folder of digits a folder of photos
    assert facts_from_sample("x", views[:3], [28, 28, 4000]).native_size == 28


def test_measurement_decodes_a_seeded_sample_only(folders, monkeypatch):
    root, _ = folders["digits"]
    train = load_imagefolder(root, seed=0).train
    decoded = []
    original = facts_module.decode_rgb_view

    def counting(path, max_side):
        decoded.append(path)
        return original(path, max_side)

    monkeypatch.setattr(facts_module, "decode_rgb_view", counting)
    first = measure_facts("imagefolder", train, seed=0, sample=30)
    assert len(decoded) == 30 and len(set(decoded)) == 30 and first.measured_on == 30
    assert measure_facts("imagefolder", train, seed=0, sample=30) == first
    assert decoded[:30] == decoded[30:]  # deterministic given the seed
    assert sample_indices(100, 30, 1) != sample_indices(100, 30, 0)
    whole = measure_facts("imagefolder", train, seed=0)
    assert abs(first.mean[0] - whole.mean[0]) < 0.03 and first.native_size == whole.native_size == 28


def test_describe_colour_and_fixed_facts(folders):
    root, _ = folders["photos"]
    facts = measure_facts("imagefolder", load_imagefolder(root, seed=0).train, seed=0)
    m, s = facts.mean, facts.std
    assert describe(facts) == (
        f"data facts measured on 20 training images: 224 px, colour, mean {m[0]:.2f}/{m[1]:.2f}/{m[2]:.2f} "
        f"std {s[0]:.2f}/{s[1]:.2f}/{s[2]:.2f}, policy natural"
    )
    assert describe(facts_module.FACTS["mnist"]).startswith("data facts of mnist: 28 px, grayscale, mean 0.13")


@pytest.mark.slow
def test_train_cli_on_digit_pngs_prints_and_stores_the_measured_facts(folders, tmp_path):
    root, written = folders["digits"]
    cmd = [str(PYTHON), "training/train.py", "--epochs", "1", "--model", "mlp", "--batch-size", "16"]
    cmd += ["--dataset", "imagefolder", "--data-dir", str(root), "--output-dir", str(tmp_path / "run")]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("data facts")]
    assert len(lines) == 1 and lines[0].startswith("data facts measured on 100 training images: 28 px, grayscale")
    pre = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt").preprocessing
    pixels = written["train"] / 255.0
    assert (pre.input_size, pre.resize_size, pre.channels) == (28, 28, 1)
    assert pre.mean == pytest.approx([pixels.mean()] * 3, abs=1e-4)
