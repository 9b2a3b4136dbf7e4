"""Soak and fault runs against a real TorchServe started the way a user starts one (serve.py in the background,
then loadtest/soak.py with its URL and run folder), in their short mode: a few seconds of real load each.

A digits MLP exported to ONNX and archived with the default settings (batching included) serves. The assertions
are about behaviour (answers, worker processes, recovery, ports, processes), never about speed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from convserve.hardware.procfs import is_running
from convserve.loadtest.loadgen import read_payloads
from convserve.loadtest.soak_runs import SoakPlan, run_soak, run_worker_kill
from convserve.serving.archive_builder import build_archive
from convserve.serving.server_lifecycle import free_port, port_is_free, stop_recorded
from tests.integration.test_serving import export

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def store(digits_run, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("soak")
    artifact = export("to_onnx", digits_run("mlp", 2), root / "artifact")
    build_archive(artifact, "digits", root / "model_store", backend="onnx")  # the default archive settings
    return root / "model_store"


def start_server(store: Path, run_dir: Path) -> str:
    """serve.py in the background, as a user runs it; returns the prediction URL once workers answer."""
    port = free_port()
    cmd = [sys.executable, "serving/serve.py", "--model-store", str(store), "--models", "digits=digits.mar"]
    cmd += ["--port", str(port), "--management-port", str(free_port()), "--metrics-port", str(free_port())]
    done = subprocess.run([*cmd, "--run-dir", str(run_dir)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return f"http://127.0.0.1:{port}/predictions/digits"


@pytest.fixture(scope="module")
def server(store, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("soak-run")
    url = start_server(store, run_dir)
    yield url, run_dir
    stop_recorded(run_dir)


@pytest.fixture(scope="module")
def images(photos) -> list[Path]:
    return [photos["chelsea"], photos["coffee"]]


def plan_for(url: str, run_dir: Path, images: list[Path], **options) -> SoakPlan:
    return SoakPlan(url=url, payloads=read_payloads(images), run_dir=run_dir, timeout_s=30.0, **options)


def test_a_short_soak_reads_every_window(server, images):
    url, run_dir = server
    report = run_soak(plan_for(url, run_dir, images, concurrency=4, minutes=0.2, window_s=4.0), say=lambda _: None)
    assert len(report.windows) == 3 and [w.index for w in report.windows] == [0, 1, 2]
    for w in report.windows:
        assert w.ok > 0 and w.errors == {} and w.unfinished == 0
        assert w.p99_ms is not None and w.p50_ms <= w.p99_ms
        assert w.worker_rss_mb > 50 and w.frontend_rss_mb > 50  # real processes read from /proc
        assert len(w.worker_pids) == 1 and all(is_running(pid) for pid in w.worker_pids)
    assert report.errors == {} and report.worker_restarts == 0
    first, last = report.windows[0], report.windows[-1]
    assert report.rss_growth == pytest.approx(last.worker_rss_mb / first.worker_rss_mb - 1)
    assert report.p99_drift == pytest.approx(last.p99_ms / first.p99_ms - 1)
    assert [c.name.split(" ")[0] for c in report.checks] == ["errors", "worker", "p99"]
    assert report.checks[0].met


def test_a_killed_worker_is_replaced_and_no_request_hangs(server, images):
    url, run_dir = server
    plan = plan_for(url, run_dir, images, concurrency=4, minutes=0.2, fault_at_s=3.0)
    report = run_worker_kill(plan, say=lambda _: None)
    assert report.killed_pids and not any(is_running(pid) for pid in report.killed_pids)
    assert report.replacement_pids and not set(report.replacement_pids) & set(report.killed_pids)
    assert report.recovery_s is not None and report.probes[-1].result == "200"
    assert report.load_unfinished == 0 and "timeout" not in report.load_errors
    assert all(p.result != "timeout" for p in report.probes)
    assert report.load_ok > 0
    answer = httpx.post(url, content=images[0].read_bytes(), headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert answer.status_code == 200 and len(answer.json()) == 5  # the same server, its model not reloaded by hand


def test_graceful_stop_under_load_frees_the_ports_and_leaves_no_process(store, images, tmp_path):
    """Through the CLI, as a user runs it: loadtest/soak.py --fault graceful-stop --output report.json."""
    run_dir = tmp_path / "run"
    url = start_server(store, run_dir)
    cmd = [sys.executable, "loadtest/soak.py", "--url", url, "--run-dir", str(run_dir), "--images", *map(str, images)]
    cmd += ["--fault", "graceful-stop", "--minutes", "0.1", "--concurrency", "4", "--timeout", "30"]
    cmd += ["--output", str(tmp_path / "report.json")]
    try:
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180)
    finally:
        stop_recorded(run_dir)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["kind"] == "graceful-stop", done.stderr[-2000:]
    roles = sorted(role for _, role in report["processes_before"])
    assert roles == ["frontend", "launcher", "worker"]
    assert sum(report["in_flight"].values()) > 0  # the stop really came with requests in flight
    assert "timeout" not in report["in_flight"] and "timeout" not in report["after_stop"]
    assert report["stop"] == "terminated" and report["busy_ports"] == [] and report["leftover_pids"] == []
    assert not any(is_running(pid) for pid, _ in report["processes_before"])
    assert port_is_free("127.0.0.1", urlsplit(url).port)
    assert not (run_dir / "server.json").exists()
    assert done.returncode == (0 if all(c["met"] for c in report["checks"]) else 1), done.stdout
