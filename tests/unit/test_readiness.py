"""docker/readiness.py under CONVSERVE_SERVER=kserve: ready only when the v2 server's /v2/health/ready says 200."""

from __future__ import annotations

import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


class _V2Health(BaseHTTPRequestHandler):
    ready = False

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        ok = self.path == "/v2/health/ready" and type(self).ready
        self.send_response(200 if ok else 503)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def v2_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _V2Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


def probe(port: int, server: str) -> subprocess.CompletedProcess:
    env = {"CONVSERVE_SERVER": server, "CONVSERVE_SERVE_PORT": str(port), "PATH": "/usr/bin:/bin"}
    args = [sys.executable, str(REPO / "docker" / "readiness.py"), "--timeout", "2"]
    if server == "torchserve":  # nothing listens there: TorchServe's check must not pass on the v2 answer
        args += ["--management-url", f"http://127.0.0.1:{port}"]
    return subprocess.run(args, capture_output=True, text=True, timeout=30, env=env)


def test_v2_readiness_follows_the_servers_answer(v2_server):
    port = v2_server.server_address[1]
    _V2Health.ready = False
    loading = probe(port, "kserve")
    assert loading.returncode == 1 and "503" in loading.stdout
    _V2Health.ready = True
    ready = probe(port, "kserve")
    assert ready.returncode == 0 and ready.stdout.startswith("ready:")
    # the TorchServe check asks the management API for READY workers: this server has none to show
    assert probe(port, "torchserve").returncode == 1
