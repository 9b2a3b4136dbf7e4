import pytest
import torch
from torch import nn

from common.errors import ConvserveError
from training.models import build_model, resolve_input_size


@pytest.mark.parametrize("size", [63, 64, 224])
def test_alexnet_runs_from_its_minimum_size(size):
    model, _ = build_model("alexnet", 10, size)
    assert model.eval()(torch.randn(1, 3, size, size)).shape == (1, 10)


def test_alexnet_below_minimum_is_a_clear_error():
    with pytest.raises(ConvserveError, match="at least 63 px"):
        resolve_input_size("alexnet", 32, 32)
    with pytest.raises(ConvserveError, match="at least 63 px"):
        build_model("alexnet", 10, 32)


def test_small_data_gets_a_size_that_works():
    assert resolve_input_size("alexnet", 28, None) == 64
    assert resolve_input_size("resnet18", 28, None) == 32
    assert resolve_input_size("resnet34", 224, None) == 224


def test_resnet_small_stem_keeps_resolution():
    model, options = build_model("resnet18", 10, 32)
    assert options["small_input_stem"] is True
    assert model.conv1.stride == (1, 1) and isinstance(model.maxpool, nn.Identity)
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    big, options = build_model("resnet34", 5, 224)
    assert options["small_input_stem"] is False and big.conv1.stride == (2, 2)


@pytest.mark.parametrize(("name", "cls"), [("sigmoid", nn.Sigmoid), ("tanh", nn.Tanh), ("gelu", nn.GELU)])
@pytest.mark.parametrize("arch", ["alexnet", "resnet18", "mlp"])
def test_activation_swap_replaces_every_relu(arch, name, cls):
    model, _ = build_model(arch, 10, 64, activation=name)
    kinds = {type(m) for m in model.modules()}
    assert nn.ReLU not in kinds and cls in kinds


def test_pretrained_without_internet_is_a_clear_error(monkeypatch, tmp_path):
    # No internet here: torchvision's weight download fails, which is exactly the offline case users hit.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ConvserveError, match="cannot load torchvision's ImageNet weights for resnet18"):
        build_model("resnet18", 10, 64, pretrained=True)
