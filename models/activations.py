"""Swap every activation module of a model (the seed reports compare ReLU, sigmoid, tanh)."""

from torch import nn

_ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU}


def make_activation(name: str) -> nn.Module:
    return nn.ReLU(inplace=True) if name == "relu" else _ACTIVATIONS[name]()


def swap_activations(model: nn.Module, name: str) -> None:
    """Replace each nn.ReLU in place; ResNet blocks reuse one module per block, which is swapped too."""
    if name == "relu":
        return
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                setattr(parent, child_name, make_activation(name))
