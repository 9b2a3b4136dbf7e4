"""BatchAffine: the digits policy's random affine jitter, applied to whole normalised batches."""

from __future__ import annotations

import torch

from convserve.common.preprocessing import Preprocessing
from convserve.training.data.presets import BatchAffine, BatchCollate, TrainPreset

PRE = Preprocessing(input_size=16, resize_size=16, mean=[0.3] * 3, std=[0.4] * 3, channels=1)
BLACK = (0.0 - 0.3) / 0.4


def batch() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(4, 3, 16, 16)


def test_no_jitter_is_the_identity():
    x = batch()
    assert torch.allclose(BatchAffine(PRE, 0.0, 0.0, (1.0, 1.0))(x), x, atol=1e-5)


def test_uncovered_areas_get_black_and_content_moves():
    x = batch()
    shrunk = BatchAffine(PRE, 0.0, 0.0, (0.5, 0.5))(x)  # half size, centred: the border is uncovered
    assert torch.allclose(shrunk[..., :3, :], torch.full_like(shrunk[..., :3, :], BLACK))
    assert torch.allclose(shrunk[..., :, -3:], torch.full_like(shrunk[..., :, -3:], BLACK))
    assert not torch.allclose(shrunk[..., 6:10, 6:10], x[..., 6:10, 6:10])


def test_each_image_gets_its_own_draw_and_seeds_repeat():
    aug = BatchAffine(PRE, 10.0, 0.1, (0.9, 1.1))
    same = batch()[:1].expand(4, -1, -1, -1)
    torch.manual_seed(1)
    first = aug(same)
    assert not torch.allclose(first[0], first[1])
    torch.manual_seed(1)
    assert torch.equal(aug(same), first)


def test_only_the_digits_policy_jitters_batches():
    assert isinstance(TrainPreset(PRE, "digits").batch_transform, BatchAffine)
    assert TrainPreset(PRE, "digits", augment=False).batch_transform is None
    assert TrainPreset(PRE, "small").batch_transform is None


def test_collate_stacks_then_transforms():
    samples = [(torch.zeros(3, 16, 16), 1), (torch.ones(3, 16, 16), 2)]
    images, labels = BatchCollate(lambda b: b + 1)(samples)
    assert images.shape == (2, 3, 16, 16) and torch.equal(images[1], torch.full((3, 16, 16), 2.0))
    assert labels.tolist() == [1, 2]
