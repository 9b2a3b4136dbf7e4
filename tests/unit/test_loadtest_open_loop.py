"""Open-loop load, capacity search and the load test CLI's open-loop flags, against a real HTTP server on loopback
whose capacity is known: it answers one request at a time, each after a fixed service time (a lock around a
sleep), in a process of its own so the client under test never shares its interpreter."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from convserve.common.errors import ConvserveError, run_cli
from convserve.loadtest.capacity import find_capacity
from convserve.loadtest.loadgen import LoadPlan, read_payloads, run_load_sync
from convserve.loadtest.loadtest import main as loadtest_main
from convserve.loadtest.open_loop import OpenLoopPlan, arrival_offsets, run_open_loop_sync, schedule
from convserve.loadtest.recorded_server import RecordedServer
from convserve.loadtest.server_metrics import (
    ServerCounters,
    default_metrics_url,
    model_from_url,
    recorded_metrics_url,
    split,
)
from convserve.serving.http_headers import BATCH_HEADER
from tests.serving_helpers import free_port

REPO = Path(__file__).resolve().parents[2]
SERVICE_S = 0.05  # the slow server: 20 requests/s at most
PATIENT = {"late_ms": 100.0}  # these tests judge the server's figures; a loaded test machine may stall a send


# the server: aiohttp alone in a fresh interpreter (argv: port, service seconds, batch header)
SERVER = """
import asyncio, sys
from aiohttp import web

async def main(port, service_s):
    lock = asyncio.Lock()  # FIFO: one request served at a time, in arrival order

    async def predict(request):
        await request.read()
        async with lock:
            await asyncio.sleep(service_s)
        return web.json_response({"cat": 0.9}, headers={sys.argv[3]: "1"})

    app = web.Application()
    app.router.add_post("/predictions/{name}", predict)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()

asyncio.run(main(int(sys.argv[1]), float(sys.argv[2])))
"""


class FixedRateServer:
    """``with FixedRateServer(0.05) as url:`` a prediction URL served at most 1 / service_s times a second."""

    def __init__(self, service_s: float):
        self.port = free_port()
        self.service_s = service_s
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> str:
        cmd = [sys.executable, "-c", SERVER, str(self.port), str(self.service_s), BATCH_HEADER]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/", timeout=1)
                break
            except httpx.TransportError:
                assert self.proc.poll() is None, self.proc.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "the test server did not start"
                time.sleep(0.1)
        return f"http://127.0.0.1:{self.port}/predictions/slow"

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.proc.stderr.close()


@pytest.fixture(scope="module")
def slow_url():
    with FixedRateServer(SERVICE_S) as url:
        yield url


@pytest.fixture(scope="module")
def payloads(photos):
    return read_payloads([photos["chelsea"], photos["coffee"]])


def open_plan(url: str, payloads, rate: float, **kw) -> OpenLoopPlan:
    return OpenLoopPlan(url=url, payloads=payloads, rate=rate, **{"duration_s": 2.0, **PATIENT, **kw})


def test_open_loop_latency_includes_queueing_that_a_closed_loop_hides(slow_url, payloads):
    calm = run_open_loop_sync(open_plan(slow_url, payloads, rate=5))
    assert calm.valid and (calm.scheduled, calm.ok, calm.errors_by_status) == (10, 10, {})
    assert SERVICE_S * 1000 <= calm.latency.p50_ms < 2 * SERVICE_S * 1000  # the service time, no queue
    assert calm.avg_batch_size == 1.0 and calm.offered_rate == pytest.approx(5.0)

    # twice the server's capacity for 2 s: the queue grows by ~20 requests a second, and the latencies show it
    overload = run_open_loop_sync(open_plan(slow_url, payloads, rate=40))
    assert overload.valid and overload.ok == overload.scheduled == 80 and overload.dropped_sends == 0
    assert overload.achieved_rate == pytest.approx(40, rel=0.1)  # the client sent on schedule
    assert overload.throughput < 0.8 * overload.offered_rate  # the server did not keep up
    assert overload.latency.p50_ms > 4 * calm.latency.p50_ms
    assert overload.latency.max_ms > 10 * SERVICE_S * 1000

    # the same server in a closed loop: one request at a time, never a queue, so ~ the service time throughout
    closed = run_load_sync(LoadPlan(url=slow_url, payloads=payloads, concurrency=1, duration_s=2.0))
    assert closed.ok > 0 and closed.latency.p50_ms < 2 * SERVICE_S * 1000
    assert overload.latency.p50_ms > 4 * closed.latency.p50_ms


def test_poisson_arrivals_are_seeded_and_average_the_rate(payloads):
    offsets, first = schedule(open_plan("http://127.0.0.1:1/x", payloads, rate=50, duration_s=40, arrivals="poisson"))
    again, _ = schedule(open_plan("http://127.0.0.1:1/x", payloads, rate=50, duration_s=40, arrivals="poisson"))
    assert offsets == again and first == 0
    assert len(offsets) == pytest.approx(2000, rel=0.1)  # ± ~5 standard deviations
    gaps = [b - a for a, b in zip(offsets, offsets[1:], strict=False)]
    assert len(set(gaps)) > len(gaps) // 2 and min(gaps) >= 0  # irregular, unlike constant arrivals
    assert arrival_offsets(4, 3, "constant") == [0.0, 0.25, 0.5]
    warm, first = schedule(open_plan("http://127.0.0.1:1/x", payloads, rate=10, duration_s=1, warmup=5))
    assert (len(warm), first) == (15, 5)


def test_capacity_search_converges_on_a_known_limit(payloads):
    service_s = 0.025  # 40 requests/s
    capacity = 1 / service_s
    with FixedRateServer(service_s) as url:
        found = find_capacity(
            OpenLoopPlan(url=url, payloads=payloads, rate=1, timeout_s=10, **PATIENT),
            p99_ms=200,
            start_rate=10,
            step_duration_s=1.0,
            warmup_s=0.25,
            max_steps=10,
            max_total_s=120,
        )
    rates = [step.rate for step in found.steps]
    assert found.stopped_by == "converged", (found.note, rates)
    # above the capacity the queue grows by (rate - capacity) per second of a step: p99 passes 200 ms at ~1.2x
    assert 0.6 * capacity <= found.capacity <= 1.3 * capacity, (found.capacity, rates)
    judged = [step for step in found.steps if not step.result.client_lagged]  # a lagged step runs again
    assert all(step.passed == (step.rate <= found.capacity) for step in judged)
    assert rates[0] == 10 and len(rates) <= 10


def test_a_client_that_hits_its_in_flight_cap_reports_an_invalid_result(slow_url, payloads):
    result = run_open_loop_sync(open_plan(slow_url, payloads, rate=100, duration_s=0.5, max_in_flight=3))
    assert not result.valid and result.dropped_sends > 0 and "in flight" in result.invalid_reason
    assert result.peak_in_flight == 3 and result.errors_by_status["0"] >= result.dropped_sends


def test_a_client_that_cannot_send_on_time_reports_an_invalid_result(payloads):
    """Thousands of arrivals a second: the client's own sends fall behind its schedule."""
    with FixedRateServer(0.0) as url:
        result = run_open_loop_sync(
            OpenLoopPlan(url=url, payloads=payloads, rate=10000, duration_s=0.1, max_in_flight=5000, late_ms=10)
        )
    assert result.client_lagged and not result.valid and "could not keep up" in result.invalid_reason
    assert result.late_sends > 0.01 * result.sent and result.max_send_lag_ms > 10
    assert result.achieved_rate < result.offered_rate


def test_unreachable_server_counts_status_zero_and_no_metrics(payloads):
    url = f"http://127.0.0.1:{free_port()}/predictions/x"
    result = run_open_loop_sync(open_plan(url, payloads, rate=20, duration_s=0.5, metrics_url=default_metrics_url(url)))
    assert result.ok == 0 and result.errors_by_status == {"0": result.scheduled} and result.latency.count == 0
    assert result.server is None and "cannot read server metrics" in result.server_metrics_error


def test_metrics_url_and_model_from_the_prediction_url():
    assert default_metrics_url("http://10.0.0.5:8080/predictions/alexnet") == "http://10.0.0.5:8082/metrics"
    assert default_metrics_url("https://[::1]:443/predictions/a") == "https://[::1]:8082/metrics"
    assert model_from_url("http://h:8080/predictions/alexnet/2.0") == "alexnet"
    assert model_from_url("http://h/v1/models/digits:predict") == "digits"
    assert model_from_url("http://h/v2/models/digits/infer") == "digits"
    assert model_from_url("http://h/ping") is None
    # a model absent from the first page (it had answered nothing yet) counts from zero
    late = split(None, ServerCounters(requests=4, queue_us=8000, inference_us=20000))
    assert (late.requests, late.server_queue_ms, late.server_compute_ms) == (4, 2.0, 3.0)
    assert split(ServerCounters(4, 1, 1), ServerCounters(4, 1, 1)) is None  # nothing answered between
    wildcard = RecordedServer(Path("run"), 1, {"metrics_address": "http://0.0.0.0:9182"})
    assert recorded_metrics_url(wildcard) == "http://127.0.0.1:9182/metrics"
    with pytest.raises(ConvserveError, match="no metrics_address"):
        recorded_metrics_url(RecordedServer(Path("run"), 1, {}))


def test_cli_open_loop_writes_json_csv_and_png(slow_url, photos, tmp_path, capsys):
    out = tmp_path / "load"
    argv = ["--url", slow_url, "--images", str(photos["chelsea"]), "--rate", "4,8", "--duration", "1"]
    argv += ["--late-ms", "100", "--metrics-url", "none", "--output-dir", str(out)]
    assert loadtest_main(argv) == 0
    printed = capsys.readouterr().out
    assert "offered 4.00 req/s" in printed and "offered 8.00 req/s" in printed
    doc = json.loads((out / "results.json").read_text())
    assert doc["mode"] == "rates" and [r["offered_rate"] for r in doc["rows"]] == [4.0, 8.0]
    assert doc["client"]["cpu_model"] and len(doc["runs"]) == 2
    rows = list(csv.DictReader((out / "results.csv").open()))
    wanted = {"throughput", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms", "errors_by_status", "server_queue_ms"}
    wanted |= {"server_compute_ms", "avg_batch_size", "offered_rate", "achieved_rate", "late_sends"}
    assert wanted <= set(rows[0]) and [r["ok"] for r in rows] == ["4", "8"]
    assert json.loads(rows[0]["errors_by_status"]) == {} and rows[0]["avg_batch_size"] == "1.0"
    assert (out / "latency.png").read_bytes().startswith(b"\x89PNG")
    with pytest.raises(SystemExit) as refused:
        run_cli(loadtest_main, argv)
    assert refused.value.code == 2 and "--force" in capsys.readouterr().err


def test_cli_capacity_search_reports_steps(slow_url, photos, tmp_path, capsys):
    out = tmp_path / "cap"
    argv = ["--url", slow_url, "--images", str(photos["chelsea"]), "--find-capacity", "--p99-ms", "500"]
    argv += ["--start-rate", "4", "--step-duration", "0.5", "--max-steps", "2", "--late-ms", "100"]
    argv += ["--metrics-url", "none", "--output-dir", str(out), "--no-plot"]
    assert loadtest_main(argv) == 0  # 4 and 8 req/s both hold on a 20 req/s server
    assert "capacity at p99 ≤ 500 ms" in capsys.readouterr().out
    doc = json.loads((out / "results.json").read_text())
    assert doc["mode"] == "capacity" and doc["capacity"] == 8.0 and doc["stopped_by"] == "max_steps"
    assert [(r["offered_rate"], r["passed"]) for r in doc["rows"]] == [(4.0, True), (8.0, True)]
    assert not (out / "latency.png").exists()


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--find-capacity"], "--find-capacity needs --p99-ms"),
        (["--rate", "0"], "positive"),
        (["--rate", "-5"], "positive"),
        (["--rate", "5,x"], "positive numbers"),
        (["--rate", "5", "--concurrency", "4"], "closed-loop flags"),
        (["--find-capacity", "--p99-ms", "100", "--rate", "5"], "--start-rate"),
        (["--p99-ms", "100"], "--p99-ms needs --find-capacity"),
        (["--arrivals", "poisson"], "needs --rate or --find-capacity"),
        (["--rate", "5", "--arrivals", "bursty"], "invalid choice"),
    ],
)
def test_cli_bad_flag_combinations_are_one_line_errors(argv, words, photos, capsys):
    with pytest.raises(SystemExit) as exited:
        loadtest_main(["--url", "http://127.0.0.1:1/predictions/x", "--images", str(photos["chelsea"]), *argv])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and words in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--max-in-flight", "0"], "error: --max-in-flight must be at least 1, got 0"),
        (["--run-dir", "/nonexistent/run"], "error: /nonexistent/run/server.json does not exist"),
        (
            ["--metrics-url", "ftp://h/metrics"],
            "error: --metrics-url must be an http(s):// URL (or none), got 'ftp://h/metrics'",
        ),
    ],
)
def test_cli_bad_values_exit_2_from_the_command_line(photos, argv, line):
    cmd = [sys.executable, "loadtest/loadtest.py", "--url", "http://127.0.0.1:1/predictions/x"]
    cmd += ["--images", str(photos["chelsea"]), "--rate", "5", *argv]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.startswith(line) and len(done.stderr.strip().splitlines()) == 1
