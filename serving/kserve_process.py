"""Start the v2 server (serving/kserve_server.py: KServe's ModelServer) in a process of its own, return once the model
REALLY answers, stop it on request: the lifecycle serve.py gives TorchServe, for the Open Inference Protocol.

Ready means: GET /v2/health/ready says so (only once the model is loaded) AND one real v2 inference of a small PNG
answers 200 with both outputs. A model that cannot load ends the start at once with its reason.

This module never imports kserve (importing it parses sys.argv); the server process does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import httpx
from pydantic import BaseModel, ConfigDict, Field

from convserve.common.errors import ConvserveError
from convserve.common.files import write_text_atomic
from convserve.hardware.procfs import group_members
from convserve.serving.archive_settings import ArchiveSettings
from convserve.serving.classifier import TOP_K
from convserve.serving.request_gate import MIN_TOKEN_LENGTH
from convserve.serving.server_lifecycle import (
    ServerLifecycle,
    ServerStartError,
    is_loopback,
    port_is_free,
    probe_png,
    serve_in_front,
    url_host,
)
from convserve.serving.v2_protocol import INPUT, LABELS, PROBABILITIES, json_request

TOKEN_ENV = "CONVSERVE_TOKEN"
# Test-only: seconds a worker waits before loading the model, so tests can see "not ready" answered: "S" (every
# worker) or "S:I" (worker I only).
TEST_LOAD_DELAY_ENV = "CONVSERVE_TEST_ONLY_LOAD_DELAY_S"
LOAD_FAILED = "convserve: the model failed to load:"


Port = Annotated[int, Field(ge=1, le=65535)]


class V2ServerSettings(BaseModel):
    """What the server process is told (written to RUN_DIR/settings.json; the token travels in $CONVSERVE_TOKEN)."""

    model_config = ConfigDict(extra="forbid")

    artifact: Path
    model_name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    host: str = "127.0.0.1"
    port: Port = 8080
    grpc_port: Port | None = None  # the protocol's gRPC service on this port; None: REST only
    backend: str = "auto"
    device: str = "auto"
    threads: int | None = Field(None, ge=1)  # per worker; None: the worker's share of the usable CPUs
    workers: int | None = Field(None, ge=1)  # None: as many as TorchServe would start here (hardware/cpu_share.py)
    top_k: int = Field(TOP_K, ge=1)
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1)
    # dynamic batching (serving/dynamic_batching.py), TorchServe archives' default: images per backend call at
    # most (1: none) and how long the first request waits for company
    batch_size: int = Field(ArchiveSettings().batch_size, ge=1)
    max_batch_delay_ms: float = Field(ArchiveSettings().max_batch_delay_ms, ge=0)


def check_token(settings: V2ServerSettings, token: str | None) -> None:
    """Beyond loopback only with a token, and never a short one."""
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise ConvserveError(f"the bearer token is shorter than {MIN_TOKEN_LENGTH} characters")
    if token is None and not is_loopback(settings.host):
        raise ConvserveError(
            f"listening on {settings.host} (beyond loopback) needs a bearer token: --token-file FILE or ${TOKEN_ENV}"
            " (make one with: openssl rand -hex 32)"
        )


class KServeProcess(ServerLifecycle):
    """``with KServeProcess(settings, run_dir) as server: httpx.post(server.infer_url, ...)``."""

    def __init__(
        self,
        settings: V2ServerSettings,
        run_dir: Path | None = None,
        token: str | None = None,
        startup_timeout: float = 300.0,
    ):
        check_token(settings, token)
        self.settings = settings
        self.token = token
        self.startup_timeout = startup_timeout
        self.run_dir = Path(run_dir or tempfile.mkdtemp(prefix="convserve-v2-")).resolve()
        self.proc: subprocess.Popen | None = None
        self.startup_seconds: float | None = None

    # addresses -----------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Where a local client reaches the REST routes."""
        return f"http://{url_host(self.local_host)}:{self.settings.port}"

    @property
    def local_host(self) -> str:
        """The address a local client reaches (a wildcard bind is reached on loopback)."""
        return "127.0.0.1" if self.settings.host in ("0.0.0.0", "::") else self.settings.host

    @property
    def grpc_target(self) -> str:
        """host:port for a gRPC client (tritonclient.grpc's url)."""
        return f"{url_host(self.local_host)}:{self.settings.grpc_port}"

    @property
    def infer_url(self) -> str:
        return f"{self.url}/v2/models/{self.settings.model_name}/infer"

    @property
    def v1_url(self) -> str:
        return f"{self.url}/v1/models/{self.settings.model_name}:predict"

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    # lifecycle (start, with: ServerLifecycle) ------------------------------------------------------
    def launch(self) -> None:
        """Start the server process and return at once (``wait_ready`` waits for the model)."""
        s = self.settings
        if not port_is_free(s.host, s.port):
            raise ConvserveError(f"port {s.port} on {s.host} is in use; pick another with --port")
        if s.grpc_port is not None and (s.grpc_port == s.port or not port_is_free(s.host, s.grpc_port)):
            raise ConvserveError(f"gRPC port {s.grpc_port} on {s.host} is in use; pick another with --grpc-port")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        settings_file = self.run_dir / "settings.json"
        write_text_atomic(settings_file, s.model_dump_json(indent=1) + "\n")
        env = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
        if self.token:
            env[TOKEN_ENV] = self.token
        cmd = [sys.executable, "-m", "convserve.serving.v2_workers", str(settings_file)]
        with open(self.run_dir / "console.log", "wb") as console:
            # a session of its own: stop() signals the server and anything it started as one group
            self.proc = subprocess.Popen(
                cmd, cwd=_source_root(), env=env, stdout=console, stderr=subprocess.STDOUT, start_new_session=True
            )
        state = {"pgid": self.proc.pid, "url": self.url, "model": s.model_name}
        write_text_atomic(self.run_dir / "server.json", json.dumps(state, indent=1) + "\n")

    def wait_ready(self) -> None:
        timeout = self.startup_timeout
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=10.0) as client:
            while not self._ready(client):
                if time.monotonic() > deadline:
                    raise ServerStartError(f"the model was not ready after {timeout:.0f} s:\n{self._tail()}")
                time.sleep(0.2)
            self._probe(client)

    def _ready(self, client: httpx.Client) -> bool:
        if self.proc.poll() is not None:
            failed = [ln for ln in self.console_text().splitlines() if ln.startswith(LOAD_FAILED)]
            if failed:
                raise ServerStartError(failed[-1].replace("convserve: ", "", 1))
            raise ServerStartError(f"the v2 server exited with code {self.proc.returncode}:\n{self._tail()}")
        try:
            return client.get(f"{self.url}/v2/health/ready").status_code == 200
        except httpx.TransportError:
            return False

    def _probe(self, client: httpx.Client) -> None:
        resp = client.post(self.infer_url, json=json_request([probe_png()]), headers=self.auth_headers(), timeout=60.0)
        names = [o.get("name") for o in resp.json().get("outputs", [])] if resp.status_code == 200 else []
        if names != [LABELS, PROBABILITIES]:
            raise ServerStartError(f"the first inference failed: HTTP {resp.status_code} {resp.text[:300]}")

    def after_stop(self) -> None:
        (self.run_dir / "server.json").unlink(missing_ok=True)


def _source_root() -> Path:
    """The folder holding the ``convserve`` package: ``python -m convserve.serving.kserve_server`` finds it from
    there whether convserve is installed or a checkout is run as it is."""
    import convserve

    return Path(convserve.__file__).resolve().parents[1]


def usage_text(server: KServeProcess) -> str:
    """What to tell a person once the server answers: where, how to call it, how to stop it."""
    s = server.settings
    auth = '-H "Authorization: Bearer $CONVSERVE_TOKEN" ' if server.token else ""
    lines = [f"KServe ModelServer (Open Inference Protocol v2) ready in {server.startup_seconds:.1f} s"]
    lines.append(f"  {s.model_name}: POST {server.infer_url}   (v1: POST {server.v1_url})")
    if server.token:
        lines.append(f"  bearer token required on every route but /v2/health/* (listening on {s.host})")
    body = (
        f'{{"inputs":[{{"name":"{INPUT}","datatype":"BYTES","shape":[1],"data":["\'"$(base64 -w0 photo.jpg)"\'"]}}]}}'
    )
    lines.append(f"  try: curl {auth}-H 'Content-Type: application/json' -d '{body}' {server.infer_url}")
    lines.append(f"  TorchServe's route: curl {auth}-T photo.jpg {server.url}/predictions/{s.model_name}")
    if s.grpc_port is not None:
        lines.append(f"  gRPC (Open Inference Protocol): {server.grpc_target}")
    lines.append(f"  health {server.url}/v2/health/ready, metadata {server.url}/v2/models/{s.model_name}")
    lines.append(f"  metrics {server.url}/metrics; log in {server.run_dir / 'console.log'}")
    return "\n".join(lines)


def run_v2_server(server: KServeProcess, foreground: bool, say=print) -> int:
    """Start and wait until ready; foreground: serve until SIGINT/SIGTERM, then stop. Returns an exit code."""
    run_dir = server.run_dir
    state = run_dir / "server.json"
    if state.exists() and group_members(int(json.loads(state.read_text())["pgid"])):
        raise ConvserveError(f"a server started from {run_dir} is still running; stop it with --stop --run-dir")
    return serve_in_front(server, usage_text, "the v2 server", "serve-v2", foreground, say)
