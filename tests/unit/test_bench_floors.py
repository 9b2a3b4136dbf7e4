"""The benchmark's floors come from rates measured in the run (convserve.hardware.rates), never from a constant: the
arithmetic on a given MachineRates, the FLOP count, the suite's wiring, and how targets and tables use them.
Also what the tables say first: whether the model measured had trained weights."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from torch import nn

import convserve.benchmarking.suite as suite
from convserve.artifact.card import SourceCard, read_card, write_card
from convserve.benchmarking.comparisons import floor_multiples, inprocess_targets
from convserve.benchmarking.floors import Floors, compute_floors, forward_flops
from convserve.benchmarking.results import BenchmarkResults, InProcessResult, ModelInfo
from convserve.benchmarking.tables import floors_section, machine_section, render_markdown
from convserve.hardware.machine import MachineInfo
from convserve.hardware.rates import MachineRates
from convserve.loadtest.latency_stats import LatencyStats
from tests.serving_helpers import build_artifact, random_run

ROOT = Path(suite.__file__).resolve().parents[1]
PRODUCT = [ROOT / p for p in ("common", "hardware", "training", "export", "serving", "benchmarking")]
DOCS = ROOT / "docs" / "benchmarks"
RATES = MachineRates(device="cpu", threads=2, matmul_gflops={"fp32": 100.0, "bf16": 400.0}, read_gbs=20.0)
WEIGHTS = {"fp32": 244_000_000, "onnx": 244_100_000, "onnx-int8": 61_000_000}


def floors(rates: MachineRates = RATES, flops: float | None = 2e9) -> Floors:
    return compute_floors(rates, flops, WEIGHTS)


def test_weight_read_floor_is_bytes_over_the_measured_bandwidth():
    fl = floors()
    assert fl.read_gbs == 20.0 and fl.threads == 2 and fl.device == "cpu"
    assert fl.weight_mb == {"fp32": 244.0, "onnx": 244.1, "onnx-int8": 61.0}
    assert fl.weight_read_ms == pytest.approx({"fp32": 12.2, "onnx": 12.205, "onnx-int8": 3.05})  # MB / (GB/s)
    faster = floors(MachineRates("cpu", 2, RATES.matmul_gflops, read_gbs=40.0))
    assert faster.fp32_read_ms == pytest.approx(fl.fp32_read_ms / 2)


def test_compute_floor_is_flops_over_the_measured_gemm_rate_at_each_precision():
    fl = floors()
    assert fl.compute_ms == pytest.approx({"fp32": 20.0, "bf16": 5.0})  # 2 GFLOPs at 100 and 400 GFLOP/s
    assert fl.fp32_ms == pytest.approx(20.0)  # compute-bound: slower than the 12.2 ms read
    # each backend's own floor: its file read, or compute at its precision, whichever is slower
    assert fl.backend_ms("onnx") == pytest.approx(20.0)
    assert fl.backend_ms("onnx-int8") == pytest.approx(3.05)  # no int8 rate: the read floor only
    assert floors(flops=None).compute_ms == {} and floors(flops=None).fp32_ms == pytest.approx(12.2)
    with pytest.raises(ValueError, match="bandwidth"):
        floors(MachineRates("cpu", 2, {"fp32": 1.0}, read_gbs=0.0))


def test_forward_flops_counts_one_inference_pass():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
    # conv: 2 x 3 x 4 x 9 per output pixel x 64 pixels; linear: 2 x 256 x 5 (no backward counted)
    assert forward_flops(model, 8) == 2 * 3 * 4 * 9 * 64 + 2 * 256 * 5


def test_the_suite_measures_the_rates_in_the_run_and_floors_follow_them(monkeypatch, tmp_path):
    folder = build_artifact(random_run(tmp_path / "run", input_size=16), tmp_path / "artifact", ("onnx", "eager"))
    card = read_card(folder)
    ckpt = suite.eager_checkpoint(card, folder)
    model = suite.model_info(card, ckpt, "test")
    asked = {}

    def fake_measure(device, threads):
        asked.update(device=device, threads=threads)
        return MachineRates(device, threads, {"fp32": 50.0}, read_gbs=10.0)

    monkeypatch.setattr(suite, "measure_rates", fake_measure)
    settings = suite.run_settings(suite.BenchmarkOptions(output_dir=tmp_path / "out", threads=3, quick=True), "cpu")
    fl = suite.measure_floors(card, ckpt, model, settings, say=lambda _: None)
    assert asked == {"device": "cpu", "threads": 3}  # the backends' thread count
    assert fl.read_gbs == 10.0 and fl.matmul_gflops == {"fp32": 50.0}
    assert fl.weight_read_ms["fp32"] == pytest.approx(model.parameters * 4 / 1e6 / 10.0)
    onnx = card.file("onnx")
    assert fl.weight_read_ms["onnx"] == pytest.approx(onnx.size_bytes / 1e6 / 10.0)
    linears = [m for m in suite.model_from_checkpoint(ckpt).modules() if isinstance(m, nn.Linear)]
    assert fl.flops_per_image == sum(2 * m.in_features * m.out_features for m in linears)
    assert fl.compute_ms["fp32"] == pytest.approx(fl.flops_per_image / 50e9 * 1e3)


def _stats(p50: float) -> LatencyStats:
    return LatencyStats(count=1, mean_ms=p50, min_ms=p50, p50_ms=p50, p90_ms=p50, p95_ms=p50, p99_ms=p50, max_ms=p50)


def results(fl: Floors | None, p50: dict[str, float]) -> BenchmarkResults:
    inprocess = [InProcessResult.model_construct(backend=b, model_b1=_stats(v)) for b, v in p50.items()]
    model = ModelInfo.model_construct(arch="alexnet", fp32_weights_mb=244.0)
    return BenchmarkResults.model_construct(floors=fl, inprocess=inprocess, model=model)


def test_the_floor_target_is_a_multiple_of_the_measured_floor():
    res = results(floors(), {"eager": 30.0, "onnx": 24.0, "onnx-int8": 6.1})
    check = next(t for t in inprocess_targets(res) if t.name == "best_b1_vs_weight_read_floor")
    assert check.measured == pytest.approx(6.1 / 12.2) and check.met is True
    assert "(12.2 ms: 244 MB of fp32 weights" in check.target and "20.00 GB/s, measured in this run" in check.target
    assert "fp32 compute floor 20 ms (2 GFLOPs" in check.detail and "100.0 GFLOP/s" in check.detail
    assert "p50 = 2.00x it" in check.detail  # int8's own floor: 3.05 ms
    assert floor_multiples(res) == pytest.approx({"eager": 1.5, "onnx": 1.2, "onnx-int8": 2.0})
    # the same latencies on a machine measured twice as fast: twice the multiple
    quick = results(floors(MachineRates("cpu", 2, {"fp32": 200.0}, read_gbs=40.0)), {"onnx-int8": 6.1})
    assert next(iter(inprocess_targets(quick))).measured == pytest.approx(2 * check.measured)
    unmeasured = next(iter(inprocess_targets(results(None, {"eager": 30.0}))))
    assert unmeasured.met is None and unmeasured.measured is None


def test_results_md_states_both_floors_and_the_measured_rates():
    md = "\n".join(floors_section(results(floors(), {})))
    assert "**20.00 GB/s**" in md and "fp32 100.0 GFLOP/s, bf16 400.0 GFLOP/s" in md and "2 GFLOPs" in md
    assert "| read fp32 weights | 244 MB | 12.2 |" in md and "| compute at bf16 | 2 GFLOPs | 5 |" in md
    assert "Not measured" in "\n".join(floors_section(results(None, {})))


def test_no_constant_floor_or_bandwidth_and_no_outside_targets_remain():
    for path in (p for package in PRODUCT for p in package.rglob("*.py")):
        text = path.read_text()
        for banned in ("NOMINAL", "nominal_floor", "31.3", "7.8e-3", "brief"):
            assert banned not in text, f"{path}: {banned}"
    for path in DOCS.rglob("*.md"):
        assert not re.search(r"\bbrief\b", path.read_text(), re.IGNORECASE), path


def test_old_results_without_measured_floors_are_refused():
    assert "floors" in BenchmarkResults.model_fields and "nominal_floor_ms" not in BenchmarkResults.model_fields
    with pytest.raises(ValueError, match="schema_version"):
        BenchmarkResults.model_validate({"schema_version": "convserve.benchmark/v1"})


def untrained_results(tmp_path: Path, random_weights: bool) -> BenchmarkResults:
    """Results as the suite builds them from an artifact whose card says (or not) that its weights are random."""
    folder = build_artifact(random_run(tmp_path / "run", input_size=16), tmp_path / "artifact", ("eager",))
    card = read_card(folder)
    source = SourceCard(torchvision_weights="mlp:TEST", random_weights=random_weights, weights_sha256="a" * 64)
    write_card(folder, card.model_copy(update={"source": source}))
    card = read_card(folder)
    model = suite.model_info(card, suite.eager_checkpoint(card, folder), "torchvision:mlp")
    machine = MachineInfo(
        hostname="h", platform="Linux", cpu_model="cpu", logical_cpus=2, affinity_cpus=2, usable_cpus=2, ram_gb=8.0,
        load_average=[0.0, 0.0, 0.0], python="3.11", versions={}, torch_threads=2, torch_interop_threads=2,
        thread_env={},
    )  # fmt: skip
    settings = suite.run_settings(suite.BenchmarkOptions(output_dir=tmp_path / "out", quick=True), "cpu")
    return BenchmarkResults(
        command="python benchmarking/benchmark.py --torchvision mlp --random-weights",
        model=model,
        artifact=str(folder),
        images=[],
        machine=machine,
        settings=settings,
        floors=None,
        notes=card.notes,
    )


def test_a_table_of_an_untrained_model_says_so_in_its_first_line(tmp_path):
    res = untrained_results(tmp_path / "random", random_weights=True)
    assert res.model.random_weights  # from the card's source, through the suite's model_info
    first = render_markdown(res).splitlines()[0]
    assert first.startswith("# Benchmark: mlp-") and "RANDOM WEIGHTS (not trained" in first
    # the same run from the file, as results.md is written from results.json
    reread = BenchmarkResults.model_validate_json(res.model_dump_json())
    assert render_markdown(reread).splitlines()[0] == first
    trained = render_markdown(untrained_results(tmp_path / "trained", random_weights=False))
    assert "RANDOM" not in trained and "random weights" not in trained


def test_the_machine_section_names_the_cpu_flags_where_the_run_recorded_them(tmp_path):
    res = untrained_results(tmp_path, random_weights=True)
    older = "\n".join(machine_section(res))  # a run from before the flags were recorded: no empty brackets
    assert "- CPU: cpu, 2 logical CPUs" in older
    res.machine.cpu_flags = ["avx2", "avx512_bf16"]
    assert "- CPU: cpu (avx2, avx512_bf16), 2 logical CPUs" in "\n".join(machine_section(res))
    res.machine.cpu_flags = []
    assert "(none of AVX2, AVX-512, bf16, AMX)" in "\n".join(machine_section(res))
