"""Analysis commands on real small digits models: predict (local and over real TorchServe), compare, filters,
run plots, sweep, report."""

from __future__ import annotations

import base64
import contextlib
import csv
import importlib
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from convserve.common.errors import ConvserveError, run_cli
from convserve.models.checkpoint import load_checkpoint, save_checkpoint
from convserve.training.analysis.compare_models import compare_checkpoints
from convserve.training.analysis.filters_viz import FILTER_TILE, MAP_TILE, grid_size, write_filter_pictures
from convserve.training.analysis.reports import write_report
from tests.conftest import PYTHON, REPO

pytestmark = pytest.mark.slow
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def cli(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(PYTHON), script if "/" in script else f"training/{script}", *map(str, args)],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, env=dict(os.environ),
    )  # fmt: skip


def run(script: str, *args) -> subprocess.CompletedProcess:
    """The CLI in this process (its main behind run_cli): the same code as ``cli`` without a Python start-up."""
    module = script.removesuffix(".py").replace("/", ".")
    main = importlib.import_module(module if "." in module else f"training.{module}").main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        run_cli(main, [str(a) for a in args])
    return subprocess.CompletedProcess([script, *args], exit_.value.code, out.getvalue(), err.getvalue())


def one_line_error(proc: subprocess.CompletedProcess, needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr


def test_every_run_gets_its_plots(digits_run):
    run_dir = digits_run("mlp", 2)
    for stem in ("curves", "confusion_matrix", "per_class_acc"):
        with Image.open(run_dir / "plots" / f"{stem}.png") as img:
            assert img.format == "PNG" and img.width > 300 and img.height > 200


# ---------------------------------------------------------------- predict


def test_predict_names_the_true_digit(digits_run, digit_images):
    ckpt = digits_run("mlp", 2) / "checkpoints" / "best.pt"
    proc = cli("serving/predict.py", ckpt, *(p for p, _ in digit_images), "--topk", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    answers = json.loads(proc.stdout)
    assert [a["image"] for a in answers] == [str(p) for p, _ in digit_images]
    for answer in answers:
        probs = [t["probability"] for t in answer["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    right = sum(a["top"][0]["label"] == str(label) for a, (_, label) in zip(answers, digit_images, strict=True))
    summary = json.loads((ckpt.parents[1] / "summary.json").read_text())
    assert summary["test_acc1"] > 70 and right >= 7, (right, summary["test_acc1"])


def test_predict_reads_photos_in_any_mode_and_prints_a_table(digits_run, photos, tmp_path):
    ckpt = digits_run("mlp", 2) / "checkpoints" / "best.pt"
    rgba, cmyk = tmp_path / "logo.png", tmp_path / "cmyk.jpg"
    with Image.open(photos["chelsea"]) as im:
        im.convert("RGBA").save(rgba)
        im.convert("CMYK").save(cmyk)
    proc = run("serving/predict.py", ckpt, photos["camera"], rgba, cmyk, photos["chelsea"], "--topk", "2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 4 * 3 and lines[0] == str(photos["camera"])
    assert all(line.strip().startswith(("1. ", "2. ")) and line.endswith("%") for line in lines if line[0] == " ")


def test_training_files_decode_to_the_pixels_serving_decodes(photos, tmp_path):
    from convserve.common.images import decode_image
    from convserve.training.data.image_files import decode_rgb

    with Image.open(photos["chelsea"]) as im:
        im.load()
    variants = {"jpeg": photos["chelsea"].read_bytes(), "gray-png": photos["camera"].read_bytes()}
    for mode, fmt in (("RGBA", "PNG"), ("CMYK", "JPEG"), ("P", "PNG"), ("LA", "PNG"), ("RGB", "BMP"), ("RGB", "GIF")):
        buf = io.BytesIO()
        im.convert(mode).save(buf, format=fmt)
        variants[f"{mode}-{fmt}"] = buf.getvalue()
    wide = io.BytesIO()
    Image.fromarray(np.asarray(im.convert("L")).astype(np.uint16) * 257).save(wide, format="PNG")
    variants["gray16-png"] = wide.getvalue()
    for name, data in variants.items():
        path = tmp_path / f"{name}.img"
        path.write_bytes(data)
        assert torch.equal(decode_rgb(path), decode_image(data, 3)), name


def test_predict_bad_input_is_a_one_line_error(digits_run, tmp_path, digit_images):
    ckpt = digits_run("mlp", 2) / "checkpoints" / "best.pt"
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    one_line_error(run("serving/predict.py", ckpt, text), "cannot decode image")
    one_line_error(run("serving/predict.py", tmp_path / "missing.pt", digit_images[0][0]), "does not exist")
    one_line_error(run("serving/predict.py", ckpt, tmp_path / "absent.png"), "cannot read image")


def test_predict_answers_the_same_from_checkpoint_artifact_and_torchserve(digits_run, digit_images, photos, tmp_path):
    from convserve.serving.archive_builder import build_archive
    from convserve.serving.server_lifecycle import free_port
    from convserve.serving.torchserve_process import ServerSettings, TorchServeProcess
    from tests.serving_helpers import build_artifact

    run_dir = digits_run("mlp", 2)
    artifact = build_artifact(run_dir, tmp_path / "artifact", ("onnx",))
    build_archive(artifact, "digits", tmp_path / "store", backend="onnx")
    images = [*(p for p, _ in digit_images[:6]), photos["camera"], photos["chelsea"]]
    local = {
        "checkpoint": run("serving/predict.py", run_dir / "checkpoints" / "best.pt", *images, "--json"),
        "artifact": run("serving/predict.py", artifact, *images, "--json"),
    }
    # a wildcard bind turns TorchServe's token authorization on, so --token is exercised for real
    settings = ServerSettings(
        model_store=tmp_path / "store", models={"digits": "digits.mar"}, host="0.0.0.0", port=free_port(),
        management_port=free_port(), metrics_port=free_port(), run_dir=tmp_path / "ts",
    )  # fmt: skip
    with TorchServeProcess(settings) as server:
        url = server.predictions_url("digits")
        token = server.auth_headers()["Authorization"].removeprefix("Bearer ")
        # --token=KEY: TorchServe's random keys may start with "-", which argparse takes for an option otherwise
        served = cli("serving/predict.py", "--url", url, f"--token={token}", *images, "--json")
        # own process: no proxy settings leaked by other tests
        refused = cli("serving/predict.py", "--url", url, images[0])
    one_line_error(refused, "Token Authorization failed")
    answers = {}
    for how, proc in {**local, "served": served}.items():
        assert proc.returncode == 0, (how, proc.stderr)
        answers[how] = json.loads(proc.stdout)
    for ckpt_answer, art_answer, served_answer in zip(*answers.values(), strict=True):
        labels = [a["top"][0]["label"] for a in (ckpt_answer, art_answer, served_answer)]
        assert labels[0] == labels[1] == labels[2], (ckpt_answer["image"], labels)
        for a, b in ((ckpt_answer, served_answer), (art_answer, served_answer)):
            assert a["top"][0]["probability"] == pytest.approx(b["top"][0]["probability"], abs=1e-4)


# ---------------------------------------------------------------- compare


def test_compare_with_itself_finds_no_disagreement(digits_run):
    ckpt = digits_run("mlp", 2) / "checkpoints" / "best.pt"
    proc = cli("compare.py", ckpt, ckpt, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["disagreements"] == [] and result["count"] == 270
    assert result["a"]["acc1"] == result["b"]["acc1"] and result["a"]["acc5"] == result["b"]["acc5"]
    assert all(r["acc_a"] == r["acc_b"] for r in result["per_class"])
    summary = json.loads((ckpt.parents[1] / "summary.json").read_text())
    assert abs(result["a"]["acc1"] - summary["test_acc1"]) < 1e-9  # the same test split the trainer measured


def test_compare_epoch_1_with_a_longer_run(digits_run):
    short, longer = digits_run("mlp", 1), digits_run("mlp", 2)
    c = compare_checkpoints(short / "checkpoints" / "best.pt", longer / "checkpoints" / "best.pt")
    for side, run_dir in ((c.a, short), (c.b, longer)):
        assert abs(side.acc1 - json.loads((run_dir / "summary.json").read_text())["test_acc1"]) < 1e-9
    correct_a, correct_b = round(c.a.acc1 * c.count / 100), round(c.b.acc1 * c.count / 100)
    # images only one model gets right account exactly for the difference in correct answers
    assert c.b_right_a_wrong - c.a_right_b_wrong == correct_b - correct_a
    assert len(c.disagreements) == c.a_right_b_wrong + c.b_right_a_wrong + c.both_wrong_differently
    assert len(c.disagreements) >= abs(correct_b - correct_a) and c.disagreements
    assert sum(r["count"] for r in c.per_class) == c.count == 270
    d = c.disagreements[0]
    assert d.top5_a[0][0] != d.top5_b[0][0] and len(d.top5_a) == 5 and 0 <= d.index < 270
    text = run("compare.py", short / "checkpoints" / "best.pt", longer / "checkpoints" / "best.pt", "--show", "2")
    assert text.returncode == 0 and f"disagreements (top-1 differs): {len(c.disagreements)} of 270" in text.stdout


def test_compare_refuses_models_of_different_classes(digits_run, tmp_path):
    ckpt = load_checkpoint(digits_run("mlp", 2) / "checkpoints" / "best.pt")
    ckpt.class_names = [f"class {k}" for k in range(10)]
    other = tmp_path / "other.pt"
    save_checkpoint(ckpt, other)
    with pytest.raises(ConvserveError, match="different classes"):
        compare_checkpoints(ckpt.path, other)
    ckpt.dataset = "mnist"
    save_checkpoint(ckpt, other)
    one_line_error(run("compare.py", digits_run("mlp", 2) / "checkpoints" / "best.pt", other), "different datasets")


# ---------------------------------------------------------------- filters


def test_filters_writes_a_grid_per_layer_and_the_feature_maps(digits_run, digit_images, tmp_path):
    run_dir = digits_run("alexnet", 1)
    out = tmp_path / "filters"
    written = write_filter_pictures(run_dir / "checkpoints" / "best.pt", digit_images[0][0], n=6, output_dir=out)
    convs = 5  # torchvision AlexNet
    assert len(written) == convs + 1 + 1 + convs  # filters, layer 1 in RGB, the input, feature maps
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)
    for path in written:
        with Image.open(path) as img:
            expected = (
                grid_size(1, 2 * MAP_TILE) if path.name == "input.png"
                else grid_size(6, MAP_TILE if path.name.startswith("maps_") else FILTER_TILE)
            )  # fmt: skip
            assert img.format == "PNG" and img.mode == "RGB" and img.size == expected, path.name
    with pytest.raises(ConvserveError, match="already holds"):  # never overwritten silently
        write_filter_pictures(run_dir / "checkpoints" / "best.pt", n=6, output_dir=out)
    assert len(write_filter_pictures(run_dir / "checkpoints" / "best.pt", n=6, output_dir=out, force=True)) == convs + 1


def test_filters_cli_default_folder_layers_and_errors(digits_run):
    run_dir = digits_run("alexnet", 1)
    proc = cli("filters.py", run_dir / "checkpoints" / "best.pt", "--layers", "2", "features.0", "--n", "3")
    assert proc.returncode == 0, proc.stderr
    folders = list((run_dir / "filters").iterdir())
    assert len(folders) == 1 and folders[0].name.startswith("best-")
    assert sorted(p.name for p in folders[0].iterdir()) == [
        "filters_01_features.0.png",
        "filters_01_features.0_rgb.png",
        "filters_02_features.3.png",
    ]
    one_line_error(run("filters.py", run_dir / "checkpoints" / "best.pt", "--layers", "9"), "no conv layer '9'")
    one_line_error(run("filters.py", digits_run("mlp", 2) / "checkpoints" / "best.pt"), "has no conv layers")


# ---------------------------------------------------------------- sweep


def read_rows(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as fh:
        return {row["point"]: row for row in csv.DictReader(fh)}


def test_sweep_records_failures_skips_finished_and_resumes_interrupted(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "base": {
                    "model": {"arch": "mlp"},
                    "data": {"data_dir": str(tmp_path / "no-data")},
                    "run": {"epochs": 1, "print_freq": 1000},
                },  # fmt: skip
                # imagefolder needs the (missing) data folder: a point that fails, before one that runs
                "grid": {"dataset": ["imagefolder", "digits"], "optim.lr": [0.02]},
            }
        )
    )
    out, done, failed = tmp_path / "sweep", "dataset-digits_lr-0.02", "dataset-imagefolder_lr-0.02"
    proc = cli("sweep.py", "--config", config, "--output-dir", out)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # a point failed, the sweep went on
    rows = read_rows(out / "results.csv")
    assert list(rows) == [failed, done]
    assert rows[failed]["status"] == "failed" and "not found" in rows[failed]["note"] and not rows[failed]["test_acc1"]
    summary = json.loads((out / done / "summary.json").read_text())
    assert rows[done]["status"] == "done" and rows[done]["action"] == "ran"
    assert float(rows[done]["test_acc1"]) == pytest.approx(summary["test_acc1"])
    assert float(rows[done]["best_val_acc1"]) == pytest.approx(summary["best_val_acc1"])
    assert rows[done]["epochs_done"] == "1" and float(rows[done]["wall_time_s"]) > 0
    assert yaml.safe_load((out / done / "config.yaml").read_text())["optim"]["lr"] == float(rows[done]["optim.lr"])
    table = (out / "results.md").read_text()
    assert f"| {done} | digits | 0.02 | done |" in table and f"| {failed} | imagefolder | 0.02 | failed |" in table
    for metric in ("val_acc1", "train_loss"):
        with Image.open(out / "plots" / f"{metric}.png") as img:
            assert img.format == "PNG"

    # rerun: the finished point is skipped untouched, the failed one tried again (its folder moved aside)
    stamp = (out / done / "summary.json").stat().st_mtime_ns
    proc = run("sweep.py", "--config", config, "--output-dir", out)
    rows = read_rows(out / "results.csv")
    assert proc.returncode == 1 and "finished earlier, skipped" in proc.stdout
    assert (rows[done]["action"], rows[done]["status"]) == ("skipped", "done")
    assert (out / done / "summary.json").stat().st_mtime_ns == stamp
    assert (rows[failed]["action"], rows[failed]["status"]) == ("ran", "failed")
    assert len(list((out / "stale").iterdir())) == 1

    # an interrupted point (checkpoints/last.pt but no summary.json) is resumed, not restarted; the grid may
    # shrink (the failing value dropped) while the remaining point keeps its settings
    (out / done / "summary.json").unlink()
    tree = yaml.safe_load(config.read_text())
    tree["grid"]["dataset"] = ["digits"]
    config.write_text(yaml.safe_dump(tree))
    proc = run("sweep.py", "--config", config, "--output-dir", out)
    rows = read_rows(out / "results.csv")
    assert proc.returncode == 0 and list(rows) == [done]
    assert (rows[done]["action"], rows[done]["status"]) == ("resumed", "done"), proc.stdout
    assert json.loads((out / done / "summary.json").read_text())["test_acc1"] == pytest.approx(summary["test_acc1"])


def test_sweep_bad_config_is_a_one_line_error(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"base": {"model": {"arch": "mlp"}}, "grid": {"optim.learning_rate": [0.1]}}))
    one_line_error(run("sweep.py", "--config", config, "--output-dir", tmp_path / "s"), "optim.learning_rate")
    assert not (tmp_path / "s").exists()


# ---------------------------------------------------------------- report


def test_report_embeds_the_plots_of_each_run(digits_run, tmp_path):
    runs = [digits_run("mlp", 1), digits_run("mlp", 2)]
    out = write_report(runs, tmp_path / "report.html")
    html = out.read_text()
    images = html.split('src="data:image/png;base64,')[1:]
    assert len(images) == 3 * len(runs)
    assert all(base64.b64decode(chunk.split('"', 1)[0]).startswith(PNG_SIGNATURE) for chunk in images)
    for run_dir in runs:
        summary = json.loads((run_dir / "summary.json").read_text())
        assert str(run_dir) in html and f"{summary['test_acc1']:.2f}" in html
    assert html.count("<th>accuracy (%)</th>") == len(runs)  # a per-class table per run
    eights = summary["confusion_matrix"][8]
    assert f"<tr><td>8</td><td>{sum(eights)}</td><td>{eights[8]}</td>" in html
    assert "http" not in html.split("<body>", 1)[1]  # self-contained: nothing fetched from elsewhere
    with pytest.raises(ConvserveError, match="already exists"):
        write_report(runs, out)
    # a run folder without plots/ (e.g. trained before plots existed): drawn in memory, the folder left as it was
    bare = tmp_path / "bare-run"
    bare.mkdir()
    for name in ("metrics.csv", "summary.json", "config.yaml"):
        shutil.copy(runs[0] / name, bare / name)
    proc = cli("report.py", bare)
    assert proc.returncode == 0, proc.stderr
    assert (bare / "report.html").read_text().count('src="data:image/png;base64,') == 3
    assert sorted(p.name for p in bare.iterdir()) == ["config.yaml", "metrics.csv", "report.html", "summary.json"]
    one_line_error(run("report.py", tmp_path), "holds no metrics.csv")
