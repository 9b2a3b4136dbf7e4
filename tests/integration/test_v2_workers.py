"""The v2 server's worker processes on a real ModelServer: two workers answer on one port, readiness waits for
both, a killed worker is replaced, a stop drains requests in flight. A digits MLP exported to ONNX serves."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from convserve.serving.http_headers import WORKER_HEADER
from convserve.serving.kserve_process import TEST_LOAD_DELAY_ENV, KServeProcess, V2ServerSettings
from convserve.serving.v2_workers import ready_dir
from tests.serving_helpers import build_artifact, free_port

pytestmark = pytest.mark.slow
MODEL = "digits"


@pytest.fixture(scope="module")
def artifact(digits_run, tmp_path_factory) -> Path:
    return build_artifact(digits_run("mlp", 2), tmp_path_factory.mktemp("v2-workers") / "artifact", formats=("onnx",))


def settings_for(artifact: Path, **extra) -> V2ServerSettings:
    return V2ServerSettings(artifact=artifact, model_name=MODEL, port=free_port(), **extra)


def worker_pids(server: KServeProcess) -> list[int]:
    return sorted(child.pid for child in psutil.Process(server.proc.pid).children())


def predictions_url(server: KServeProcess) -> str:
    return f"{server.url}/predictions/{MODEL}"


def post_all(server: KServeProcess, image: bytes, count: int, concurrency: int = 8) -> list[httpx.Response]:
    def send(_: int) -> httpx.Response:
        with httpx.Client(timeout=60) as http:  # a connection each: the kernel picks a worker per connection
            return http.post(predictions_url(server), content=image)

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(send, range(count)))


def test_two_workers_answer_on_one_port_each_with_its_share_of_threads(artifact, tmp_path, photos):
    image = photos["chelsea"].read_bytes()
    with KServeProcess(settings_for(artifact, workers=2), tmp_path / "run") as server:
        pids = worker_pids(server)
        assert len(pids) == 2
        listening = [c for c in psutil.Process(server.proc.pid).connections("inet") if c.status == "LISTEN"]
        assert [c.laddr.port for c in listening] == [server.settings.port]
        answered_by, sent = set(), 0
        for _ in range(5):  # an idle worker usually takes every connection: load both at once
            responses = post_all(server, image, 48, concurrency=12)
            sent += len(responses)
            assert {r.status_code for r in responses} == {200}
            assert len({r.text for r in responses}) == 1  # the same model in each
            answered_by |= {r.headers[WORKER_HEADER] for r in responses}
            if answered_by == {"0", "1"}:
                break
        assert answered_by == {"0", "1"}
        # whichever worker answers /metrics counts the images of both (the probe's image at start included)
        for _ in range(4):
            assert images_through_batches(server) == sent + 1
        expected_threads = max(1, min(len(os.sched_getaffinity(0)) // 2, 8))
        for pid in pids:
            assert f"--threads {expected_threads}" in " ".join(psutil.Process(pid).cmdline())


def images_through_batches(server: KServeProcess) -> float:
    with httpx.Client(timeout=30) as http:
        text = http.get(f"{server.url}/metrics").text
    return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith("convserve_batch_images_sum"))


def test_ready_only_once_every_worker_has_loaded(artifact, tmp_path, monkeypatch, photos):
    monkeypatch.setenv(TEST_LOAD_DELAY_ENV, "6:1")  # worker 1 sleeps before loading; worker 0 loads at once
    server = KServeProcess(settings_for(artifact, workers=2), tmp_path / "run")
    server.launch()
    try:
        marks = ready_dir(server.run_dir)
        with httpx.Client(timeout=10) as http:
            while not (marks / "0").exists():
                assert server.proc.poll() is None, server.console_text()
                time.sleep(0.1)
            # one worker loaded, the other not: whichever answers, the server is not ready
            for _ in range(10):
                with httpx.Client(timeout=10) as fresh:
                    assert fresh.get(f"{server.url}/v2/health/ready").status_code == 503
            assert not (marks / "1").exists()  # the answers above came while worker 1 still slept
            server.wait_ready()
            assert http.get(f"{server.url}/v2/health/ready").json() == {"ready": True}
        assert sorted(p.name for p in marks.iterdir()) == ["0", "1"]
    finally:
        server.stop()


def test_a_killed_worker_is_replaced_and_the_others_keep_answering(artifact, tmp_path, photos):
    image = photos["coffee"].read_bytes()
    with KServeProcess(settings_for(artifact, workers=2), tmp_path / "run") as server:
        before = worker_pids(server)
        os.kill(before[0], signal.SIGKILL)
        deadline = time.monotonic() + 60
        codes = set()
        with httpx.Client(timeout=60) as http:
            while len(set(worker_pids(server)) - set(before)) < 1 or not _ready(http, server):
                assert time.monotonic() < deadline, server.console_text()
                with httpx.Client(timeout=60) as fresh:  # a new connection: whichever worker accepts it
                    codes.add(fresh.post(predictions_url(server), content=image).status_code)
        assert codes == {200}  # the replacement took no connection before its model had loaded
        after = worker_pids(server)
        assert len(after) == 2 and before[0] not in after and before[1] in after
        (replacement,) = set(after) - set(before)
        assert "--accept-when-loaded" in psutil.Process(replacement).cmdline()
        assert {r.status_code for r in post_all(server, image, 16)} == {200}
        assert "ended with signal 9; started pid" in server.console_text()


def _ready(http: httpx.Client, server: KServeProcess) -> bool:
    try:
        return http.get(f"{server.url}/v2/health/ready").status_code == 200
    except httpx.TransportError:
        return False


def test_a_stop_drains_requests_in_flight_in_every_worker(artifact, tmp_path, photos):
    """Requests wait in their batch window (2 s) when the stop comes: each still gets its answer, then the
    workers and the supervisor exit."""
    image = photos["chelsea"].read_bytes()
    settings = settings_for(artifact, workers=2, batch_size=64, max_batch_delay_ms=2000)
    server = KServeProcess(settings, tmp_path / "run").start()
    pids = [server.proc.pid, *worker_pids(server)]
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(_post, predictions_url(server), image) for _ in range(8)]
        time.sleep(0.8)
        assert not any(f.done() for f in futures)  # all of them in a batch window
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        codes = [f.result() for f in futures]
        stopper.join(60)
    assert codes == [200] * 8
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in pids)


def _post(url: str, image: bytes) -> int:
    return httpx.post(url, content=image, timeout=60).status_code


def test_workers_flag_is_refused_when_not_positive(artifact, tmp_path):
    from tests.integration.test_serve_v2 import cli

    result = cli(str(artifact), "--workers", "0", "--run-dir", str(tmp_path))
    assert result.returncode == 2 and "workers" in result.stderr and "greater than or equal to 1" in result.stderr
