"""WeightAverage: the exponential moving average that validation, best.pt and export see."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convserve.training.engine.ema import WeightAverage


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))


def test_average_follows_the_ema_formula_with_warmup_and_every():
    model = small_model()
    ema = WeightAverage(model, decay=0.9, every=2)
    expected = model[0].weight.detach().clone()
    for step in range(1, 9):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        model[1].num_batches_tracked += 1
        ema.step()
        if step % 2 == 0:
            d = min(0.9, (1 + step // 2) / (10 + step // 2))
            expected = d * expected + (1 - d) * model[0].weight.detach()
    assert torch.allclose(ema.model[0].weight, expected)
    assert not torch.equal(ema.model[0].weight, model[0].weight)  # an average, not a copy
    assert int(ema.model[1].num_batches_tracked) == 8  # integer buffers are copied, not averaged


def test_load_restores_weights_and_step_count():
    model = small_model()
    ema = WeightAverage(model, decay=0.5)
    for _ in range(3):
        with torch.no_grad():
            model[0].bias.add_(1.0)
        ema.step()
    saved = {k: v.clone() for k, v in ema.model.state_dict().items()}
    other = WeightAverage(small_model(), decay=0.5)
    other.load(saved, ema.steps)
    assert other.steps == 3 and other.current_decay() == ema.current_decay()
    assert all(torch.equal(other.model.state_dict()[k], v) for k, v in saved.items())
    other.step()  # after a load the average keeps following its own source model
    assert not torch.equal(other.model[0].bias, saved["0.bias"])


@pytest.mark.parametrize("decay", [0.0, 1.0])
def test_decay_outside_the_open_interval_is_refused(decay):
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(small_model(), decay=decay)
