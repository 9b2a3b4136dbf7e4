"""Exit 0 only when the model can answer (container healthcheck / Kubernetes exec probe), for either server.

TorchServe (``CONVSERVE_SERVER=torchserve``, the default): a worker of the model is READY.
TorchServe's /ping answers Healthy while workers are still loading or have died, so this asks the
management API, which runs inside the same container (its port is never published), for the worker status.
Standard library only: it runs every few seconds and must start fast.

The v2 server (``CONVSERVE_SERVER=kserve``): ``GET /v2/health/ready`` answers 200, which it does only once every
model is loaded (no token needed).

    python docker/readiness.py [--model alexnet] [--management-url http://127.0.0.1:8081] [--v2-url URL]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path


def management_key(key_file: Path | None) -> str | None:
    """The management token: $CONVSERVE_MANAGEMENT_TOKEN, else TorchServe's key_file.json, else none."""
    if os.environ.get("CONVSERVE_MANAGEMENT_TOKEN"):
        return os.environ["CONVSERVE_MANAGEMENT_TOKEN"]
    if key_file is not None and key_file.is_file():
        return json.loads(key_file.read_text())["management"]["key"]
    return None


def ready_workers(description: list[dict]) -> int:
    return sum(1 for version in description for w in version.get("workers", []) if w.get("status") == "READY")


def check(model: str, management_url: str, key_file: Path | None, timeout: float) -> tuple[bool, str]:
    request = urllib.request.Request(f"{management_url.rstrip('/')}/models/{model}")
    key = management_key(key_file)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            description = json.load(response)
    except urllib.error.HTTPError as exc:
        return False, f"management API answered {exc.code} for model {model!r}"
    except (OSError, ValueError) as exc:
        return False, f"management API not reachable: {exc}"
    n = ready_workers(description)
    return n > 0, f"{model}: {n} worker(s) READY"


def check_v2(v2_url: str, timeout: float) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(f"{v2_url.rstrip('/')}/v2/health/ready", timeout=timeout) as response:
            return response.status == 200, f"v2 server ready ({response.status})"
    except urllib.error.HTTPError as exc:
        return False, f"v2 server answered {exc.code} to /v2/health/ready"
    except OSError as exc:
        return False, f"v2 server not reachable: {exc}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=os.environ.get("CONVSERVE_MODEL_NAME", "alexnet"))
    p.add_argument("--management-url", default=os.environ.get("CONVSERVE_MANAGEMENT_URL", "http://127.0.0.1:8081"))
    key_default = os.environ.get("CONVSERVE_KEY_FILE")
    p.add_argument("--key-file", type=Path, default=Path(key_default) if key_default else None)
    p.add_argument("--timeout", type=float, default=3.0)
    port = os.environ.get("CONVSERVE_SERVE_PORT", "8080")
    p.add_argument("--v2-url", default=f"http://127.0.0.1:{port}", help="the v2 server (CONVSERVE_SERVER=kserve)")
    args = p.parse_args(argv)
    if os.environ.get("CONVSERVE_SERVER", "torchserve") == "kserve":
        ok, message = check_v2(args.v2_url, args.timeout)
    else:
        ok, message = check(args.model, args.management_url, args.key_file, args.timeout)
    print(("ready: " if ok else "not ready: ") + message)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
