"""Sweep configs: keys, grid expansion, point names, one-line errors; every shipped sweep config validates."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from training.analysis.sweep_config import load_sweep, resolve_key
from training.config import build_config
from training.errors import ConvserveError

SHIPPED = sorted((Path(__file__).resolve().parents[2] / "training" / "configs" / "sweeps").glob("*.yaml"))


def write(tmp_path: Path, tree: dict, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("key", "dotted"),
    [("lr", "optim.lr"), ("batch_size", "run.batch_size"), ("batch-size", "run.batch_size"), ("model", "model.arch")]
    + [(k, k) for k in ("model.arch", "run.epochs", "optim.optimizer", "model.activation", "data.name", "optim.gamma")],
)
def test_flag_names_and_dotted_paths_resolve(key, dotted):
    assert resolve_key(key) == dotted


def test_grid_expands_to_every_combination_in_order(tmp_path):
    sweep = load_sweep(
        write(
            tmp_path,
            {
                "base": {"model": {"arch": "mlp"}, "run": {"epochs": 1}},
                "grid": {"optimizer": ["sgd", "adam"], "optim.lr": [0.01, 5e-3, 1e-4]},
            },
        )
    )
    assert sweep.name == "sweep" and sweep.keys == ["optim.optimizer", "optim.lr"]
    assert [p.name for p in sweep.points] == [
        "optimizer-sgd_lr-0.01",
        "optimizer-sgd_lr-0.005",
        "optimizer-sgd_lr-0.0001",
        "optimizer-adam_lr-0.01",
        "optimizer-adam_lr-0.005",
        "optimizer-adam_lr-0.0001",
    ]
    last = sweep.points[-1]
    assert last.params == {"optim.optimizer": "adam", "optim.lr": 1e-4}
    cfg = build_config(last.tree)  # the point's tree is a complete, valid TrainConfig: base + its values
    assert (cfg.model.arch, cfg.run.epochs, cfg.optim.optimizer, cfg.optim.lr) == ("mlp", 1, "adam", 1e-4)


def test_the_base_is_not_shared_between_points(tmp_path):
    sweep = load_sweep(write(tmp_path, {"base": {"optim": {"lr": 0.1}}, "grid": {"optim.momentum": [0.0, 0.5]}}))
    assert [p.tree["optim"] for p in sweep.points] == [{"lr": 0.1, "momentum": 0.0}, {"lr": 0.1, "momentum": 0.5}]


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        ({"grid": {"model.colour": ["red"]}}, "unknown grid key 'model.colour'"),
        ({"grid": {"learning_rate": [0.1]}}, "unknown grid key 'learning_rate'"),
        ({"grid": {"lr": [0.1]}, "grids": {}}, "grids: Extra inputs are not permitted"),
        ({"base": {"optim": {"lrr": 0.1}}, "grid": {"lr": [0.1]}}, "optim.lrr: Extra inputs are not permitted"),
        ({"grid": {"lr": [0.1, -1.0]}}, "point lr-1: invalid config: optim.lr"),
        ({"grid": {"model.arch": ["mlp", "vgg"]}}, "point arch-vgg: invalid config: model.arch"),
        ({"grid": {"lr": []}}, "'lr' has no values"),
        ({"grid": {}}, "grid"),
        ({"base": {"run": {"epochs": 2}}}, "grid: Field required"),
        ({"grid": {"output_dir": ["a", "b"]}}, "is set by the sweep"),
        ({"base": {"run": {"name": "x"}}, "grid": {"lr": [0.1]}}, "base.run.name is set by the sweep"),
        ({"grid": {"lr": [0.1], "optim.lr": [0.2]}}, "both set optim.lr"),
    ],
)
def test_bad_sweep_configs_get_one_line_errors(tmp_path, tree, message):
    with pytest.raises(ConvserveError) as err:
        load_sweep(write(tmp_path, tree))
    text = str(err.value)
    assert message in text and "\n" not in text and str(tmp_path / "sweep.yaml") in text


def test_a_missing_or_malformed_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConvserveError, match="cannot read config"):
        load_sweep(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: [unclosed\n")
    with pytest.raises(ConvserveError, match="not valid YAML"):
        load_sweep(bad)


def test_values_that_would_repeat_a_point_name_are_refused(tmp_path):
    with pytest.raises(ConvserveError, match="repeated point names"):
        load_sweep(write(tmp_path, {"grid": {"data.data_dir": ["a/b", "a b"]}}))


def test_shipped_sweeps_cover_the_seed_questions():
    assert SHIPPED, "training/configs/sweeps/ holds no sweep configs"
    swept = {}
    for path in SHIPPED:
        sweep = load_sweep(path)  # validates every point as a TrainConfig
        assert sweep.description and all(build_config(p.tree).data.name == "digits" for p in sweep.points)
        swept[path.stem] = sweep.keys
    assert swept["activations"] == ["model.activation"]
    assert swept["mlp_vs_cnn"] == ["model.arch"]
    assert swept["batch_size"] == ["run.batch_size"]
    assert swept["learning_rate"] == ["optim.lr"]
    assert swept["epochs"] == ["run.epochs"]
