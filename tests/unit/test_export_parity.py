"""The parity comparison and the check-image preprocessing, on small real tensors and real image files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from convserve.common.errors import ConvserveError
from convserve.common.preprocessing import Preprocessing
from convserve.export.check_images import image_file_tensor, sample_photos
from convserve.export.parity import FP16, FP32, INT8, compare
from convserve.training.data.presets import EvalPreset

GRAY = Preprocessing(input_size=32, resize_size=36, mean=[0.3] * 3, std=[0.4] * 3, channels=1)
RGB = Preprocessing(input_size=24, resize_size=28, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], channels=3)


def linear_runner(weight: torch.Tensor):
    return lambda batch: batch.flatten(1) @ weight


@pytest.fixture
def setup():
    torch.manual_seed(0)
    images = torch.randn(20, 3, 4, 4)
    weight = torch.randn(48, 10)
    reference = linear_runner(weight)(images).softmax(1)
    return images, weight, reference


def test_the_same_model_passes_at_every_batch_size(setup):
    images, weight, reference = setup
    report = compare(reference, linear_runner(weight), images, [1, 7], FP32)
    assert report.passed and report.max_abs_prob_diff < 1e-6
    assert report.top1_agreement == report.top5_agreement == 1.0 and report.batch_sizes == [1, 7]


def test_a_slightly_different_model_fails_fp32_but_passes_fp16(setup):
    images, weight, reference = setup
    noise = torch.randn_like(weight)  # a constant shift would cancel in the softmax
    report = compare(reference, linear_runner(weight + 1e-2 * noise), images, [1, 16], FP32)
    assert not report.passed and report.max_abs_prob_diff > FP32.tolerance
    assert compare(reference, linear_runner(weight + 1e-3 * noise), images, [16], FP16).passed


def test_a_wrong_model_fails_even_the_int8_criteria(setup):
    images, _, reference = setup
    report = compare(reference, linear_runner(torch.randn(48, 10)), images, [4], INT8)
    assert not report.passed and report.top1_agreement < INT8.min_top1_agreement


def probs_runner(row: list[float]):
    return lambda batch: torch.tensor([row], dtype=torch.float64).log().float()


def test_only_exact_ties_in_the_eager_probabilities_excuse_a_different_top_class():
    reference = torch.tensor([[0.5, 0.5 - 2e-7, 2e-7]])  # classes 0 and 1 tie within float noise
    report = compare(reference, probs_runner([0.5 - 2e-7, 0.5, 2e-7]), torch.zeros(1, 1), [1], FP32)
    assert report.top1_agreement == 1.0 and report.passed
    near = torch.tensor([[0.5, 0.49995, 0.00005]])  # within the 1e-4 tolerance, but not a tie
    report = compare(near, probs_runner([0.49995, 0.5, 0.00005]), torch.zeros(1, 1), [1], FP32)
    assert report.top1_agreement == 0.0 and not report.passed


def test_logit_differences_are_reported_where_probabilities_say_little():
    torch.manual_seed(0)
    logits = 1e-3 * torch.randn(4, 1000)  # a random-weight ImageNet model: near-uniform probabilities
    report = compare(logits.softmax(1), lambda b: logits + 1e-2, torch.zeros(4, 1), [4], FP32, logits)
    assert report.max_abs_prob_diff < 1e-6 and report.max_abs_logit_diff == pytest.approx(1e-2, rel=1e-3)


def test_an_image_file_is_preprocessed_exactly_like_eval_preset(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(pixels).save(path)
    rgb = image_file_tensor(path, RGB)
    expected = EvalPreset(RGB)(torch.from_numpy(pixels).permute(2, 0, 1))
    assert rgb.shape == (3, 24, 24) and torch.equal(rgb, expected)
    gray = image_file_tensor(path, GRAY)
    luma = torch.from_numpy(np.asarray(Image.fromarray(pixels).convert("L")).copy())[None]
    assert gray.shape == (3, 32, 32) and torch.equal(gray, EvalPreset(GRAY)(luma))
    assert torch.equal(gray[0], gray[2])  # grayscale-trained: the channel repeated


def test_a_bad_check_image_is_a_one_line_error(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ConvserveError, match="cannot be decoded"):
        image_file_tensor(path, RGB)
    with pytest.raises(ConvserveError, match="cannot read image .*missing.png"):
        image_file_tensor(tmp_path / "missing.png", RGB)


def test_sample_photos_are_real_preprocessed_images():
    photos = sample_photos(RGB)
    assert photos.shape == (6, 3, 24, 24) and photos.dtype == torch.float32
    assert photos.std() > 0.1 and len({round(float(p.mean()), 4) for p in photos}) == 6
