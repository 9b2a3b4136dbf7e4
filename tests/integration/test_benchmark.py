"""The benchmark harness end to end in quick mode: real exports, real ONNX Runtime / TorchScript / eager in fresh
processes, real TorchServe (convserve's handler and the stock image_classifier). Figures are never asserted,
only that the run completes and its outputs are complete and consistent with each other.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from convserve.artifact.card import read_card
from convserve.benchmarking.charts import CHART_FILES
from convserve.benchmarking.results import BASELINE, BenchmarkResults
from convserve.benchmarking.stock import model_source, stock_unsupported
from convserve.common.errors import ConvserveError
from convserve.common.preprocessing import Preprocessing
from convserve.loadtest.latency_stats import LatencyStats
from convserve.models.builders import build_model
from convserve.models.checkpoint import Checkpoint, save_checkpoint
from tests.serving_helpers import build_artifact

REPO = Path(__file__).resolve().parents[2]
IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "benchmarking" / "benchmark.py"), *args]
    environment = {**os.environ, **(env or {})}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1500, env=environment)


def all_stats(res: BenchmarkResults) -> list[LatencyStats]:
    out = []
    for r in res.inprocess:
        out += [r.model_b1, r.end_to_end_b1, r.decode, r.preprocess, *[p.batch_latency for p in r.throughput]]
    for s in res.served:
        out += [load.latency for load in s.loads]
    return out


def assert_consistent(res: BenchmarkResults) -> None:
    for stats in all_stats(res):
        assert stats.count > 0
        assert stats.min_ms <= stats.p50_ms <= stats.p90_ms <= stats.p95_ms <= stats.p99_ms <= stats.max_ms
    for r in res.inprocess:
        assert r.model_b1_cpu_ms >= 0 and r.end_to_end_cpu_ms >= 0 and r.peak_rss_mb >= r.rss_before_load_mb
    for served in res.served:
        assert served.latency_c1 in served.loads and served.latency_c1.concurrency == 1
        assert [c.concurrency for c in served.cpu] == res.settings.concurrencies
        assert all(c.worker_ms_per_request >= 0 and c.requests > 0 for c in served.cpu)
        assert [load.concurrency for load in served.loads] == res.settings.concurrencies
        for load in served.loads:
            assert load.ok + sum(load.errors.values()) == load.completed <= load.sent
        workers = [m for m in served.memory if m.role == "worker"]
        assert len(workers) == served.workers and all(m.rss_mb > 0 and m.peak_rss_mb >= m.rss_mb for m in workers)
        assert [m for m in served.memory if m.role == "frontend"]
    assert {t.name for t in res.targets} == {
        "best_b1_vs_weight_read_floor",
        "onnx_b1_p50_vs_eager",
        "served_p50_vs_stock",
        "served_throughput_vs_stock",
        "onnx_worker_rss_vs_eager",
    }
    for t in res.targets:
        assert (t.met is None) == (t.measured is None)


def assert_outputs(folder: Path) -> BenchmarkResults:
    res = BenchmarkResults.model_validate_json((folder / "results.json").read_text())
    for name in CHART_FILES:
        with Image.open(folder / name) as img:
            assert img.format == "PNG" and img.width > 300 and img.height > 200
            img.verify()
    md = (folder / "results.md").read_text()
    assert "Load average" in md and res.machine.cpu_model in md and "## Targets" in md and "## Floors" in md
    assert f"{res.machine.usable_cpus} usable" in md
    if res.floors is not None:  # the rates measured in this run, stated with the floors they give
        assert f"**{res.floors.read_gbs:.2f} GB/s**" in md and f"fp32 {res.floors.matmul_gflops['fp32']:.1f}" in md
    return res


def assert_measured_floors(res: BenchmarkResults) -> None:
    """The floor target is the best p50 over the fp32 weight-read floor measured in this very run."""
    fl = res.floors
    assert fl is not None and fl.read_gbs > 0 and fl.matmul_gflops["fp32"] > 0 and fl.flops_per_image > 0
    assert fl.threads == res.inprocess[0].threads
    assert fl.weight_read_ms["fp32"] == pytest.approx(res.model.fp32_weights_mb / fl.read_gbs)
    assert fl.compute_ms["fp32"] == pytest.approx(fl.flops_per_image / 1e6 / fl.matmul_gflops["fp32"])
    assert set(fl.weight_mb) == {"fp32", *(f.format for f in read_card(Path(res.artifact)).files)}
    best = min(r.model_b1.p50_ms for r in res.inprocess)
    check = next(t for t in res.targets if t.name == "best_b1_vs_weight_read_floor")
    assert check.measured == pytest.approx(best / fl.fp32_read_ms)


@pytest.mark.slow
def test_quick_benchmark_of_a_digits_checkpoint(digits_run, tmp_path):
    ckpt = digits_run("mlp", 2) / "checkpoints" / "best.pt"
    out = tmp_path / "out"
    args = ["--checkpoint", str(ckpt), "--quick", "--output-dir", str(out), "--work-dir", str(tmp_path / "work")]
    # torchscript is measured in-process; served, it takes the same path as onnx and eager (one server less)
    done = run_cli(*args, "--served-kinds", "onnx", "eager", "stock", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    res = assert_outputs(out)
    assert_consistent(res)

    backends = [r.backend for r in res.inprocess]
    assert backends[0] == BASELINE and set(backends) == {"eager", "onnx", "torchscript", "onnx-int8"}
    assert not res.inprocess_failures
    assert_measured_floors(res)
    assert {(s.kind, s.handler) for s in res.served} == {("onnx", "convserve"), ("eager", "convserve")}
    assert all(s.errors == {} for s in res.served)
    # the stock handler feeds 224 px ImageNet RGB: not this 32 px grayscale model, and the run says so
    (skip,) = res.served_skipped
    assert skip.kind == "stock" and "224" in skip.reason
    assert {t.name: t.met for t in res.targets}["served_p50_vs_stock"] is None

    # ratios are against eager, computed from the figures in the same file
    by = {(r.stage, r.subject, r.metric): r for r in res.ratios}
    eager = res.inprocess[0]
    for r in res.inprocess:
        ratio = by[("inprocess", r.backend, "model_b1_p50_ms")]
        assert ratio.reference == BASELINE
        assert ratio.value == pytest.approx(r.model_b1.p50_ms / eager.model_b1.p50_ms)
    served_eager = next(s for s in res.served if s.kind == "eager")
    onnx = next(s for s in res.served if s.kind == "onnx")
    key = ("served", f"onnx ({onnx.batching.label})", "worker_rss_mb")
    assert by[key].value == pytest.approx(onnx.worker_rss_mb / served_eager.worker_rss_mb)

    # the artifact is the exporter's, parity-checked; a second run refuses to overwrite the results
    card = read_card(Path(res.artifact))
    assert all(f.parity is None or f.parity.passed for f in card.files)
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 2 and again.stderr.startswith("error:") and "exists" in again.stderr


def imagenet_style_run(folder: Path) -> Path:
    """A real checkpoint of an untrained ResNet18 with the stock handler's preprocessing (224 px, ImageNet stats)."""
    torch.manual_seed(0)
    model, options = build_model("resnet18", 10, 224)
    ckpt = Checkpoint(
        arch="resnet18",
        num_classes=10,
        class_names=[f"class-{i}" for i in range(10)],
        preprocessing=Preprocessing(input_size=224, resize_size=256, channels=3, **IMAGENET),
        activation="relu",
        model_options=options,
        model_state=model.state_dict(),
        dataset="random",
    )
    save_checkpoint(ckpt, folder / "checkpoints" / "best.pt")
    return folder


@pytest.mark.slow
def test_stock_reference_served_next_to_ours(tmp_path):
    artifact = build_artifact(imagenet_style_run(tmp_path / "run"), tmp_path / "artifact", ("onnx", "eager"))
    out = tmp_path / "out"
    args = ["--artifact", str(artifact), "--quick", "--output-dir", str(out), "--stages", "served"]
    done = run_cli(*args, "--served-kinds", "onnx", "stock", "--concurrency", "1", "2", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    res = assert_outputs(out)
    assert_consistent(res)
    assert not res.inprocess and not res.served_skipped
    assert res.floors is None  # no in-process stage: nothing to hold against a floor, no seconds spent on it
    stock = next(s for s in res.served if s.kind == "stock")
    assert stock.handler == "stock image_classifier" and stock.errors == {} and stock.latency_c1.ok > 0
    checks = {t.name: t for t in res.targets}
    assert checks["served_p50_vs_stock"].measured == pytest.approx(
        next(s for s in res.served if s.kind == "onnx").latency_c1.latency.p50_ms / stock.latency_c1.latency.p50_ms
    )
    assert checks["served_throughput_vs_stock"].measured is not None


def test_stock_model_file_rebuilds_the_architecture(tmp_path):
    """model.py as the stock handler imports it: one class, loading our weights strictly."""
    run = imagenet_style_run(tmp_path / "run")
    artifact = build_artifact(run, tmp_path / "artifact", ("eager",))
    card = read_card(artifact)
    assert stock_unsupported(card) is None
    namespace: dict = {"__name__": "model"}
    exec(model_source(card), namespace)  # noqa: S102 - our own generated source
    classes = [v for v in namespace.values() if isinstance(v, type) and v.__module__ == "model"]
    assert len(classes) == 1
    state = torch.load(artifact / "model.pt", weights_only=True)["model_state"]
    classes[0]().load_state_dict(state, strict=True)
    small = card.model_copy(update={"preprocessing": card.preprocessing.model_copy(update={"input_size": 64})})
    assert "input_size" in stock_unsupported(small)


def test_bad_arguments_are_one_line_errors(tmp_path):
    done = run_cli("--checkpoint", str(tmp_path / "missing.pt"), "--output-dir", str(tmp_path / "o"), cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "does not exist" in done.stderr
    done = run_cli("--torchvision", "alexnet", "--server-batching", "x", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("error:")
    done = run_cli("--checkpoint", str(tmp_path / "x.pt"), "--random-weights", "--output-dir", "o", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "goes with --torchvision" in done.stderr


def test_torchvision_without_its_weights_is_one_line_naming_the_fix(tmp_path):
    """As on a machine without internet or cached weights, whether or not this one has either: an empty
    $TORCH_HOME, and a proxy on a closed local port, so urllib's download fails at once."""
    home, out = tmp_path / "torch", tmp_path / "out"
    offline = {"TORCH_HOME": str(home), "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    done = run_cli("--torchvision", "alexnet", "--output-dir", str(out), cwd=tmp_path, env={**offline, "no_proxy": ""})
    assert done.returncode == 2, done.stderr[-3000:]
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("error: cannot load torchvision's ImageNet weights for alexnet") and "refused" in line
    assert f"place alexnet-owt-7be5be79.pth in {home / 'hub' / 'checkpoints'}" in line
    assert "pass --random-weights" in line
    assert not any((out / name).exists() for name in ("results.json", "results.md"))


def test_random_weights_reach_the_export(monkeypatch, tmp_path):
    """--random-weights on the command line → the options → the exporter's torchvision source (which the tables'
    first line then follows through the card: tests/unit/test_bench_floors.py)."""
    import convserve.benchmarking.benchmark as benchmark
    import convserve.benchmarking.suite as suite
    import convserve.export.sources

    seen: dict[str, suite.BenchmarkOptions] = {}

    def stop(opts: suite.BenchmarkOptions) -> None:
        seen["opts"] = opts
        raise ConvserveError("stop here")

    monkeypatch.setattr(benchmark, "run_benchmark", stop)
    for argv, expected in (([], False), (["--random-weights"], True)):
        with pytest.raises(ConvserveError, match="stop here"):
            benchmark.main(["--torchvision", "alexnet", "--output-dir", str(tmp_path), *argv])
        assert seen["opts"].torchvision == "alexnet" and seen["opts"].random_weights is expected

    asked = []

    def source(arch: str, weights_name: str = "IMAGENET1K_V1", random_weights: bool = False):
        asked.append((arch, random_weights))
        raise ConvserveError("stop here")

    monkeypatch.setattr(convserve.export.sources, "torchvision_source", source)
    opts = suite.BenchmarkOptions(output_dir=tmp_path, torchvision="resnet18", random_weights=True)
    with pytest.raises(ConvserveError, match="stop here"):
        suite.export_artifact(opts, tmp_path, ["onnx"], [], say=lambda _: None)
    assert asked == [("resnet18", True)]
