"""Exponential moving average of the weights (timm's ModelEmaV2, torchvision's ``--model-ema``).

Training updates the raw weights; validation, ``best.pt`` and therefore export and serving see the average,
which on small data is steadier than any single step's weights. Updating costs one pass over the weights
(memory traffic of the model's size, large for AlexNet), hence ``every``: the average is updated once every
``every`` steps.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    def __init__(self, model: nn.Module, decay: float, every: int = 1):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay, self.every, self.steps = decay, every, 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self._source = model
        self._pairs = self._float_pairs()

    def _float_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        ours = list(self.model.state_dict().values())
        theirs = list(self._source.state_dict().values())
        floats = [i for i, t in enumerate(ours) if t.is_floating_point()]
        return [ours[i] for i in floats], [theirs[i] for i in floats]

    def current_decay(self) -> float:
        # timm's warm-up: early averages would otherwise be dominated by the random initial weights
        updates = self.steps // self.every
        return min(self.decay, (1 + updates) / (10 + updates))

    @torch.no_grad()
    def step(self) -> None:
        """Call after every optimizer step."""
        self.steps += 1
        if self.steps % self.every:
            return
        ours, theirs = self._pairs
        torch._foreach_lerp_(ours, theirs, 1.0 - self.current_decay())
        for name, buf in self.model.named_buffers():  # integer buffers (BatchNorm's counters) are copied
            if not buf.is_floating_point():
                buf.copy_(self._source.get_buffer(name))

    def load(self, average_state: dict[str, torch.Tensor], steps: int) -> None:
        """Restore from a checkpoint (the average's weights and how many steps it has seen)."""
        self.model.load_state_dict(average_state)  # copies in place: the tensors in _pairs stay the ones used
        self.steps = steps
