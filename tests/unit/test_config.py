from pathlib import Path

import pytest

from common.errors import ConvserveError
from training.config import build_config, dump_config, load_config, read_yaml


def test_defaults_are_alexnet_on_digits():
    cfg = build_config()
    assert (cfg.model.arch, cfg.data.name) == ("alexnet", "digits")


def test_cli_overrides_win_over_yaml(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.5\nrun:\n  epochs: 3\n")
    cfg = load_config(path, {"lr": 0.1, "epochs": None, "model": "mlp"})
    assert cfg.optim.lr == 0.1 and cfg.run.epochs == 3 and cfg.model.arch == "mlp"


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"lr": 0.0}, "optim.lr"),
        ({"lr": -1.0}, "optim.lr"),
        ({"model": "vgg"}, "model.arch"),
        ({"dataset": "imagenet21k"}, "data.name"),
        ({"batch_size": 0}, "run.batch_size"),
        ({"name": "../escape"}, "run.name"),
    ],
)
def test_bad_values_name_the_field(overrides, needle):
    with pytest.raises(ConvserveError) as err:
        build_config(None, overrides)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_unknown_yaml_key_is_refused(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConvserveError, match="optim.learning_rate"):
        load_config(path)


def test_malformed_yaml_is_one_line(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("optim: [unclosed\n")
    with pytest.raises(ConvserveError, match="not valid YAML"):
        load_config(path)


def test_dumped_config_round_trips(tmp_path: Path):
    cfg = build_config(None, {"model": "resnet18", "lr": 0.05, "output_dir": tmp_path / "run"})
    dump_config(cfg, tmp_path / "config.yaml")
    again = build_config(read_yaml(tmp_path / "config.yaml"))
    assert again == cfg


def test_shipped_presets_validate():
    presets = sorted((Path(__file__).parents[2] / "training" / "configs").glob("*.yaml"))
    assert presets, "expected preset configs in training/configs"
    for path in presets:
        load_config(path)


def test_no_flags_is_the_demo_recipe():
    """`python training/train.py` alone trains what make demo trains (both measured to converge)."""
    demo = load_config(Path(__file__).parents[2] / "training" / "configs" / "demo.yaml")
    assert build_config() == demo
    assert (demo.model.init, demo.optim.optimizer, demo.run.precision) == ("kaiming", "adamw", "auto")


def test_each_model_picks_its_recipe_and_a_field_the_user_sets_wins():
    alexnet, resnet, mlp = (build_config(None, {"model": arch}) for arch in ("alexnet", "resnet18", "mlp"))
    assert (alexnet.optim.lr, alexnet.run.batch_size, alexnet.model.init) == (3e-4, 32, "kaiming")
    assert (resnet.optim.lr, resnet.run.batch_size, resnet.model.init) == (1e-3, 64, "default")
    assert (mlp.run.epochs, mlp.model.dropout) == (30, 0.2)
    mine = build_config({"optim": {"lr": 0.02}}, {"model": "alexnet", "batch_size": 8})
    assert (mine.optim.lr, mine.run.batch_size, mine.model.init) == (0.02, 8, "kaiming")
    from_yaml = build_config({"model": {"arch": "mlp", "dropout": 0.4}})
    assert (from_yaml.model.dropout, from_yaml.run.epochs) == (0.4, 30)
