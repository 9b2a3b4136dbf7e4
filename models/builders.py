"""Build the classifier for an architecture name; the checkpoint stores the name and options to rebuild it."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum

from convserve.common.errors import ConvserveError, first_line
from convserve.models.activations import swap_activations
from convserve.models.mlp import MLP

# AlexNet's features shrink a 62 px image to nothing (the third max-pool sees a 2x2 map).
ARCH_MIN_INPUT = {"alexnet": 63, "resnet18": 16, "resnet34": 16, "mlp": 8}
# The input size to pick when the dataset's native size is below the architecture's minimum.
ARCH_SMALL_INPUT = {"alexnet": 64, "resnet18": 32, "resnet34": 32, "mlp": 8}


def resolve_input_size(arch: str, dataset_size: int, requested: int | None) -> int:
    minimum = ARCH_MIN_INPUT[arch]
    if requested is not None:
        if requested < minimum:
            raise ConvserveError(f"{arch} needs an input size of at least {minimum} px, got {requested}")
        return requested
    return max(dataset_size, ARCH_SMALL_INPUT[arch])


def load_pretrained(arch: str, weights: WeightsEnum | None = None, instead: str = "drop --pretrained") -> nn.Module:
    """torchvision's ``arch`` with its ImageNet ``weights`` (default: torchvision's DEFAULT set).

    Weights it cannot load (no internet and no cached file, or a damaged file) are a one-line error that names
    the file, the folder torch looks in for it, and ``instead``: how to go on without them.
    """
    weights = torchvision.models.get_model_weights(arch).DEFAULT if weights is None else weights
    try:
        return torchvision.models.get_model(arch, weights=weights)
    # URLError is an OSError; a damaged or truncated cached file is one of the others
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        file = Path(urlparse(weights.url).path).name
        folder = Path(torch.hub.get_dir()) / "checkpoints"  # follows $TORCH_HOME, as the download does
        raise ConvserveError(
            f"cannot load torchvision's ImageNet weights for {arch} ({weights}): {first_line(exc)}; "
            f"without internet, place {file} in {folder} or {instead}"
        ) from None


def _resnet(arch: str, num_classes: int, small_stem: bool, pretrained: bool) -> nn.Module:
    model = load_pretrained(arch) if pretrained else torchvision.models.get_model(arch, weights=None)
    if small_stem:
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def _alexnet(num_classes: int, dropout: float, pretrained: bool) -> nn.Module:
    if pretrained:
        model = load_pretrained("alexnet")
        model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, num_classes)
        return model
    return torchvision.models.alexnet(weights=None, num_classes=num_classes, dropout=dropout)


def build_model(
    arch: str,
    num_classes: int,
    input_size: int,
    activation: str = "relu",
    small_input_stem: bool | None = None,
    dropout: float = 0.5,
    pretrained: bool = False,
    init: str = "default",
) -> tuple[nn.Module, dict[str, Any]]:
    """Return the model and the options needed to rebuild it (stored in the checkpoint)."""
    if arch not in ARCH_MIN_INPUT:
        raise ConvserveError(f"unknown model {arch!r}; choose one of {', '.join(ARCH_MIN_INPUT)}")
    resolve_input_size(arch, input_size, input_size)
    options: dict[str, Any] = {"input_size": input_size, "dropout": dropout}
    if arch == "alexnet":
        model = _alexnet(num_classes, dropout, pretrained)
    elif arch.startswith("resnet"):
        small = input_size <= 64 if small_input_stem is None else small_input_stem
        options["small_input_stem"] = small
        model = _resnet(arch, num_classes, small, pretrained)
    else:
        if pretrained:
            raise ConvserveError("the mlp baseline has no pretrained weights")
        model = MLP(in_features=3 * input_size * input_size, num_classes=num_classes, dropout=dropout)
    swap_activations(model, activation)
    if init == "kaiming" and not pretrained:
        kaiming_init(model)
    return model, options


def kaiming_init(model: nn.Module) -> None:
    """He-normal for every layer that feeds a ReLU; the classifier's last layer starts at zero."""
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    for m in layers:
        nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    # He's gain on the logits too made AlexNet's first loss 9.3 instead of ln(10) = 2.30 on digits (batch 32, seed
    # 0); at batch 128 the first two epochs stayed at chance. Zero logits start every class equal; the first step's
    # gradient reaches this layer and the next the rest.
    nn.init.zeros_(layers[-1].weight)


def model_from_checkpoint(ckpt: Any) -> nn.Module:
    """Rebuild the eager model of a loaded ``Checkpoint`` and load its weights (strictly)."""
    opts = ckpt.model_options
    model, _ = build_model(
        ckpt.arch,
        ckpt.num_classes,
        int(opts.get("input_size", ckpt.preprocessing.input_size)),
        activation=ckpt.activation,
        small_input_stem=opts.get("small_input_stem"),
        dropout=float(opts.get("dropout", 0.5)),
    )
    try:
        model.load_state_dict(ckpt.model_state, strict=True)
    except RuntimeError as exc:
        raise ConvserveError(f"checkpoint weights do not fit a {ckpt.arch}: {first_line(exc)}") from None
    return model.eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def dummy_input(input_size: int, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, input_size, input_size)
