"""The load generator against a tiny real aiohttp server on loopback that answers 200 / 400 / 503 by pattern."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from aiohttp import web

from convserve.common.errors import ConvserveError
from convserve.loadtest.loadgen import LoadPlan, Payload, read_payloads, run_load_sync
from convserve.loadtest.loadtest import main as loadtest_main
from convserve.serving.http_headers import BATCH_HEADER
from tests.serving_helpers import free_port

JPEG_MAGIC = b"\xff\xd8\xff"
REPO = Path(__file__).resolve().parents[2]


class PatternServer:
    """/ok: 200; /pattern: the n-th request (from 0, warm-up included) answers 400 if n % 4 == 1, 503 if
    n % 4 == 3, else 200; /slow: 200 after 50 ms; /hang: 200 after 30 s. A body that is not a JPEG sent as
    image/jpeg answers 415, so the tests see that real image bytes went out."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        name = request.match_info["name"]
        n = self.counts.get(name, 0)
        self.counts[name] = n + 1
        if request.content_type != "image/jpeg" or not body.startswith(JPEG_MAGIC):
            return web.json_response({"error": "not a jpeg"}, status=415)
        if name == "slow":
            await asyncio.sleep(0.05)
        elif name == "hang":  # until the server shuts down (or 30 s)
            await asyncio.wait([asyncio.ensure_future(self.release.wait())], timeout=30)
        elif name == "pattern" and n % 4 in (1, 3):
            return web.json_response({"error": "pattern"}, status=400 if n % 4 == 1 else 503)
        token = request.headers.get("Authorization")
        return web.json_response({"cat": 0.9, "auth": token}, headers={BATCH_HEADER: "1"})

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.release = asyncio.Event()
        app = web.Application()
        app.router.add_post("/{name}", self._handle)
        app.router.add_post("/predictions/{name}", self._handle)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        self.ready.set()
        self.loop.run_forever()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def __enter__(self) -> PatternServer:
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self.loop.call_soon_threadsafe(self.release.set)
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def server():
    with PatternServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def images(photos) -> list[Path]:
    return [photos["chelsea"], photos["coffee"]]


def plan(server: PatternServer, name: str, images: list[Path], **kw) -> LoadPlan:
    return LoadPlan(url=server.url(name), payloads=read_payloads(images), **kw)


def test_counts_by_status_exclude_warmup(server, images):
    result = run_load_sync(plan(server, "pattern", images, concurrency=4, requests=40, warmup=4))
    assert server.counts["pattern"] == 44
    # requests 4..43 are measured: ten each of n%4 == 1 (400) and n%4 == 3 (503), twenty 200s
    assert result.errors == {"400": 10, "503": 10}
    assert (result.ok, result.completed, result.sent, result.unfinished) == (20, 40, 40, 0)
    assert result.stopped_by == "requests"
    assert result.latency.count == 20 and result.latency.p50_ms <= result.latency.p99_ms <= result.latency.max_ms
    assert result.batch_sizes == {"1": 20}
    assert result.throughput_rps == pytest.approx(20 / result.elapsed_s)


def test_duration_bounds_the_run(server, images):
    start = time.monotonic()
    result = run_load_sync(plan(server, "slow", images, concurrency=4, duration_s=1.0, requests=100_000))
    took = time.monotonic() - start
    assert result.stopped_by == "duration"
    assert result.ok > 0 and result.errors == {} and result.unfinished == 0
    assert result.completed < 100_000
    assert took < 1.0 + 5.0  # stops issuing at 1 s; in-flight answers take 50 ms


def test_hard_cap_stops_requests_that_never_answer(server, images):
    start = time.monotonic()
    result = run_load_sync(plan(server, "hang", images, concurrency=3, requests=10, max_duration_s=1.0))
    took = time.monotonic() - start
    assert result.stopped_by == "hard_cap"
    assert (result.ok, result.completed, result.unfinished) == (0, 0, 3)
    assert took < 1.0 + 5.0


def test_timeouts_and_connection_errors_are_counted(server, images):
    result = run_load_sync(plan(server, "hang", images, concurrency=2, requests=2, timeout_s=0.3))
    assert result.errors == {"timeout": 2} and result.ok == 0
    nothing = LoadPlan(url=f"http://127.0.0.1:{free_port()}/x", payloads=read_payloads(images), requests=5)
    refused = run_load_sync(nothing)
    assert refused.errors == {"connection": 5} and refused.latency.count == 0


def test_bad_plans_are_one_line_errors(images, tmp_path):
    payloads = read_payloads(images)
    for url in ("127.0.0.1:8080/predictions/x", "ftp://host/x", "http:///x"):
        with pytest.raises(ConvserveError, match="explicit"):
            LoadPlan(url=url, payloads=payloads).check()
    with pytest.raises(ConvserveError, match="concurrency"):
        LoadPlan(url="http://127.0.0.1:1/x", payloads=payloads, concurrency=0).check()
    with pytest.raises(ConvserveError, match="cannot read"):
        read_payloads([tmp_path / "missing.jpg"])
    assert LoadPlan(url="http://127.0.0.1:1/x", payloads=[Payload("a", b"x", "image/jpeg")]).check().requests == 100


def test_cli_writes_json_and_refuses_to_overwrite(server, images, tmp_path, capsys):
    out = tmp_path / "load.json"
    argv = ["--url", server.url("ok"), "--images", *map(str, images), "--concurrency", "2", "--requests", "6"]
    argv += ["--warmup", "2", "--token", "secret", "--output", str(out)]
    assert loadtest_main(argv) == 0
    data = json.loads(out.read_text())
    assert data["ok"] == 6 and data["errors"] == {} and data["concurrency"] == 2
    assert "throughput" in capsys.readouterr().out
    with pytest.raises(ConvserveError, match="exists"):
        loadtest_main(argv)


def run_locust(server: PatternServer, images: list[Path], tmp_path: Path, *extra: str, seconds: int = 6):
    locust = Path(sys.executable).with_name("locust")
    env = dict(os.environ, CONVSERVE_IMAGES=os.pathsep.join(map(str, images)), CONVSERVE_MODEL="ok")
    cmd = [str(locust), "-f", str(REPO / "loadtest" / "locustfile.py"), "--headless", "-u", "2", "-r", "2"]
    cmd += ["-t", f"{seconds}s", "--host", f"http://127.0.0.1:{server.port}", "--csv", str(tmp_path / "run")]
    cmd += ["--only-summary", *extra]
    return subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)


def locust_counts(tmp_path: Path) -> tuple[int, int]:
    rows = {r["Name"]: r for r in csv.DictReader((tmp_path / "run_stats.csv").open())}
    return int(rows["/predictions/ok"]["Request Count"]), int(rows["/predictions/ok"]["Failure Count"])


def test_locustfile_runs_headless(server, images, tmp_path):
    """The documented headless command, shortened, against the loopback server (no failures expected)."""
    before = server.counts.get("ok", 0)
    done = run_locust(server, images, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    count, failures = locust_counts(tmp_path)
    assert count > 0 and failures == 0
    assert server.counts["ok"] > before


def test_locustfile_paces_users_at_user_rate(server, images, tmp_path):
    """--user-rate 2: each of the 2 users starts at most 2 requests a second (the loopback server answers in far
    less than the 0.5 s pacing, so unpaced users would send hundreds)."""
    done = run_locust(server, images, tmp_path, "--user-rate", "2", seconds=4)
    assert done.returncode == 0, done.stderr[-2000:]
    count, failures = locust_counts(tmp_path)
    assert 1 <= count <= 2 * (2 * 4 + 1) and failures == 0
    bad = run_locust(server, images, tmp_path, "--user-rate", "-1", seconds=1)
    assert bad.returncode != 0 and "--user-rate takes requests per second" in bad.stderr
