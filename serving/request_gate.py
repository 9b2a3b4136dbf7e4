"""What stands in front of every route of the v2 server (an ASGI middleware): the bearer token, the request body
limit and the closed model-repository API. Answers are the protocol's error form, ``{"error": "..."}``.

- Token: when one is set, every route but the two health probes (GET /v2/health/live, /v2/health/ready) needs
  ``Authorization: Bearer <token>``, metrics included (they share the inference port here); 401 otherwise.
  Probes stay open so that a kubelet or load balancer can ask without the Secret.
- Body limit: a body over ``max_body_bytes`` is refused with 413 before the model sees a byte of it (uvicorn
  itself has no limit).
- /v2/repository/... (KServe's load/unload extension) answers 405: the model comes from the command line only,
  as TorchServe's management API is kept off (``enable_model_api=false``).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
REPOSITORY_PREFIX = "/v2/repository/"
MIN_TOKEN_LENGTH = 16  # as docker/token_gate.py asks of the Kubernetes Secret
TOKEN_MISSING = "missing or wrong bearer token (Authorization: Bearer <token>)"
REPOSITORY_OFF = "the model repository API is off: the model comes from the command line"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]


def bearer_matches(header: str, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time."""
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def error_answer(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": message}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


class RequestGate:
    """``app.add_middleware(RequestGate, token="...", max_body_bytes=10 << 20)``; ``token=None``: no token."""

    def __init__(self, app: Callable, token: str | None, max_body_bytes: int):
        self.app = app
        self.token = token
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await error_answer(send, *refusal)
            return
        body = await self._read_body(receive, send)
        if body is None:
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: wait for the disconnect as the app would
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def _refusal(self, scope: Scope) -> tuple | None:
        path = scope["path"]
        if path.startswith(REPOSITORY_PREFIX):
            return 405, REPOSITORY_OFF
        if (
            self.token
            and path not in OPEN_PATHS
            and not bearer_matches(_header(scope, b"authorization") or "", self.token)
        ):
            challenge = [(b"www-authenticate", b"Bearer")]
            return 401, TOKEN_MISSING, challenge
        declared = _header(scope, b"content-length")
        if declared is not None and not declared.strip().isdigit():
            return 400, f"Content-Length {declared!r} is not a byte count"
        if declared is not None and int(declared) > self.max_body_bytes:
            return 413, self._too_large(int(declared))
        return None

    async def _read_body(self, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or None once a 413 went out (a chunked body that grew past the limit) or the
        client left."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await error_answer(send, 413, self._too_large(size))
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self, size: int) -> str:
        return f"request body of {size} bytes is over the limit of {self.max_body_bytes} bytes"
