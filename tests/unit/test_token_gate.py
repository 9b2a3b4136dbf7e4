"""docker/token_gate.py over real HTTP: a real aiohttp upstream stands in for TorchServe's inference API (the
gate's contract is only "forward what is authorized, unchanged"), the gate runs on a real socket in front of it."""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import shutil
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import requests
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient, TestServer

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token-for-tests-0123456789"
_spec = importlib.util.spec_from_file_location("token_gate", ROOT / "docker" / "token_gate.py")
token_gate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(token_gate)


def upstream_app() -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response(
            {
                "method": request.method,
                "path": request.path_qs,
                "size": len(body),
                "content_type": request.headers.get("Content-Type"),
                "saw_authorization": "Authorization" in request.headers,
            },
            headers={"X-Upstream": "yes"},
        )

    async def unavailable(request: web.Request) -> web.Response:
        return web.json_response({"code": 503, "message": "no worker"}, status=503)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/predictions/busy", unavailable)
    app.router.add_route("*", "/{path:.*}", echo)
    return app


def run(scenario, **gate_options):
    async def go():
        async with TestServer(upstream_app()) as upstream:
            gate = token_gate.make_app(str(upstream.make_url("")), TOKEN, **gate_options)
            async with TestClient(TestServer(gate)) as client:
                return await scenario(client)

    return asyncio.run(go())


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_request_with_the_token_reaches_torchserve_unchanged_but_for_the_token():
    async def scenario(client):
        resp = await client.post(
            "/predictions/alexnet?k=5", data=b"\x89PNG" + bytes(5000), headers={**bearer(), "Content-Type": "image/png"}
        )
        return resp.status, await resp.json(), resp.headers.get("X-Upstream")

    status, seen, marker = run(scenario)
    assert status == 200 and marker == "yes"
    assert seen == {
        "method": "POST",
        "path": "/predictions/alexnet?k=5",
        "size": 5004,
        "content_type": "image/png",
        "saw_authorization": False,
    }


@pytest.mark.parametrize(
    "headers", [{}, bearer("wrong-token-wrong-token-wrong"), {"Authorization": TOKEN}, bearer(TOKEN + "x")]
)
def test_without_the_right_token_the_answer_is_401_json(headers):
    async def scenario(client):
        resp = await client.post("/predictions/alexnet", data=b"x", headers=headers)
        return resp.status, await resp.json()

    status, body = run(scenario)
    assert status == 401 and "bearer token" in body["message"]


def test_upstream_errors_pass_through_and_a_dead_upstream_is_502():
    async def scenario(client):
        busy = await client.post("/predictions/busy", data=b"x", headers=bearer())
        return busy.status, (await busy.json())["message"]

    assert run(scenario) == (503, "no worker")

    async def dead():
        gate = token_gate.make_app("http://127.0.0.1:9", TOKEN, timeout_s=5)
        async with TestClient(TestServer(gate)) as client:
            resp = await client.get("/ping", headers=bearer())
            return resp.status, await resp.json()

    status, body = asyncio.run(dead())
    assert status == 502 and "TorchServe did not answer" in body["message"]


def test_oversized_bodies_are_refused_before_forwarding_and_healthz_needs_no_token():
    async def scenario(client):
        big = await client.post("/predictions/alexnet", data=bytes(2 * 1024 * 1024), headers=bearer())
        health = await client.get("/gate/healthz")
        return big.status, health.status

    assert run(scenario, max_body_mb=1.0) == (413, 200)


def test_a_short_token_file_is_refused(tmp_path):
    short = tmp_path / "token"
    short.write_text("abc\n")
    with pytest.raises(SystemExit, match="shorter than 16"):
        token_gate.read_token(short)
    short.write_text(TOKEN + "\n")
    assert token_gate.read_token(short) == TOKEN


# --- bodies over the limit: every common client reads the 413 -----------------------------------------------------

LIMIT_MB = 1.0


@pytest.fixture(scope="module")
def gate_url():
    """The gate on a real socket (in a thread of its own) in front of a real upstream that counts what reaches it:
    curl, urllib and requests are blocking clients of another process or thread."""
    seen: list[int] = []
    ready = threading.Event()
    state: dict = {}

    async def counting(request: web.Request) -> web.Response:
        seen.append(len(await request.read()))
        return web.json_response({"size": seen[-1]})

    async def serve() -> None:
        upstream = web.Application(client_max_size=64 * 1024 * 1024)
        upstream.router.add_route("*", "/{path:.*}", counting)
        runners = []
        for app in (upstream, None):
            if app is None:
                app = token_gate.make_app(f"http://127.0.0.1:{state['upstream_port']}", TOKEN, max_body_mb=LIMIT_MB)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            runners.append(runner)
            port = site._server.sockets[0].getsockname()[1]
            state.setdefault("upstream_port", port)
            state["gate_port"] = port
        state["stop"], state["loop"] = asyncio.Event(), asyncio.get_running_loop()
        ready.set()
        await state["stop"].wait()
        for runner in runners:
            await runner.cleanup()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(30)
    yield f"http://127.0.0.1:{state['gate_port']}/predictions/alexnet", seen
    state["loop"].call_soon_threadsafe(state["stop"].set)
    thread.join(30)


def post_with(client: str, url: str, body: bytes, tmp_path: Path) -> tuple[int, bytes]:
    headers = {**bearer(), "Content-Type": "image/jpeg"}
    if client == "curl":
        assert shutil.which("curl"), "curl is needed for this test (apt-get install curl)"
        (tmp_path / "body").write_bytes(body)
        cmd = [
            "curl",
            "-sS",
            "-o",
            str(tmp_path / "answer"),
            "-w",
            "%{http_code}",
            "--data-binary",
            f"@{tmp_path / 'body'}",
        ]
        cmd += [arg for k, v in headers.items() for arg in ("-H", f"{k}: {v}")]
        done = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr  # a reset would be curl error 55/56
        return int(done.stdout), (tmp_path / "answer").read_bytes()
    if client == "urllib":
        request = urllib.request.Request(url, data=body, headers=headers)
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
        try:
            with direct.open(request, timeout=60) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as answer:
            return answer.code, answer.read()
    if client == "requests":
        answer = requests.post(url, data=body, headers=headers, timeout=60)
        return answer.status_code, answer.content
    if client == "requests-chunked":  # no Content-Length: the gate cuts the body at the limit
        answer = requests.post(
            url, data=iter([body[i : i + 65536] for i in range(0, len(body), 65536)]), headers=headers
        )
        return answer.status_code, answer.content

    async def with_aiohttp() -> tuple[int, bytes]:
        async with ClientSession() as session, session.post(url, data=body, headers=headers) as answer:
            return answer.status, await answer.read()

    return asyncio.run(with_aiohttp())


CLIENTS = ["curl", "urllib", "requests", "requests-chunked", "aiohttp"]


@pytest.mark.parametrize("client", CLIENTS)
def test_every_client_reads_a_413_json_for_a_body_over_the_limit(gate_url, client, tmp_path):
    url, seen = gate_url
    before = len(seen)
    status, body = post_with(client, url, bytes(int(3 * LIMIT_MB * 1024 * 1024)), tmp_path)
    assert status == 413, body[:200]
    answer = json.loads(body)
    assert answer["code"] == 413 and "over the limit of 1048576 bytes" in answer["message"]
    assert len(seen) == before  # never forwarded
    status, body = post_with(client, url, bytes(int(0.5 * LIMIT_MB * 1024 * 1024)), tmp_path)
    assert status == 200 and json.loads(body) == {"size": 524288}  # the same client, under the limit, passes


def test_the_gate_refuses_at_the_limit_torchserve_has():
    """The gate must answer first: its default limit is serve.py's, and the pod sets neither differently."""
    from convserve.serving.torchserve_process import ServerSettings

    gate_default = inspect.signature(token_gate.make_app).parameters["max_body_mb"].default
    assert gate_default == ServerSettings(model_store=Path(".")).max_request_mb
    deployment = (ROOT / "k8s" / "base" / "serve-deployment.yaml").read_text()
    assert "--max-request-mb" not in deployment
