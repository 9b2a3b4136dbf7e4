"""The Open Inference Protocol's gRPC service on the v2 server: KServe's servicer (the same data plane, model and
batching as the REST routes) on a port of its own, under the rules the REST routes follow:

- the bearer token, as ``authorization: Bearer <token>`` metadata, on every method but ServerLive and ServerReady
  (the REST health probes' counterparts): UNAUTHENTICATED otherwise;
- the repository extension (load/unload) is off, as on REST: UNIMPLEMENTED;
- a bad input: INVALID_ARGUMENT with the words REST's 4xx answer carries;
- a message over the request body limit: RESOURCE_EXHAUSTED (gRPC's own check, set to the same limit);
- it listens on the server's host only (KServe's binds every interface), with SO_REUSEPORT, so that every worker
  process listens on the same port and the kernel spreads connections over them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc import aio
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.model_repository_extension import ModelRepositoryExtension

from convserve.common.errors import InputError
from convserve.serving.request_gate import REPOSITORY_OFF, TOKEN_MISSING, bearer_matches
from convserve.serving.server_lifecycle import url_host

SERVICE = "inference.GRPCInferenceService"
OPEN_METHODS = frozenset({f"/{SERVICE}/ServerLive", f"/{SERVICE}/ServerReady"})
REPOSITORY_METHODS = frozenset({f"/{SERVICE}/RepositoryModelLoad", f"/{SERVICE}/RepositoryModelUnload"})


def _refusal(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    async def refuse(request: Any, context: aio.ServicerContext) -> None:
        await context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(refuse)  # every method of the service is unary


class GateInterceptor(aio.ServerInterceptor):
    """The token and the closed repository API, before any servicer code runs."""

    def __init__(self, token: str | None):
        self.token = token

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if details.method in REPOSITORY_METHODS:
            return _refusal(grpc.StatusCode.UNIMPLEMENTED, REPOSITORY_OFF)
        if self.token and details.method not in OPEN_METHODS:
            metadata = {key: value for key, value in details.invocation_metadata or ()}
            if not bearer_matches(str(metadata.get("authorization", "")), self.token):
                return _refusal(grpc.StatusCode.UNAUTHENTICATED, TOKEN_MISSING)
        return await continuation(details)


class InputErrorToStatus(ExceptionToStatusInterceptor):
    """KServe's mapping of its errors to status codes, and ours: a bad input is INVALID_ARGUMENT, named."""

    async def handle_exception(self, ex: Exception, request: Any, context: aio.ServicerContext, method: str):
        if isinstance(ex, InputError):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, ex.message)
        await super().handle_exception(ex, request, context, method)


def grpc_server(
    dataplane: DataPlane,
    repository: ModelRepositoryExtension,
    host: str,
    port: int,
    token: str | None,
    max_message_bytes: int,
    threads: int = 4,
) -> aio.Server:
    """The service, bound to ``host:port`` and not started (``await server.start()``)."""
    server = aio.server(
        ThreadPoolExecutor(max_workers=threads),
        interceptors=(GateInterceptor(token), InputErrorToStatus()),
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ],
    )
    servicer = InferenceServicer(dataplane, repository)
    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    if server.add_insecure_port(f"{url_host(host)}:{port}") == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{port}")
    return server
