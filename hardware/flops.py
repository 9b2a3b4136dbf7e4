"""FLOPs of one image through a model, as torch's FlopCounterMode counts them (multiply and add = 2)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def flops_per_image(
    model: torch.nn.Module, input_size: int, device: str | torch.device = "cpu", backward: bool = False, batch: int = 1
) -> float:
    """Forward (inference) or forward + backward (training) FLOPs per image, counted once on a small batch.

    Eval mode, so batch-norm statistics and dropout masks are left alone; gradients a backward count leaves
    behind are cleared and the model's train/eval mode is restored.
    """
    was_training = model.training
    model.eval()
    x = torch.zeros(batch, 3, input_size, input_size, device=device)
    counter = FlopCounterMode(display=False)
    if backward:
        with counter:
            model(x).sum().backward()
        model.zero_grad(set_to_none=True)
    else:
        with torch.no_grad(), counter:
            model(x)
    model.train(was_training)
    return float(counter.get_total_flops()) / batch
