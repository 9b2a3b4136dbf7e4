"""docker/token_gate.py over real HTTP: a real aiohttp upstream stands in for TorchServe's inference API (the
gate's contract is only "forward what is authorized, unchanged"), the gate runs on a real socket in front of it."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import pytest
from aiohttp import web
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
