"""Soak and fault runs against a real server started the way a user starts one (serve.py or serve_v2.py in the
background, then loadtest/soak.py with its URL and run folder), in their short mode: a few seconds of real load
each. Every run goes against TorchServe and against the v2 server (two workers), both answering /predictions.

A digits MLP exported to ONNX serves: TorchServe from an archive with the default settings (batching included),
the v2 server from the artifact folder. The assertions are about behaviour (answers, worker processes, recovery,
ports, processes), never about speed.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from convserve.hardware.procfs import is_running, v2_worker_index
from convserve.loadtest.loadgen import read_payloads
from convserve.loadtest.recorded_server import RecordedServer, busy_ports
from convserve.loadtest.soak_results import soak_lines
from convserve.loadtest.soak_runs import SoakPlan, run_soak, run_worker_kill
from convserve.serving.archive_builder import build_archive
from convserve.serving.http_headers import WORKER_HEADER
from convserve.serving.server_lifecycle import free_port, stop_recorded
from tests.integration.test_serving import export

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
KINDS = ("torchserve", "v2")
V2_WORKERS = 2


@dataclass(frozen=True)
class Started:
    """A server started in the background, and what its kind should show."""

    url: str
    run_dir: Path
    workers: int  # worker processes
    roles: list[str]  # every process's role, sorted
    beside: str  # the role serving beside the workers, whose RSS a soak reads too


@pytest.fixture(scope="module")
def artifact(digits_run, tmp_path_factory) -> Path:
    return export("to_onnx", digits_run("mlp", 2), tmp_path_factory.mktemp("soak") / "artifact")


@pytest.fixture(scope="module")
def store(artifact) -> Path:
    build_archive(artifact, "digits", artifact.parent / "model_store", backend="onnx")  # the default settings
    return artifact.parent / "model_store"


def background(cmd: list[str]) -> None:
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def start_torchserve(store: Path, run_dir: Path) -> Started:
    """serve.py in the background, as a user runs it; returns once workers answer."""
    port = free_port()
    cmd = [sys.executable, "serving/serve.py", "--model-store", str(store), "--models", "digits=digits.mar"]
    cmd += ["--port", str(port), "--management-port", str(free_port()), "--metrics-port", str(free_port())]
    background([*cmd, "--run-dir", str(run_dir)])
    return Started(
        f"http://127.0.0.1:{port}/predictions/digits", run_dir, 1, ["frontend", "launcher", "worker"], "frontend"
    )


def start_v2(artifact: Path, run_dir: Path) -> Started:
    """serve_v2.py in the background with two workers, as a user runs it; returns once every worker answers."""
    port = free_port()
    cmd = [sys.executable, "serving/serve_v2.py", str(artifact), "--model-name", "digits", "--port", str(port)]
    cmd += ["--grpc-port", str(free_port()), "--workers", str(V2_WORKERS)]
    background([*cmd, "--run-dir", str(run_dir)])
    roles = sorted(["supervisor", *["worker"] * V2_WORKERS])
    return Started(f"http://127.0.0.1:{port}/predictions/digits", run_dir, V2_WORKERS, roles, "supervisor")


@pytest.fixture(scope="module")
def start(artifact, store):
    """``start(kind, run_dir)``: either server, started as a user starts it."""

    def started(kind: str, run_dir: Path) -> Started:
        return start_torchserve(store, run_dir) if kind == "torchserve" else start_v2(artifact, run_dir)

    return started


@pytest.fixture(scope="module")
def running(start, tmp_path_factory):
    """``running(kind)``: that server, started once for the module's tests and stopped after them."""
    started: dict[str, Started] = {}

    def get(kind: str) -> Started:
        if kind not in started:
            started[kind] = start(kind, tmp_path_factory.mktemp(f"soak-run-{kind}"))
        return started[kind]

    yield get
    for server in started.values():
        stop_recorded(server.run_dir)


@pytest.fixture(params=KINDS)
def server(request, running) -> Started:
    return running(request.param)


@pytest.fixture(scope="module")
def images(photos) -> list[Path]:
    return [photos["chelsea"], photos["coffee"]]


def plan_for(server: Started, images: list[Path], **options) -> SoakPlan:
    return SoakPlan(url=server.url, payloads=read_payloads(images), run_dir=server.run_dir, timeout_s=30.0, **options)


def test_a_short_soak_reads_every_window(server, images):
    report = run_soak(plan_for(server, images, concurrency=4, minutes=0.2, window_s=4.0), say=lambda _: None)
    assert len(report.windows) == 3 and [w.index for w in report.windows] == [0, 1, 2]
    for w in report.windows:
        assert w.ok > 0 and w.errors == {} and w.unfinished == 0
        assert w.p99_ms is not None and w.p50_ms <= w.p99_ms
        assert list(w.rss_mb) == ["worker", server.beside]  # real processes read from /proc
        assert w.worker_rss_mb > 50 * server.workers and w.rss_mb[server.beside] > 5
        assert len(w.worker_pids) == server.workers and all(is_running(pid) for pid in w.worker_pids)
    assert report.errors == {} and report.worker_restarts == 0
    first, last = report.windows[0], report.windows[-1]
    assert report.rss_growth == pytest.approx(last.worker_rss_mb / first.worker_rss_mb - 1)
    assert report.p99_drift == pytest.approx(last.p99_ms / first.p99_ms - 1)
    assert [c.name.split(" ")[0] for c in report.checks] == ["errors", "worker", "p99"]
    assert report.checks[0].met
    assert soak_lines(report)[1].endswith(f"worker RSS MB  {server.beside} RSS MB")


def test_a_killed_worker_is_replaced_and_no_request_hangs(server, images):
    plan = plan_for(server, images, concurrency=4, minutes=0.2, fault_at_s=3.0)
    report = run_worker_kill(plan, say=lambda _: None)
    assert len(report.killed_pids) == server.workers and not any(is_running(pid) for pid in report.killed_pids)
    assert report.replacement_pids and not set(report.replacement_pids) & set(report.killed_pids)
    assert report.recovery_s is not None and report.probes[-1].result == "200"
    assert report.load_unfinished == 0 and "timeout" not in report.load_errors
    assert all(p.result != "timeout" for p in report.probes)
    assert report.load_ok > 0 and report.checks[-1].met
    answer = httpx.post(server.url, content=images[0].read_bytes(), headers={"Content-Type": "image/jpeg"}, timeout=30)
    assert answer.status_code == 200 and len(answer.json()) == 5  # the same server, its model not reloaded by hand


def test_the_v2_server_replaces_every_killed_worker_under_its_index(running, images):
    """Both workers killed: a new process for each index, each marked loaded, and answers from both again."""
    server = running("v2")
    report = run_worker_kill(plan_for(server, images, concurrency=4, minutes=0.15, fault_at_s=2.0), say=lambda _: None)
    assert report.server == "v2 server" and report.recovery_s is not None
    assert sorted(v2_worker_index(pid) for pid in report.replacement_pids) == list(range(V2_WORKERS))
    assert wait_for(lambda: marked_pids(server.run_dir / "ready") == sorted(report.replacement_pids))
    assert answering_workers(server.url, images[0]) == {str(i) for i in range(V2_WORKERS)}


def marked_pids(marks: Path) -> list[int]:
    """The pids in the v2 server's ready/<index> marks (each written by a worker once its model loaded)."""
    found = []
    for mark in marks.glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError):  # replaced while read
            found.append(int(mark.read_text()))
    return sorted(found)


def wait_for(condition, seconds: float = 60.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def answering_workers(url: str, image: Path, tries: int = 200) -> set[str]:
    """The worker indices (X-Convserve-Worker) that answered 200, one new connection per request."""
    seen: set[str] = set()
    for _ in range(tries):
        answer = httpx.post(url, content=image.read_bytes(), headers={"Content-Type": "image/jpeg"}, timeout=30)
        assert answer.status_code == 200
        seen.add(answer.headers[WORKER_HEADER])
        if len(seen) == V2_WORKERS:
            break
    return seen


@pytest.mark.parametrize("kind", KINDS)
def test_graceful_stop_under_load_frees_the_ports_and_leaves_no_process(kind, start, images, tmp_path):
    """Through the CLI, as a user runs it: loadtest/soak.py --fault graceful-stop --output report.json."""
    started = start(kind, tmp_path / "run")
    ports = RecordedServer.read(started.run_dir).ports()  # every port it listens on (the v2 server's gRPC one too)
    assert ("127.0.0.1", urlsplit(started.url).port) in ports
    cmd = [sys.executable, "loadtest/soak.py", "--url", started.url, "--run-dir", str(started.run_dir)]
    cmd += ["--images", *map(str, images), "--fault", "graceful-stop", "--minutes", "0.1", "--concurrency", "4"]
    cmd += ["--timeout", "30", "--output", str(tmp_path / "report.json")]
    try:
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180)
    finally:
        stop_recorded(started.run_dir)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["kind"] == "graceful-stop", done.stderr[-2000:]
    assert sorted(role for _, role in report["processes_before"]) == started.roles
    assert sum(report["in_flight"].values()) > 0  # the stop really came with requests in flight
    assert "timeout" not in report["in_flight"] and "timeout" not in report["after_stop"]
    assert report["stop"] == "terminated" and report["busy_ports"] == [] and report["leftover_pids"] == []
    assert not any(is_running(pid) for pid, _ in report["processes_before"])
    assert busy_ports(ports) == []
    assert not (started.run_dir / "server.json").exists()
    assert done.returncode == (0 if all(c["met"] for c in report["checks"]) else 1), done.stdout
