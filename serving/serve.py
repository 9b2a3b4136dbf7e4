"""Start TorchServe with convserve's config and return once the model's workers REALLY answer.

python serving/serve.py --model-store model_store --models alexnet=alexnet.mar            # background
python serving/serve.py --model-store model_store --foreground                            # Ctrl-C stops
python serving/serve.py --stop --run-dir logs/torchserve
"""

from __future__ import annotations

import argparse
from pathlib import Path

from convserve.common.errors import ConvserveError, run_cli
from convserve.serving.server_lifecycle import stop_and_tell
from convserve.serving.torchserve_process import ServerSettings, run_server


def parse_models(items: list[str]) -> dict[str, str]:
    models = {}
    for item in items:
        name, sep, archive = item.partition("=")
        if not sep or not name or not archive:
            raise ConvserveError(f"--models takes NAME=ARCHIVE (e.g. alexnet=alexnet.mar), got {item!r}")
        models[name] = archive
    return models


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-store", type=Path, help="folder holding the .mar archives")
    p.add_argument("--models", nargs="+", default=["alexnet=alexnet.mar"], metavar="NAME=ARCHIVE")
    p.add_argument("--host", default="127.0.0.1", help="inference/metrics address; beyond loopback turns tokens on")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--management-port", type=int, default=8081, help="always bound to 127.0.0.1")
    p.add_argument("--metrics-port", type=int, default=8082)
    p.add_argument("--run-dir", type=Path, default=Path("logs/torchserve"), help="config, logs, key_file.json")
    p.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for READY workers")
    p.add_argument("--max-request-mb", type=float, default=10.0, help="request body limit (413 above it)")
    p.add_argument("--foreground", action="store_true", help="keep serving until Ctrl-C / SIGTERM")
    p.add_argument("--stop", action="store_true", help="stop the server started from --run-dir")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.stop:
        return stop_and_tell(args.run_dir)
    if args.model_store is None:
        raise ConvserveError("--model-store is required")
    settings = ServerSettings(
        model_store=args.model_store,
        models=parse_models(args.models),
        host=args.host,
        port=args.port,
        management_port=args.management_port,
        metrics_port=args.metrics_port,
        run_dir=args.run_dir,
        startup_timeout=args.startup_timeout,
        max_request_mb=args.max_request_mb,
    )
    return run_server(settings, foreground=args.foreground)


def cli() -> None:
    """Run as a script: ``main`` behind the one-line error edge, as ``convserve <command>`` runs it."""
    run_cli(main)


if __name__ == "__main__":
    cli()
