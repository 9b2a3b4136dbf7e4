"""The v2 server process: KServe's ModelServer serving one ClassifierModel, the model loading in the background.

    python -m convserve.serving.kserve_server RUN_DIR/settings.json --worker I --workers N --threads T \
        --listen-fd FD --ready-dir DIR                                  (the token, if any, in $CONVSERVE_TOKEN)

serving/v2_workers.py starts one per worker, all accepting on the socket it bound (FD); nothing else imports this
module (importing kserve parses sys.argv: kserve.model_server reads its own flags at import).

Where this departs from KServe 0.21's defaults, and why:
- the REST server binds the host it is given (KServe's binds 0.0.0.0 whatever it is asked);
- GET /v2/health/ready is true only once the model is loaded in every worker, as the protocol defines server
  readiness (KServe's answers true as soon as the server runs: its ModelServer normally starts with loaded models
  only; this one starts first, so the health routes answer while the model loads);
- elements of a BYTES tensor sent with the binary data extension stay raw bytes (KServe turns them into UTF-8
  text, which encoded images are not, and answers 500);
- a malformed request is a 400 ``{"error": ...}`` (KServe answers some with 500, FastAPI with 422 ``{"detail"}``);
- the gRPC service (with a gRPC port) listens on the given host too and follows the REST routes' rules
  (serving/v2_grpc.py).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import struct
import sys
import threading
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import FastAPIDeprecationWarning, RequestValidationError
from fastapi.responses import JSONResponse, Response
from kserve import InferInput, InferRequest, ModelServer
from kserve.model_server import app
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.infer_type import RequestedOutput
from prometheus_client import CollectorRegistry, exposition
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.exceptions import HTTPException as StarletteHTTPException

from convserve.common.errors import InputError, one_line
from convserve.serving.http_headers import WORKER_HEADER
from convserve.serving.kserve_model import HOW_TO, ClassifierModel
from convserve.serving.kserve_process import LOAD_FAILED, TEST_LOAD_DELAY_ENV, TOKEN_ENV, V2ServerSettings
from convserve.serving.request_gate import RequestGate
from convserve.serving.torchserve_routes import add_torchserve_routes
from convserve.serving.v2_grpc import grpc_server
from convserve.serving.v2_protocol import BINARY_HEADER
from convserve.serving.v2_workers import DRAIN_S, LOAD_FAILED_CODE, all_ready, mark_ready

log = logging.getLogger("convserve")
GRPC_STOP_S = 5


class ReadyWhenLoaded(DataPlane):
    """KServe's data plane with the protocol's readiness (this worker's model and every other worker's) and a
    raw-bytes reading of binary tensor data."""

    def __init__(self, model_registry: Any, peers_ready: Callable[[], bool]):
        super().__init__(model_registry=model_registry)
        self.peers_ready = peers_ready

    async def ready(self) -> bool:
        models = list(self.model_registry.get_models().values())
        return bool(models) and all([await model.healthy() for model in models]) and self.peers_ready()

    def decode(self, body: Any, headers: dict, protocol_version: str = "v1", model_name: str | None = None):
        try:
            return super().decode(body, headers, protocol_version, model_name)
        except (KeyError, TypeError, ValueError, IndexError, struct.error) as exc:  # KServe's InvalidInput too
            raise InputError(f"malformed inference request: {one_line(exc)}") from None

    def decode_inference_request(self, body: Any, headers: dict, model_name: str) -> InferRequest:
        if not isinstance(body, bytes):
            return super().decode_inference_request(body, headers, model_name)
        return parse_binary_request(body, headers.get(BINARY_HEADER.lower()), model_name)


def parse_binary_request(body: bytes, header_length: str | None, model_name: str) -> InferRequest:
    """A request in the binary data extension's form: JSON of ``header_length`` bytes, then each binary input's
    ``binary_data_size`` bytes in order. Without the header the whole body is JSON (what FastAPI left unparsed
    because no JSON Content-Type came with it)."""
    if header_length is not None and (not header_length.strip().isdigit() or not 0 < int(header_length) <= len(body)):
        raise InputError(f"{BINARY_HEADER} {header_length!r} does not fit a body of {len(body)} bytes")
    length = len(body) if header_length is None else int(header_length)
    try:
        document = orjson.loads(body[:length])
    except orjson.JSONDecodeError:
        if header_length is None:
            raise InputError(f"the body is not JSON and has no {BINARY_HEADER} header: {HOW_TO}") from None
        raise InputError(f"the first {length} bytes ({BINARY_HEADER}) are not JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list):
        raise InputError('the JSON part of the request needs "inputs": [...]')
    inputs, raw, offset = [], [], length
    for index, spec in enumerate(document["inputs"]):
        if not isinstance(spec, dict) or not {"name", "datatype", "shape"} <= spec.keys():
            raise InputError(f"inputs[{index}] needs name, datatype and shape")
        parameters = spec.get("parameters") or {}
        inputs.append(InferInput(str(spec["name"]), spec["shape"], str(spec["datatype"]), spec.get("data"), parameters))
        size = parameters.get("binary_data_size") if "data" not in spec else None
        if "data" not in spec and (not isinstance(size, int) or size < 0 or offset + size > len(body)):
            raise InputError(
                f"inputs[{index}]: binary_data_size {size!r} does not fit the {len(body) - offset} bytes left"
            )
        raw.append(body[offset : offset + size] if size is not None else None)
        offset += size or 0
    if offset != len(body):
        raise InputError(f"{len(body) - offset} bytes after the last binary input")
    outputs = [_requested(index, spec) for index, spec in enumerate(document.get("outputs") or [])]
    return InferRequest(
        model_name,
        inputs,
        request_id=document.get("id"),
        raw_inputs=raw if any(r is not None for r in raw) else None,
        parameters=document.get("parameters"),
        request_outputs=outputs or None,
    )


def _requested(index: int, spec: Any) -> RequestedOutput:
    if not isinstance(spec, dict) or "name" not in spec:
        raise InputError(f"outputs[{index}] needs a name")
    return RequestedOutput(str(spec["name"]), spec.get("parameters"))


class WorkerModelServer(ModelServer):
    """KServe's ModelServer serving REST on a socket it is given (``listener``: bound by the worker pool) and, with
    a ``grpc_port``, the protocol's gRPC service (serving/v2_grpc.py), with the readiness the protocol defines.

    ``accept_when_loaded``: take no connection before the model has loaded (a replacement worker: the others
    answer meanwhile, where this one would answer 503)."""

    def __init__(
        self, listener: socket.socket, peers_ready: Callable[[], bool], settings: V2ServerSettings,
        accept_when_loaded: bool = False,
    ):  # fmt: skip
        super().__init__(
            http_port=listener.getsockname()[1], enable_grpc=False, workers=1, enable_latency_logging=False,
            grace_period=DRAIN_S,
        )  # fmt: skip
        self.listener = listener
        self.settings = settings
        self.accept_when_loaded = accept_when_loaded
        self.dataplane = ReadyWhenLoaded(self.registered_models, peers_ready)

    def setup_event_loop(self) -> None:
        # start() has queued its REST server's start(), which would bind 0.0.0.0 itself: serve the given socket
        self.servers[0].close()
        self.servers[0] = self._serve_rest_and_grpc()
        super().setup_event_loop()

    async def _serve_rest_and_grpc(self) -> None:
        """REST until a stop signal (uvicorn drains its requests), gRPC beside it, stopped after it."""
        while self.accept_when_loaded and not all([m.ready for m in self.registered_models.get_models().values()]):
            await asyncio.sleep(0.05)
        s = self.settings
        grpc = None
        if s.grpc_port is not None:
            token = os.environ.get(TOKEN_ENV) or None
            repository = self.model_repository_extension
            grpc = grpc_server(self.dataplane, repository, s.host, s.grpc_port, token, s.max_body_bytes)
            await grpc.start()
        app.add_api_route("/metrics", all_workers_metrics, methods=["GET"])  # before KServe's own, so it answers
        # KServe's only middleware times every request to log two lines (wall and CPU time) per request beside the
        # access log: the same figures are in /metrics, and reading the process's CPU time costs every request
        self._rest_server._add_middlewares = lambda _app: None
        self._rest_server.create_application()
        await self._rest_server._server.serve(sockets=[self.listener])
        if grpc is not None:  # its calls in flight had the REST drain's time to finish
            await grpc.stop(grace=GRPC_STOP_S)


def all_workers_metrics(request: Request) -> Response:
    """Every worker's Prometheus figures, summed (the workers write them to $PROMETHEUS_MULTIPROC_DIR)."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    encoder, content_type = exposition.choose_encoder(request.headers.get("accept", ""))
    return Response(encoder(registry), headers={"content-type": content_type})


class WorkerHeader:
    """Names the worker that answered in every response (``X-Convserve-Worker``): which process a client hit."""

    def __init__(self, app: Callable, index: int):
        self.app = app
        self.header = (WORKER_HEADER.lower().encode(), str(index).encode())

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        async def send_named(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_named if scope["type"] == "http" else send)


async def _input_error(request: Request, exc: InputError) -> JSONResponse:
    return JSONResponse({"error": exc.message}, status_code=exc.status)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """FastAPI's own refusals (unknown route, wrong method, unparsable body) in the protocol's error form."""
    detail = str(exc.detail)
    if detail == "There was an error parsing the body":  # FastAPI's words for a JSON body that is not JSON
        detail = "the body is not valid JSON (or, with the binary data extension, lacks its header)"
    return JSONResponse({"error": detail}, status_code=exc.status_code, headers=exc.headers)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A JSON body that is no inference request: 400 naming the fields (FastAPI would answer 422 {"detail"})."""
    return JSONResponse({"error": validation_problems(exc.errors())}, status_code=400)


def validation_problems(errors: list[dict]) -> str:
    # the infer route takes an InferenceRequest or bytes: the "bytes" alternative's complaint says nothing
    relevant = [e for e in errors if tuple(e["loc"][:2]) != ("body", "bytes")] or errors
    if any(e["type"] == "missing" and tuple(e["loc"]) == ("body",) for e in relevant):
        return f"empty body: {HOW_TO}"
    parts = []
    for e in relevant:
        where = ".".join(str(p) for p in e["loc"] if p not in ("body", "InferenceRequest"))
        parts.append(f"{where or 'body'}: {e['msg']}")
    return "malformed inference request: " + "; ".join(parts)


def load_in_background(model: ClassifierModel, delay_s: float, loaded: Callable[[], None]) -> threading.Thread:
    """Load while the server already answers (health says not ready until then), then call ``loaded``; a model
    that cannot load ends the process with the reason, for serving/kserve_process.py to report."""

    def work() -> None:
        try:
            time.sleep(delay_s)
            model.load()
        except Exception as exc:  # any reason at all: a server without its model must not stay up
            print(f"{LOAD_FAILED} {one_line(exc)}", flush=True)
            os._exit(LOAD_FAILED_CODE)
        loaded()
        log.info("convserve: model %s loaded", model.name)

    thread = threading.Thread(target=work, name="convserve-load", daemon=True)
    thread.start()
    return thread


def test_load_delay(worker: int) -> float:
    seconds, _, only = (os.environ.get(TEST_LOAD_DELAY_ENV) or "0").partition(":")
    return float(seconds) if not only or int(only) == worker else 0.0


def parse_worker_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m convserve.serving.kserve_server")
    p.add_argument("settings", type=Path)
    p.add_argument("--worker", type=int, required=True, help="this worker's index")
    p.add_argument("--workers", type=int, required=True, help="workers sharing the socket")
    p.add_argument("--threads", type=int, required=True, help="intra-op threads of this worker")
    p.add_argument("--listen-fd", type=int, required=True, help="the listening socket, inherited")
    p.add_argument("--ready-dir", type=Path, required=True, help="where workers mark themselves loaded")
    p.add_argument("--accept-when-loaded", action="store_true", help="take connections only once loaded")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    # KServe 0.21 answers v1 requests with FastAPI's ORJSONResponse, which FastAPI deprecates: without this, one
    # warning (four lines on the console) per request
    warnings.filterwarnings("ignore", category=FastAPIDeprecationWarning)
    args = parse_worker_args(argv)
    settings = V2ServerSettings.model_validate_json(args.settings.read_text())
    model = ClassifierModel(
        settings.model_name, settings.artifact, settings.backend, args.threads, settings.top_k, settings.device,
        batch_size=settings.batch_size, max_batch_delay_ms=settings.max_batch_delay_ms,
    )  # fmt: skip
    app.add_middleware(RequestGate, token=os.environ.get(TOKEN_ENV) or None, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(WorkerHeader, index=args.worker)
    app.add_exception_handler(InputError, _input_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    listener = socket.socket(fileno=args.listen_fd)
    peers_ready = partial(all_ready, args.ready_dir, args.workers)
    server = WorkerModelServer(listener, peers_ready, settings, args.accept_when_loaded)
    server.register_model(model)  # registered unloaded: start([model]) would refuse a model that is not ready
    add_torchserve_routes(app, {model.name: model})
    load_in_background(model, test_load_delay(args.worker), loaded=lambda: mark_ready(args.ready_dir, args.worker))
    server.start([])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
