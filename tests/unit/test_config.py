import argparse
from pathlib import Path
from typing import Literal, get_args, get_origin

import pytest

from convserve.common.errors import ConvserveError
from convserve.training.config import (
    ARCHS,
    CLI_OVERRIDES,
    DATASETS,
    FLAG_NAMES,
    NOT_FLAGS,
    OptimConfig,
    TrainConfig,
    build_config,
    dump_config,
    load_config,
    read_yaml,
)
from convserve.training.engine.precision import PRECISIONS
from convserve.training.train import build_parser


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
    assert (alexnet.optim.lr, alexnet.run.batch_size, alexnet.model.init) == (5e-4, 64, "kaiming")
    assert (resnet.optim.lr, resnet.run.batch_size, resnet.model.init) == (1e-3, 64, "default")
    assert (mlp.run.epochs, mlp.model.dropout) == (30, 0.2)
    mine = build_config({"optim": {"lr": 0.02}}, {"model": "alexnet", "batch_size": 8})
    assert (mine.optim.lr, mine.run.batch_size, mine.model.init) == (0.02, 8, "kaiming")
    from_yaml = build_config({"model": {"arch": "mlp", "dropout": 0.4}})
    assert (from_yaml.model.dropout, from_yaml.run.epochs) == (0.4, 30)


def _flag_actions() -> dict[str, argparse.Action]:
    return {option: action for action in build_parser()._actions for option in action.option_strings}


def _fields():
    for section, info in TrainConfig.model_fields.items():
        for leaf, field in info.annotation.model_fields.items():
            yield f"{section}.{leaf}", leaf, field


def test_every_config_field_is_a_flag_with_its_description_as_help():
    """The parser is generated from the models: a field added to training/config.py is a flag at once."""
    actions = _flag_actions()
    for path, leaf, field in _fields():
        if path in NOT_FLAGS:
            continue
        option = "--" + FLAG_NAMES.get(path, leaf).replace("_", "-")
        assert option in actions, f"{path} has no {option}"
        action = actions[option]
        assert CLI_OVERRIDES[action.dest] == path
        assert field.description and action.help.replace("%%", "%") == field.description, path
        if get_origin(field.annotation) is Literal:
            assert action.choices == list(get_args(field.annotation)), path


def test_choices_come_from_the_models_literals():
    actions = _flag_actions()
    assert actions["--optimizer"].choices == list(get_args(OptimConfig.model_fields["optimizer"].annotation))
    assert actions["--model"].choices == list(ARCHS) and actions["--dataset"].choices == list(DATASETS)
    assert actions["--precision"].choices == list(PRECISIONS)


def test_flags_set_their_fields_and_only_given_flags_override():
    args = vars(build_parser().parse_args(
        ["--model", "alexnet", "--momentum", "0.5", "--no-augment", "--mean", "0.5", "--amp", "--deterministic"]
    ))  # fmt: skip
    cfg = build_config(None, {k: v for k, v in args.items() if k not in ("config", "resume")})
    assert (cfg.optim.momentum, cfg.data.augment, cfg.data.mean) == (0.5, False, [0.5])
    assert (cfg.run.precision, cfg.run.deterministic) == ("amp", True)
    assert (cfg.optim.lr, cfg.run.batch_size) == (5e-4, 64)  # not given: AlexNet's recipe, not the field default
    given = vars(build_parser().parse_args(["--lr", "0.02", "--batch-size", "8"]))
    mine = build_config({"optim": {"lr": 0.5}}, {k: v for k, v in given.items() if k not in ("config", "resume")})
    assert (mine.optim.lr, mine.run.batch_size, mine.model.init) == (0.02, 8, "kaiming")


def test_help_shows_the_models_defaults(monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per flag
    text = build_parser().format_help()
    assert "(default: model's recipe, else 0.001)" in text  # --lr: AlexNet's recipe says 5e-4
    assert "(default: adamw)" in text and "short for --precision amp" in text
