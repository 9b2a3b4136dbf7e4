"""A bearer-token gate in front of a TorchServe that listens on loopback only (the Kubernetes sidecar).

TorchServe 0.12 makes a new random inference key at every start and expires it after an hour, so replicas
behind one Service would each want a different key. In Kubernetes the pod's TorchServe therefore listens on
127.0.0.1 without keys, and this gate, the pod's only listener beyond loopback, admits a request only when it
carries the token of the Secret (``Authorization: Bearer <token>``), then forwards it unchanged.

    python docker/token_gate.py --token-file /etc/convserve/token/token --upstream http://127.0.0.1:8085 --port 8080

GET /gate/healthz (no token) answers 200 while the gate runs: the sidecar's own probe. Worker readiness is
the TorchServe container's probe (docker/readiness.py).

Bodies over --max-request-mb get a 413 JSON answer every client reads, and never reach TorchServe. TorchServe's
own limit (max_request_size) answers 413 with an empty body and closes the connection while the client is
still sending, which Python's urllib and requests see as a connection reset. Here the size is judged from
Content-Length before any of the body is read (a body without one is cut at the limit), a client that asked
``Expect: 100-continue`` (curl, for bodies over 1 MB) is answered before it sends the body, and a body already
on its way is read and dropped (aiohttp's lingering close, up to 10 s) before the connection closes.
"""

from __future__ import annotations

import argparse
import hmac
import sys
from http import HTTPStatus
from pathlib import Path

from aiohttp import ClientError, ClientSession, ClientTimeout, HttpVersion11, web

# Headers that describe one hop, not the message (RFC 9110 section 7.6.1), plus ones aiohttp recomputes.
HOP_HEADERS = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "authorization",
    "expect",  # answered here (100 Continue or the refusal), not passed on
}
UPSTREAM = web.AppKey("upstream", str)
SESSION = web.AppKey("session", ClientSession)


def read_token(path: Path) -> str:
    token = path.read_text().strip()
    if len(token) < 16:
        raise SystemExit(f"error: the token in {path} is shorter than 16 characters")
    return token


def error(status: int, message: str) -> web.Response:
    return web.json_response({"code": status, "type": HTTPStatus(status).phrase, "message": message}, status=status)


def authorized(header: str, token: str) -> bool:
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def too_large(limit: int) -> web.Response:
    answer = error(413, f"request body over the limit of {limit} bytes ({limit / 2**20:g} MB)")
    # keep-alive off: the rest of the body is read and dropped, then the connection closes
    answer.force_close()
    return answer


def refusal(request: web.Request, token: str, limit: int) -> web.Response | None:
    """401 or 413 from the headers alone (nothing of the body read yet); None when the request may pass."""
    if not authorized(request.headers.get("Authorization", ""), token):
        return error(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
    if request.content_length is not None and request.content_length > limit:
        return too_large(limit)
    return None


def make_app(upstream: str, token: str, max_body_mb: float = 10.0, timeout_s: float = 60.0) -> web.Application:
    limit = int(max_body_mb * 1024 * 1024)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "gate up"})

    async def expect(request: web.Request) -> web.Response | None:
        """Expect: 100-continue: refuse before the client sends the body, or invite it to."""
        if request.headers.get("Expect", "").lower() != "100-continue":
            return error(417, f"unknown Expect: {request.headers.get('Expect')}")
        answer = refusal(request, token, limit)
        if answer is None and request.version == HttpVersion11:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return answer

    async def forward(request: web.Request) -> web.StreamResponse:
        answer = refusal(request, token, limit)
        if answer is not None:
            return answer
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        try:
            body = await request.read()  # a body without Content-Length stops at client_max_size
        except web.HTTPRequestEntityTooLarge:
            return too_large(limit)
        try:
            async with request.app[SESSION].request(
                request.method, request.app[UPSTREAM] + request.rel_url.raw_path_qs, data=body, headers=headers
            ) as answer:
                payload = await answer.read()
                out = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_HEADERS}
                return web.Response(status=answer.status, body=payload, headers=out)
        except (ClientError, TimeoutError) as exc:
            return error(502, f"TorchServe did not answer: {exc.__class__.__name__}")

    async def session_context(app: web.Application):
        app[SESSION] = ClientSession(timeout=ClientTimeout(total=timeout_s), auto_decompress=False)
        yield
        await app[SESSION].close()

    app = web.Application(client_max_size=limit)
    app[UPSTREAM] = upstream.rstrip("/")
    app.cleanup_ctx.append(session_context)
    app.router.add_get("/gate/healthz", healthz)
    app.router.add_route("*", "/{path:.*}", forward, expect_handler=expect)
    return app


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--token-file", type=Path, required=True, help="file holding the token (a mounted Secret)")
    p.add_argument("--upstream", default="http://127.0.0.1:8085", help="TorchServe's loopback inference address")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--max-request-mb", type=float, default=10.0, help="request body limit (413 above it)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for TorchServe's answer")
    args = p.parse_args(argv)
    app = make_app(args.upstream, read_token(args.token_file), args.max_request_mb, args.timeout)
    web.run_app(app, host=args.host, port=args.port, print=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
