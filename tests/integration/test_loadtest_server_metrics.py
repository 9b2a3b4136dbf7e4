"""The open-loop load test against the real TorchServe of tests/integration/test_serving.py (its fixtures: trained
digits models exported, archived with dynamic batching, served), reading TorchServe's real Prometheus page."""

from __future__ import annotations

import csv
import json

import httpx
import pytest

from convserve.loadtest.loadgen import read_payloads
from convserve.loadtest.loadtest import main as loadtest_main
from convserve.loadtest.open_loop import OpenLoopPlan, run_open_loop_sync
from convserve.loadtest.server_metrics import parse_counters
from tests.integration.test_serving import runs, server, store  # noqa: F401  (the fixtures, reused)

pytestmark = pytest.mark.slow
WARMUP = 2


def test_server_split_from_the_real_metrics_page(server, photos):  # noqa: F811
    metrics_url = f"{server.metrics_url}/metrics"
    before = parse_counters(httpx.get(metrics_url).text, "digits")
    assert before is not None and before.requests >= 1  # the start's probe prediction
    plan = OpenLoopPlan(
        url=server.predictions_url("digits"),
        payloads=read_payloads([photos["chelsea"], photos["camera"]]),
        rate=8,
        duration_s=2.0,
        warmup=WARMUP,
        metrics_url=metrics_url,
        late_ms=100.0,
    )
    result = run_open_loop_sync(plan)
    assert result.valid and result.ok == result.scheduled == 16 and result.errors_by_status == {}
    after = parse_counters(httpx.get(metrics_url).text, "digits")
    assert after.requests - before.requests == WARMUP + result.sent  # one count per request, nothing else
    split = result.server
    assert split is not None and split.requests == WARMUP + result.ok  # the warm-up counts on the server side
    assert split.server_queue_ms > 0 and split.server_compute_ms > 0
    # time inside the server fits in the time the client waited (from the scheduled send to the answer)
    assert split.server_queue_ms + split.server_compute_ms < result.latency.max_ms
    assert result.avg_batch_size is not None and result.avg_batch_size >= 1  # the handler's batch header
    assert parse_counters(httpx.get(metrics_url).text, "no-such-model") is None


def test_cli_rate_writes_the_server_split(server, photos, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "load"
    argv = ["--url", server.predictions_url("digits"), "--images", str(photos["chelsea"]), "--rate", "6"]
    argv += ["--duration", "1.5", "--late-ms", "100", "--run-dir", str(server.run_dir)]  # the metrics page from it
    argv += ["--output-dir", str(out), "--no-plot"]
    assert loadtest_main(argv) == 0
    assert "server, per request: queued" in capsys.readouterr().out
    (row,) = csv.DictReader((out / "results.csv").open())
    assert float(row["server_queue_ms"]) > 0 and float(row["server_compute_ms"]) > 0
    assert float(row["avg_batch_size"]) >= 1 and json.loads(row["errors_by_status"]) == {}
