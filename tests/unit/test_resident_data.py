"""The resident training path (training/data/resident.py), on the CPU: it is the same code a GPU runs. Each
augmented image is a pad-crop (maybe mirrored) of its own source, normalised as the trainer normalises; the
digits policy matches TrainPreset image by image; epochs walk a seeded permutation that ranks shard as
DistributedSampler does; the trainer takes this path for the small datasets and a DataLoader for folders."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as nn_functional
from torch.utils.data import DistributedSampler

from convserve.common.preprocessing import Preprocessing
from convserve.training.data import resident
from convserve.training.data.presets import TrainPreset
from convserve.training.data.resident import BatchTrainPreset, ResidentLoader
from convserve.training.engine.distributed import DistInfo

CPU = torch.device("cpu")


def crops(padded: torch.Tensor, size: int) -> list[torch.Tensor]:
    span = padded.shape[-1] - size + 1
    return [padded[:, dy : dy + size, dx : dx + size] for dy in range(span) for dx in range(span)]


def test_each_image_is_a_crop_of_its_own_padded_source_some_mirrored():
    torch.manual_seed(0)
    batch = torch.arange(40 * 3 * 5 * 5, dtype=torch.float32).view(40, 3, 5, 5) + 1  # every pixel distinct
    out = resident.pad_crop_flip(batch, pad=2)
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


def test_the_small_policy_resizes_normalises_and_pads_with_black():
    pre = Preprocessing(input_size=16, resize_size=16, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.5], channels=3)
    white = torch.full((8, 3, 8, 8), 255, dtype=torch.uint8)
    out = BatchTrainPreset(pre, "small", CPU)(white)
    assert out.shape == (8, 3, 16, 16)
    mean, std = torch.tensor(pre.mean).view(1, 3, 1, 1), torch.tensor(pre.std).view(1, 3, 1, 1)
    is_white = torch.isclose(out, ((1 - mean) / std).expand_as(out), atol=1e-5)
    is_black = torch.isclose(out, (-mean / std).expand_as(out), atol=1e-5)
    assert (is_white | is_black).all()
    assert is_white.any() and is_black.any()  # some images were shifted into the padding (pad 2 at 16 px)


def test_the_digits_policy_is_trainpreset_on_a_whole_batch():
    """Resize, grey to RGB and normalise as TrainPreset does image by image (up to its uint8 rounding after the
    resize), before the same batch affine jitter."""
    pre = Preprocessing(input_size=64, resize_size=64, mean=[0.2] * 3, std=[0.3] * 3, channels=1)
    torch.manual_seed(0)
    batch = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    preset = BatchTrainPreset(pre, "digits", CPU)
    preset.affine = None  # the jitter is the same BatchAffine object on both paths
    ours = preset(batch)
    theirs = torch.stack([TrainPreset(pre, "digits")(img) for img in batch])
    assert ours.shape == theirs.shape == (6, 3, 64, 64)
    assert (ours - theirs).abs().max() <= 1 / 255 / 0.3 + 1e-5  # one grey level (its uint8 rounding), normalised


def test_the_digits_policy_jitters_each_image_on_the_batchs_device():
    pre = Preprocessing(input_size=32, resize_size=32, mean=[0.2] * 3, std=[0.3] * 3, channels=1)
    batch = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8)
    torch.manual_seed(1)
    a = BatchTrainPreset(pre, "digits", CPU)(batch)
    torch.manual_seed(2)
    b = BatchTrainPreset(pre, "digits", CPU)(batch)
    assert a.shape == (4, 3, 32, 32) and not torch.equal(a, b)


def test_an_epoch_is_the_seeded_permutation_randomsampler_draws():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    loader = ResidentLoader(images, torch.arange(10), 3, lambda x: x, CPU, drop_last=True)
    loader.set_epoch(7)
    labels = torch.cat([y for _, y in loader])
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(7))[:9]  # as the DataLoader path
    assert torch.equal(labels, expected) and len(loader) == 3
    for x, y in loader:
        assert torch.equal(x[:, 0, 0, 0].long(), y)  # each label travels with its image
    loader.set_epoch(8)
    assert not torch.equal(torch.cat([y for _, y in loader]), labels)


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_take_the_shards_distributedsampler_would(world):
    images = torch.zeros(11, 1, 2, 2, dtype=torch.uint8)
    shards = []
    for rank in range(world):
        loader = ResidentLoader(images, torch.arange(11), 4, lambda x: x, CPU, DistInfo(rank, world, rank))
        loader.set_epoch(5)
        shards.append(torch.cat([y for _, y in loader]).tolist())
    assert {i for shard in shards for i in shard} == set(range(11))
    assert len({len(shard) for shard in shards}) == 1  # padded by wrapping around: equal steps on every rank
    sampler = DistributedSampler(range(11), world, 0, shuffle=False)
    assert len(shards[0]) == len(sampler)


def test_the_trainer_keeps_small_datasets_resident_and_streams_folders(tmp_path):
    from convserve.training.config import build_config
    from convserve.training.data.registry import build_datasets
    from convserve.training.trainer import make_loaders
    from tests.fixture_datasets import write_imagefolder

    cfg = build_config({}, {"model": "mlp", "dataset": "digits"})
    data = build_datasets(cfg.data, "mlp", 0)
    train, val, test = make_loaders(cfg, data, DistInfo(), CPU)
    assert isinstance(train, ResidentLoader) and train.images.dtype == torch.uint8
    assert len(train.images) == len(data.train) and val is not None and test is not None

    write_imagefolder(tmp_path / "folder", {"train": 5, "val": 1}, max_side=64, large=True)
    cfg = build_config({}, {"model": "mlp", "dataset": "imagefolder", "data_dir": tmp_path / "folder"})
    data = build_datasets(cfg.data, "mlp", 0)
    train, _, _ = make_loaders(cfg, data, DistInfo(), CPU)
    assert not isinstance(train, ResidentLoader)
