"""Start TorchServe, wait until its workers REALLY answer, stop it without leaving java behind.

TorchServe's /ping says Healthy while workers crash on import (requests then hang), so readiness here means:
the management API lists a READY worker for every model AND one real prediction answers 200. A worker that
dies while loading ends the start at once with the Python error it printed.

Each server gets its own run folder (config.properties, logs/, console.log, key_file.json, server.json) and
a short private temp folder: TorchServe keeps worker sockets (/tmp/.ts.sock.<port>), unpacked archives and its
launcher's pid file in the temp folder, so two servers on one machine would otherwise collide.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import httpx

from convserve.common.errors import ConvserveError
from convserve.common.files import write_text_atomic
from convserve.hardware.cpu_share import default_workers
from convserve.serving.server_lifecycle import (
    ServerLifecycle,
    ServerStartError,
    free_port,
    group_alive,
    is_loopback,
    port_is_free,
    probe_png,
    serve_in_front,
    url_host,
)

BASE_CONFIG = resources.files("convserve.serving") / "config.properties"  # package data: ships in the wheel
WORKER_DIED = ("Backend worker process died", "Load model failed", "Failed to load model")


@dataclass
class ServerSettings:
    model_store: Path
    models: dict[str, str] = field(default_factory=lambda: {"alexnet": "alexnet.mar"})
    host: str = "127.0.0.1"
    port: int = 8080
    management_port: int = 8081
    metrics_port: int = 8082
    run_dir: Path | None = None
    startup_timeout: float = 300.0
    max_request_mb: float = 10.0

    @property
    def token_auth(self) -> bool:
        """On whenever anything listens beyond loopback (management always stays on 127.0.0.1)."""
        return not is_loopback(self.host)

    @classmethod
    def one_archive(cls, archive: Path, run_dir: Path, startup_timeout: float = 300.0) -> ServerSettings:
        """One archive (its file name is the model's) on free loopback ports: a server an experiment starts."""
        return cls(
            model_store=archive.parent,
            models={archive.stem: archive.name},
            port=free_port(),
            management_port=free_port(),
            metrics_port=free_port(),
            run_dir=run_dir,
            startup_timeout=startup_timeout,
        )


def render_config(settings: ServerSettings, grpc_ports: tuple[int, int]) -> str:
    """serving/config.properties with this server's addresses, store and limits filled in."""
    host = url_host(settings.host)
    values = {
        "inference_address": f"http://{host}:{settings.port}",
        "management_address": f"http://127.0.0.1:{settings.management_port}",
        "metrics_address": f"http://{host}:{settings.metrics_port}",
        "grpc_inference_address": "127.0.0.1",
        "grpc_inference_port": str(grpc_ports[0]),
        "grpc_management_address": "127.0.0.1",
        "grpc_management_port": str(grpc_ports[1]),
        "model_store": str(Path(settings.model_store).resolve()),
        "python": sys.executable,
        "disable_token_authorization": "false" if settings.token_auth else "true",
        "max_request_size": str(int(settings.max_request_mb * 1024 * 1024)),
        # for archives that name no worker count: this machine's usable CPUs decide (cgroup quota included)
        "default_workers_per_model": str(default_workers()),
    }
    lines = []
    for line in BASE_CONFIG.read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if key in values and not line.lstrip().startswith("#"):
            line = f"{key}={values.pop(key)}"
        lines.append(line)
    lines += [f"{k}={v}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def worker_error(log_text: str) -> str | None:
    """The Python error a dying worker printed, or None when no worker died.

    TorchServe retries a failed import as a stock handler and chains that second error; the FIRST exception
    after "Backend worker process died" is the real one.
    """
    if not any(marker in log_text for marker in WORKER_DIED):
        return None
    lines = [ln.split("MODEL_LOG - ", 1)[1] for ln in log_text.splitlines() if "MODEL_LOG - " in ln]
    died = next((i for i, ln in enumerate(lines) if ln.startswith(WORKER_DIED[0])), 0)
    where = ""
    in_traceback = False
    for line in lines[died:]:
        if line.startswith("Traceback"):
            in_traceback = True
        elif in_traceback and line.lstrip().startswith("File "):
            where = line.strip()
        elif in_traceback and line and not line[0].isspace():
            return f"{line} ({where})" if where else line
    marked = next(ln for ln in log_text.splitlines() if any(m in ln for m in WORKER_DIED))
    return marked.split(" - ", 1)[-1].strip()  # no Python traceback: the frontend's own line says why


class TorchServeProcess(ServerLifecycle):
    """``with TorchServeProcess(settings) as server: httpx.post(server.predictions_url("alexnet"), ...)``."""

    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.run_dir = Path(settings.run_dir or tempfile.mkdtemp(prefix="convserve-ts-")).resolve()
        self.proc: subprocess.Popen | None = None
        self.tmp_dir: Path | None = None
        self.startup_seconds: float | None = None

    # addresses -----------------------------------------------------------------------------------
    @property
    def client_host(self) -> str:
        """Where a local client reaches the server (a wildcard bind is reached on loopback)."""
        return url_host("127.0.0.1" if self.settings.host in ("0.0.0.0", "::") else self.settings.host)

    @property
    def inference_url(self) -> str:
        return f"http://{self.client_host}:{self.settings.port}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.management_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.client_host}:{self.settings.metrics_port}"

    def predictions_url(self, model: str) -> str:
        return f"{self.inference_url}/predictions/{model}"

    @property
    def key_file(self) -> Path:
        return self.run_dir / "key_file.json"

    def auth_headers(self, api: str = "inference") -> dict[str, str]:
        """Bearer header for ``api`` (inference|management) when token authorization is on, else {}."""
        if not self.settings.token_auth:
            return {}
        keys = self._keys()
        if keys is None:
            raise ServerStartError(f"token authorization is on but {self.key_file} holds no keys")
        return {"Authorization": f"Bearer {keys[api]['key']}"}

    def _keys(self) -> dict | None:
        try:  # TorchServe creates the file empty, then writes it
            return json.loads(self.key_file.read_text())
        except (OSError, ValueError):
            return None

    # lifecycle (start, with: ServerLifecycle) ------------------------------------------------------
    def launch(self) -> None:
        self._check_inputs()
        self._launch()

    def _check_inputs(self) -> None:
        s = self.settings
        store = Path(s.model_store)
        for name, archive in s.models.items():
            if not (store / archive).exists():
                raise ConvserveError(f"model {name}: {store / archive} does not exist (build it with archive.py)")
        for port in (s.port, s.management_port, s.metrics_port):
            host = "127.0.0.1" if port == s.management_port else s.host
            if not port_is_free(host, port):
                raise ConvserveError(f"port {port} on {host} is in use; pick others with --port/--*-port")

    def _launch(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir = Path(tempfile.mkdtemp(prefix="cvts-", dir="/tmp"))  # short: unix socket paths max 107
        config = self.run_dir / "config.properties"
        config.write_text(render_config(self.settings, (free_port(), free_port())))
        torchserve = Path(sys.executable).with_name("torchserve")
        models = [f"{name}={archive}" for name, archive in self.settings.models.items()]
        cmd = [str(torchserve), "--start", "--foreground", "--ncs", "--ts-config", str(config)]
        cmd += ["--model-store", str(Path(self.settings.model_store).resolve()), "--models", *models]
        if not self.settings.token_auth:
            cmd.append("--disable-token-auth")
        env = dict(os.environ, TEMP=str(self.tmp_dir), TMPDIR=str(self.tmp_dir))
        env.update(LOG_LOCATION=str(self.run_dir / "logs"), METRICS_LOCATION=str(self.run_dir / "logs"))
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # workers: this venv
        self.key_file.unlink(missing_ok=True)
        with open(self.run_dir / "console.log", "wb") as console:
            # a session of its own: stop() signals the launcher, java and the python workers as one group
            self.proc = subprocess.Popen(
                cmd, cwd=self.run_dir, env=env, stdout=console, stderr=subprocess.STDOUT, start_new_session=True
            )
        state = {"pgid": self.proc.pid, "tmp_dir": str(self.tmp_dir), "inference": self.inference_url}
        write_text_atomic(self.run_dir / "server.json", json.dumps(state, indent=1) + "\n")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + self.settings.startup_timeout
        pending = set(self.settings.models)
        with httpx.Client(timeout=10.0) as client:
            while pending:
                self._raise_if_failed()
                if time.monotonic() > deadline:
                    raise ServerStartError(
                        f"no READY worker for {', '.join(sorted(pending))} after {self.settings.startup_timeout:.0f}"
                        f" s; last log lines:\n{self._tail()}"
                    )
                pending = {name for name in pending if not self._worker_ready(client, name)}
                if pending:
                    time.sleep(0.5)
            for name in self.settings.models:
                self._probe(client, name)

    def _raise_if_failed(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise ServerStartError(f"TorchServe exited with code {self.proc.returncode}:\n{self._tail()}")
        error = worker_error(self.console_text())
        if error:
            raise ServerStartError(f"a TorchServe worker failed to load the model: {error}")

    def _worker_ready(self, client: httpx.Client, name: str) -> bool:
        if self.settings.token_auth and self._keys() is None:
            return False
        try:
            resp = client.get(f"{self.management_url}/models/{name}", headers=self.auth_headers("management"))
        except httpx.TransportError:
            return False
        if resp.status_code != 200:
            return False
        workers = [w for model in resp.json() for w in model.get("workers", [])]
        return bool(workers) and all(w.get("status") == "READY" for w in workers)

    def _probe(self, client: httpx.Client, name: str) -> None:
        resp = client.post(
            self.predictions_url(name),
            content=probe_png(),
            headers={"Content-Type": "image/png", **self.auth_headers()},
            timeout=60.0,
        )
        if resp.status_code != 200:
            raise ServerStartError(f"the first prediction of {name} failed: HTTP {resp.status_code} {resp.text[:300]}")

    def after_stop(self) -> None:  # the group: launcher, java, workers
        if self.tmp_dir is not None:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            self.tmp_dir = None


def usage_text(server: TorchServeProcess) -> str:
    """What to tell a person once the server answers: where, how to call it, how to stop it."""
    s = server.settings
    first = next(iter(s.models))
    lines = [f"TorchServe ready in {server.startup_seconds:.1f} s (run folder {server.run_dir})"]
    lines += [f"  {name}: POST {server.predictions_url(name)}" for name in s.models]
    auth = ""
    if s.token_auth:
        auth = f'-H "Authorization: Bearer $(jq -r .inference.key {server.key_file})" '
        lines.append(f"  token authorization is ON (listening on {s.host}); keys in {server.key_file}")
        lines.append("  the inference key expires (60 min by default); renew it with the API key:")
        lines.append(
            f'    curl -X POST "{server.management_url}/token?type=inference" '
            f'-H "Authorization: Bearer $(jq -r .API.key {server.key_file})"'
        )
    lines.append(
        f"  try: curl {auth}-H 'Content-Type: image/jpeg' --data-binary @photo.jpg {server.predictions_url(first)}"
    )
    lines.append(f"  management {server.management_url} (loopback only), metrics {server.metrics_url}/metrics")
    lines.append(f"  logs in {server.run_dir / 'logs'} and {server.run_dir / 'console.log'}")
    return "\n".join(lines)


def run_server(settings: ServerSettings, foreground: bool, say=print) -> int:
    """Start and wait until ready; foreground: serve until SIGINT/SIGTERM, then stop. Returns an exit code."""
    run_dir = Path(settings.run_dir or "logs/torchserve")
    state = run_dir / "server.json"
    if state.exists() and group_alive(int(json.loads(state.read_text())["pgid"])):
        raise ConvserveError(f"a server started from {run_dir} is still running; stop it with --stop --run-dir")
    settings.run_dir = run_dir
    server = TorchServeProcess(settings)
    return serve_in_front(server, usage_text, "TorchServe", "serve", foreground, say, forget=state)
