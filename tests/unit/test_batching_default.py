"""The batching default lives in one place (serving.archive_settings.ArchiveSettings) and everything a user runs
gets it: the archive CLI, `make demo`, the container pipeline (compose and the Kubernetes Job), and the
benchmark's headline served rows. The measured reason for the values is in docs/benchmarks ("Batching default")."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from convserve.benchmarking.batching import CANDIDATES, NO_BATCHING, SweepRow, judge, pick
from convserve.benchmarking.results import Batching
from convserve.benchmarking.served import ServedPlan, default_batching
from convserve.benchmarking.suite import BenchmarkOptions, run_settings
from convserve.serving.archive import build_parser
from convserve.serving.archive_settings import ArchiveSettings

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ArchiveSettings()
OVERRIDES = ("--batch-size", "--max-batch-delay", "batchSize", "maxBatchDelay", "batch_size", "max_batch_delay")


def test_the_archive_cli_defaults_are_the_archive_settings():
    args = build_parser().parse_args(["artifact"])
    assert (args.batch_size, args.max_batch_delay) == (DEFAULT.batch_size, DEFAULT.max_batch_delay_ms)
    config = DEFAULT.model_config("onnx")
    assert (config["batchSize"], config["maxBatchDelay"]) == (DEFAULT.batch_size, DEFAULT.max_batch_delay_ms)


def archive_commands(text: str) -> list[list[str]]:
    """Every serving/archive.py command line in a shell script (continuations joined)."""
    joined = text.replace("\\\n", " ")
    return [shlex.split(line.split("#", 1)[0]) for line in joined.splitlines() if "serving/archive.py" in line]


@pytest.mark.parametrize("script", ["scripts/demo.sh", "docker/pipeline.sh"])
def test_demo_and_the_container_pipeline_archive_with_the_defaults(script):
    commands = archive_commands((ROOT / script).read_text())
    assert commands, f"{script} no longer archives with serving/archive.py"
    for command in commands:
        assert not [arg for arg in command if arg.split("=")[0] in OVERRIDES], command


def test_compose_and_kubernetes_override_no_batching():
    """Compose and the k8s Job archive through docker/pipeline.sh export (checked above), never on their own, and
    set no TorchServe batching anywhere (--batch-size there would be training's flag, so it is not looked for)."""
    files = [ROOT / "docker-compose.yml", *sorted((ROOT / "k8s").rglob("*.yaml"))]
    assert len(files) > 3
    for path in files:
        text = path.read_text()
        assert "serving/archive.py" not in text, path
        assert not [word for word in ("--max-batch-delay", "batchSize", "maxBatchDelay") if word in text], path
    compose = (ROOT / "docker-compose.yml").read_text()
    assert re.search(r'pipeline\.sh", "export"', compose)
    assert re.search(r'pipeline\.sh", "export"', (ROOT / "k8s" / "base" / "train-job.yaml").read_text())


def test_the_benchmark_headline_rows_use_the_default(tmp_path):
    default = Batching(batch_size=DEFAULT.batch_size, max_batch_delay_ms=DEFAULT.max_batch_delay_ms)
    assert default_batching() == default
    assert run_settings(BenchmarkOptions(output_dir=tmp_path), "cpu").batchings[0] == default
    assert run_settings(BenchmarkOptions(output_dir=tmp_path, quick=True), "cpu").batchings == [default]
    assert ServedPlan(artifact=tmp_path, payloads=[], work_dir=tmp_path).batchings[0] == default


def test_the_documented_default_is_the_shipped_one():
    text = (ROOT / "docs" / "benchmarks" / "README.md").read_text()
    section = text.split("## Batching default", 1)[1].split("\n## ", 1)[0]
    assert f"batchSize {DEFAULT.batch_size}, maxBatchDelay {DEFAULT.max_batch_delay_ms} ms" in section
    assert default_batching() in CANDIDATES  # measured with the others by benchmarking/choose_batching.py


def row(batching: Batching, p50: float, rps: float) -> SweepRow:
    return SweepRow(batching, c1_p50_ms=p50, high_rps=rps, high_p50_ms=0.0, errors=0, batch_sizes={})


def test_the_rule_keeps_latency_near_no_batching_and_throughput_near_the_best():
    rows = judge(
        [
            row(NO_BATCHING, 40.0, 25.0),
            row(Batching(batch_size=4, max_batch_delay_ms=50), 100.0, 40.0),  # fast under load, slow alone
            row(Batching(batch_size=8, max_batch_delay_ms=1), 44.0, 38.0),  # 1.10x, 95 %
            row(Batching(batch_size=8, max_batch_delay_ms=2), 45.0, 37.0),  # 1.125x, 92.5 %
            row(Batching(batch_size=16, max_batch_delay_ms=2), 47.0, 39.0),  # 1.175x: too slow alone
        ]
    )
    assert [r.meets_rule for r in rows] == [False, False, True, True, False]
    assert pick(rows).batching == Batching(batch_size=8, max_batch_delay_ms=1)
    assert (
        pick(judge([row(NO_BATCHING, 40.0, 25.0), row(Batching(batch_size=4, max_batch_delay_ms=50), 90, 40)])) is None
    )


def test_the_v2_server_batches_with_the_same_default():
    """The v2 server's dynamic batching (serving/dynamic_batching.py) starts from the archives' values: the server
    settings, the CLI and therefore every deployment that runs it without the two flags."""
    from convserve.serving.kserve_process import V2ServerSettings
    from convserve.serving.serve_v2 import build_parser as v2_parser

    settings = V2ServerSettings(artifact="a", model_name="m")
    assert (settings.batch_size, settings.max_batch_delay_ms) == (DEFAULT.batch_size, DEFAULT.max_batch_delay_ms)
    args = v2_parser().parse_args(["artifact"])
    assert (args.batch_size, args.max_batch_delay) == (DEFAULT.batch_size, DEFAULT.max_batch_delay_ms)
