"""Sweep configs: keys, grid expansion, point names, one-line errors; every shipped sweep config validates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from convserve.common.errors import ConvserveError
from convserve.training.analysis.sweep_config import load_sweep, resolve_key
from convserve.training.config import build_config

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


FAKE_TRAINER = """
import json, os, sys, time
out = sys.argv[sys.argv.index("--output-dir") + 1]
os.makedirs(out, exist_ok=True)
start = time.time()
time.sleep(1.0)
info = {"gpus": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start, "end": time.time()}
open(os.path.join(out, "summary.json"), "w").write(json.dumps(info))
"""


def test_points_spread_over_gpu_slots_one_at_a_time_each(tmp_path, monkeypatch):
    """The multi-GPU schedule without GPUs: a stand-in trainer reports the CUDA_VISIBLE_DEVICES it was given.

    Real multi-GPU runs cannot happen on this machine; everything but train.py itself is the real runner.
    """
    from convserve.training.analysis import sweep_runner

    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAINER)
    monkeypatch.setattr(sweep_runner, "TRAIN_ARGS", (str(fake),))
    sweep = load_sweep(write(tmp_path, {"base": {"model": {"arch": "mlp"}}, "grid": {"run.seed": [1, 2, 3, 4, 5]}}))
    out = tmp_path / "sweep"
    outcomes = sweep_runner.run_points(sweep, out, slots=["0", "1"], echo=lambda _: None)
    assert [o.status for o in outcomes] == ["done"] * 5 and {o.action for o in outcomes} == {"ran"}
    runs = [json.loads((out / p.name / "summary.json").read_text()) for p in sweep.points]
    assert {r["gpus"] for r in runs} == {"0", "1"}
    for gpu in ("0", "1"):  # never two points on one GPU at once
        spans = sorted((r["start"], r["end"]) for r in runs if r["gpus"] == gpu)
        assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))
    first, second = sorted(runs, key=lambda r: r["start"])[:2]
    assert second["start"] < first["end"]  # the two GPUs were busy at the same time
    assert all(yaml.safe_load((out / "configs" / f"{p.name}.yaml").read_text()) == p.tree for p in sweep.points)


def test_a_sweep_folder_refuses_a_point_with_changed_settings(tmp_path):
    from convserve.training.analysis.sweep_runner import _write_point_config

    point = load_sweep(write(tmp_path, {"grid": {"lr": [0.1]}})).points[0]
    _write_point_config(tmp_path / "sweep", point)
    _write_point_config(tmp_path / "sweep", point)  # the same settings again: fine
    point.tree["run"] = {"epochs": 99}
    with pytest.raises(ConvserveError, match="already ran point lr-0.1 with other settings"):
        _write_point_config(tmp_path / "sweep", point)
