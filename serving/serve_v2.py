"""Serve an artifact folder through the Open Inference Protocol (KServe v2) with KServe's own ModelServer; return
once the model REALLY answers (or stay in front with --foreground).

python serving/serve_v2.py artifacts/digits --model-name digits --port 8090 --grpc-port 8091     # background
python serving/serve_v2.py artifacts/digits --model-name digits --host 0.0.0.0 --token-file token --foreground
python serving/serve_v2.py --stop --run-dir logs/kserve

Beyond loopback it needs a bearer token (--token-file, --token=TOKEN or $CONVSERVE_TOKEN), then required on every
route but GET /v2/health/live and /v2/health/ready.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import ValidationError

from convserve.artifact.card import read_card
from convserve.common.errors import CliParser, ConvserveError, run_cli, validation_message
from convserve.serving.classifier import TOP_K
from convserve.serving.kserve_process import TOKEN_ENV, KServeProcess, V2ServerSettings, run_v2_server
from convserve.serving.server_lifecycle import stop_and_tell


def build_parser() -> CliParser:
    p = CliParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", type=Path, nargs="?", help="artifact folder (model file, model_card.json, labels)")
    p.add_argument("--model-name", help="name in the URLs (default: the card's name)")
    p.add_argument("--host", default="127.0.0.1", help="listen address; beyond loopback needs a token")
    p.add_argument("--port", type=int, default=8080, help="REST (HTTP) port")
    p.add_argument("--grpc-port", type=int, default=8081, help="the protocol's gRPC service (0: REST only)")
    p.add_argument("--backend", default="auto", help="auto|onnx|torchscript|eager|onnx-fp16|onnx-int8")
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda or cuda:N")
    p.add_argument(
        "--workers", type=int, help="worker processes sharing the port (default: as TorchServe splits the usable CPUs)"
    )
    p.add_argument("--threads", type=int, help="intra-op threads per worker (default: its share of the usable CPUs)")
    p.add_argument("--top-k", type=int, default=TOP_K, help="classes in each answer, most likely first")
    batching = V2ServerSettings.model_fields
    p.add_argument(
        "--batch-size", type=int, default=batching["batch_size"].default,
        help="dynamic batching: images per backend call at most (1: none; default %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--max-batch-delay", type=float, default=batching["max_batch_delay_ms"].default, metavar="MS",
        help="ms the first request of a batch waits for company (default %(default)s)",
    )  # fmt: skip
    p.add_argument("--token-file", type=Path, help="file holding the bearer token (a mounted Secret)")
    p.add_argument("--token", default=os.environ.get(TOKEN_ENV), help=f"bearer token (default ${TOKEN_ENV})")
    p.add_argument("--run-dir", type=Path, default=Path("logs/kserve"), help="console.log, settings, server.json")
    p.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for the model")
    p.add_argument("--max-request-mb", type=float, default=10.0, help="request body limit (413 above it)")
    p.add_argument("--foreground", action="store_true", help="keep serving until Ctrl-C / SIGTERM")
    p.add_argument("--stop", action="store_true", help="stop the server started from --run-dir")
    return p


def read_token(args) -> str | None:
    if args.token_file is None:
        return args.token or None
    try:
        return args.token_file.read_text().strip() or None
    except OSError as exc:
        raise ConvserveError(f"cannot read --token-file {args.token_file}: {exc.strerror}") from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.stop:
        return stop_and_tell(args.run_dir)
    if args.artifact is None:
        raise ConvserveError("give the artifact folder to serve (or --stop --run-dir DIR)")
    try:
        settings = V2ServerSettings(
            artifact=args.artifact.resolve(),
            model_name=args.model_name or read_card(args.artifact).name,
            host=args.host,
            port=args.port,
            grpc_port=args.grpc_port or None,
            backend=args.backend,
            device=args.device,
            threads=args.threads,
            workers=args.workers,
            top_k=args.top_k,
            max_body_bytes=max(1, int(args.max_request_mb * 1024 * 1024)),
            batch_size=args.batch_size,
            max_batch_delay_ms=args.max_batch_delay,
        )
    except ValidationError as exc:
        raise ConvserveError(validation_message(exc)) from None
    server = KServeProcess(settings, args.run_dir, read_token(args), args.startup_timeout)
    return run_v2_server(server, foreground=args.foreground)


def cli() -> None:
    """Run as a script: ``main`` behind the one-line error edge, as ``convserve <command>`` runs it."""
    run_cli(main)


if __name__ == "__main__":
    cli()
