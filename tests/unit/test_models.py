import socket
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision
from torch import nn

from convserve.common.errors import ConvserveError
from convserve.models import build_model, resolve_input_size


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


def offline(monkeypatch, torch_home: Path) -> list[str]:
    """This process as on a machine without internet and with an empty torch cache, whether or not this one has
    either: $TORCH_HOME is an empty folder and every weight download fails with the URLError urllib raises when
    no name resolves. Returns the URLs asked for, so a test can tell the download was really attempted."""
    asked: list[str] = []

    def no_network(url: str, dst: str, *args, **kwargs) -> None:
        asked.append(url)
        raise URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return asked


def test_pretrained_without_internet_is_a_clear_error(monkeypatch, tmp_path):
    asked = offline(monkeypatch, tmp_path)
    with pytest.raises(ConvserveError) as info:
        build_model("resnet18", 10, 64, pretrained=True)
    message = str(info.value)
    assert asked == [torchvision.models.ResNet18_Weights.DEFAULT.url]
    assert "\n" not in message and message.startswith("cannot load torchvision's ImageNet weights for resnet18")
    assert "Temporary failure in name resolution" in message  # the cause, in one line
    # the fix: which file, where torch looks for it (it follows $TORCH_HOME), or go on without pretraining
    assert f"place resnet18-f37072fd.pth in {tmp_path / 'hub' / 'checkpoints'} or drop --pretrained" in message


def test_a_damaged_cached_weights_file_is_a_clear_error(monkeypatch, tmp_path):
    offline(monkeypatch, tmp_path)
    cached = tmp_path / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    cached.parent.mkdir(parents=True)
    for content in (b"", b"not a pickle"):  # an interrupted copy; a file that is not torch's
        cached.write_bytes(content)
        with pytest.raises(ConvserveError, match="cannot load torchvision's ImageNet weights for alexnet"):
            build_model("alexnet", 10, 224, pretrained=True)


def test_pretrained_weights_placed_by_hand_are_used_offline(monkeypatch, tmp_path):
    """What the error tells an offline user to do works: the file in $TORCH_HOME/hub/checkpoints is loaded."""
    asked = offline(monkeypatch, tmp_path)
    torch.manual_seed(1)
    trained = torchvision.models.resnet18()
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(trained.state_dict(), folder / "resnet18-f37072fd.pth")
    model, _ = build_model("resnet18", 10, 224, pretrained=True)
    assert asked == []  # nothing was downloaded
    assert torch.equal(model.conv1.weight, trained.conv1.weight)
    assert torch.equal(model.layer4[1].conv2.weight, trained.layer4[1].conv2.weight)
    assert model.fc.out_features == 10  # the head is replaced for the dataset's classes


@pytest.mark.parametrize("arch", ["alexnet", "resnet18", "mlp"])
def test_kaiming_init_starts_every_class_equal_and_the_rest_he_scaled(arch):
    """He-scaled logits started AlexNet at a loss of 9.3 instead of ln 10: the last layer starts at zero."""
    torch.manual_seed(0)
    model, _ = build_model(arch, 10, 64 if arch == "alexnet" else 32, init="kaiming")
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    assert torch.count_nonzero(layers[-1].weight) == 0
    first = layers[0].weight
    assert first.std().item() == pytest.approx((2.0 / first[0].numel()) ** 0.5, rel=0.2)
    logits = model.eval()(torch.randn(4, 3, *([64] * 2 if arch == "alexnet" else [32] * 2)))
    loss = nn.functional.cross_entropy(logits, torch.arange(4))
    assert loss.item() == pytest.approx(torch.log(torch.tensor(10.0)).item(), abs=1e-5)
