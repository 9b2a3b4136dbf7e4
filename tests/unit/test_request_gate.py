"""serving/request_gate.py in front of a small ASGI app that echoes what reached it: the token on every route but the
health probes, the body limit (declared or streamed), the closed repository API, and bodies passed on unchanged."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from convserve.serving.request_gate import RequestGate, bearer_matches

TOKEN = "0123456789abcdef-token"
LIMIT = 1000


async def echo(scope, receive, send) -> None:
    """Answers 200 with the path and the body it received."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    payload = json.dumps({"path": scope["path"], "body": body.decode("latin-1")}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": payload})


def call(method: str, path: str, token: str | None = TOKEN, **kwargs) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=RequestGate(echo, token=token, max_body_bytes=LIMIT))
        async with httpx.AsyncClient(transport=transport, base_url="http://gate") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("path", ["/v2/models/m/infer", "/v1/models/m:predict", "/metrics", "/v2/models/m", "/"])
def test_every_route_but_health_needs_the_token(path):
    for headers in ({}, bearer("wrong-token-0000000000"), {"Authorization": TOKEN}):
        refused = call("POST", path, headers=headers, content=b"{}")
        assert refused.status_code == 401 and "bearer token" in refused.json()["error"]
        assert refused.headers["www-authenticate"] == "Bearer"
    passed = call("POST", path, headers=bearer(TOKEN), content=b'{"x": 1}')
    assert passed.status_code == 200 and passed.json() == {"path": path, "body": '{"x": 1}'}


@pytest.mark.parametrize("path", ["/v2/health/live", "/v2/health/ready"])
def test_health_probes_need_no_token(path):
    assert call("GET", path).status_code == 200


def test_without_a_token_everything_passes():
    assert call("POST", "/v2/models/m/infer", token=None, content=b"abc").json()["body"] == "abc"


def test_bodies_over_the_limit_are_413_whether_declared_or_streamed():
    declared = call("POST", "/v2/models/m/infer", headers=bearer(TOKEN), content=b"x" * (LIMIT + 1))
    assert declared.status_code == 413 and f"limit of {LIMIT} bytes" in declared.json()["error"]

    async def chunks():  # no Content-Length: the gate counts what arrives
        for _ in range(5):
            yield b"y" * 300

    streamed = call("POST", "/v2/models/m/infer", headers=bearer(TOKEN), content=chunks())
    assert streamed.status_code == 413
    at_limit = call("POST", "/v2/models/m/infer", headers=bearer(TOKEN), content=b"z" * LIMIT)
    assert at_limit.status_code == 200 and len(at_limit.json()["body"]) == LIMIT


def test_the_repository_api_is_closed_even_with_the_token():
    for path in ("/v2/repository/models/m/unload", "/v2/repository/models/m/load"):
        assert call("POST", path, headers=bearer(TOKEN)).status_code == 405


def test_a_malformed_content_length_is_400():
    assert call("GET", "/v2/health/live", headers={"Content-Length": "many"}).status_code == 400


def test_bearer_matching():
    assert bearer_matches(f"Bearer {TOKEN}", TOKEN) and bearer_matches(f"bearer  {TOKEN} ", TOKEN)
    assert not bearer_matches(f"Basic {TOKEN}", TOKEN) and not bearer_matches("Bearer", TOKEN)
    assert not bearer_matches(f"Bearer {TOKEN}x", TOKEN)
