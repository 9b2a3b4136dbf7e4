"""A running server seen from outside, through the run folder its background start gave it (``--run-dir``): TorchServe
started by serve.py, or the v2 server started by serve_v2.py. server.json names the process group (the first
process's pid: it starts in a session of its own). TorchServe's config.properties names the addresses it listens
on and its key_file.json the inference key when tokens are on; the v2 server's settings.json names its port and
its gRPC port, if any (its token is never written to the run folder). The processes are read from /proc.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from convserve.common.errors import ConvserveError
from convserve.hardware.procfs import group_members, is_running, process_memory, torchserve_processes, v2_processes
from convserve.serving.server_lifecycle import port_is_free, url_host

ADDRESS_KEYS = ("inference_address", "management_address", "metrics_address")


@dataclass(frozen=True)
class ServerKind:
    """What differs between the servers a run folder may record; everything else reads them alike."""

    name: str  # in reports
    cli: str  # the script that started it, and stops it with --stop --run-dir
    tree: Callable[[int], list[tuple[int, str]]]  # the process group's leader → (pid, role) of every process
    rss_roles: tuple[str, ...]  # whose RSS a soak reads each window: the workers, then what serves beside them
    key_file: str | None  # the run folder's file holding the inference key, if the server writes one


def _torchserve_tree(launcher_pid: int) -> list[tuple[int, str]]:
    return [(launcher_pid, "launcher"), *torchserve_processes(launcher_pid)]


TORCHSERVE = ServerKind("TorchServe", "serve.py", _torchserve_tree, ("worker", "frontend"), "key_file.json")
V2_SERVER = ServerKind("v2 server", "serve_v2.py", v2_processes, ("worker", "supervisor"), None)


@dataclass(frozen=True)
class RecordedServer:
    run_dir: Path
    pgid: int
    addresses: dict[str, str]  # TorchServe's config key (the v2 server's under the same keys) → http://host:port
    kind: ServerKind = TORCHSERVE

    @classmethod
    def read(cls, run_dir: Path) -> RecordedServer:
        run_dir = Path(run_dir)
        state = run_dir / "server.json"
        if not state.is_file():
            raise ConvserveError(
                f"{state} does not exist: give the --run-dir of a server started with serve.py or serve_v2.py"
            )
        pgid = int(json.loads(state.read_text())["pgid"])
        if not group_members(pgid):
            raise ConvserveError(f"the server recorded in {state} (process group {pgid}) is not running")
        if (run_dir / "settings.json").is_file():
            return cls(run_dir, pgid, _v2_addresses(run_dir / "settings.json"), V2_SERVER)
        if (run_dir / "config.properties").is_file():
            return cls(run_dir, pgid, _torchserve_addresses(run_dir / "config.properties"), TORCHSERVE)
        raise ConvserveError(f"{run_dir} holds neither config.properties (serve.py) nor settings.json (serve_v2.py)")

    def processes(self) -> list[tuple[int, str]]:
        """(pid, role) of every process of the server: TorchServe's launcher, java frontend and workers; the v2
        server's supervisor and workers."""
        return self.kind.tree(self.pgid)

    def worker_pids(self) -> list[int]:
        return [pid for pid, role in self.processes() if role == "worker"]

    def rss_mb(self, role: str) -> float | None:
        """Summed VmRSS of the processes in ``role`` (one of ``kind.rss_roles``); None when none runs."""
        found = [process_memory(pid, role) for pid, r in self.processes() if r == role]
        values = [m.rss_mb for m in found if m is not None and m.rss_mb is not None]
        return sum(values) if values else None

    def ports(self) -> list[tuple[str, int]]:
        out = []
        for url in self.addresses.values():
            parts = urlsplit(url)
            if parts.hostname and parts.port and (parts.hostname, parts.port) not in out:
                out.append((parts.hostname, parts.port))
        return out

    def inference_key(self) -> str | None:
        """The inference key when the server wrote one (TorchServe with token authorization on), else None."""
        if self.kind.key_file is None:
            return None
        try:
            return json.loads((self.run_dir / self.kind.key_file).read_text())["inference"]["key"]
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _torchserve_addresses(config: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in config.read_text().splitlines() if "=" in line and line[0] != "#")
    return {key.strip(): value.strip() for key, value in pairs if key.strip() in ADDRESS_KEYS}


def _v2_addresses(settings: Path) -> dict[str, str]:
    """Under TorchServe's keys where they mean the same: the v2 server answers inference and serves /metrics on one
    port; its gRPC service, when on, listens on another."""
    try:
        found = json.loads(settings.read_text())
        host, port = url_host(found["host"]), int(found["port"])
        grpc_port = int(found["grpc_port"]) if found.get("grpc_port") else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConvserveError(f"{settings} names no host and port: {exc}") from None
    url = f"http://{host}:{port}"
    grpc = {"grpc_address": f"grpc://{host}:{grpc_port}"} if grpc_port else {}
    return {"inference_address": url, "metrics_address": url, **grpc}


def leftovers(pids: list[int], pgid: int) -> list[int]:
    """Of ``pids`` and the members of process group ``pgid``, those still running (zombies excluded)."""
    return sorted({pid for pid in pids if is_running(pid)} | set(group_members(pgid)))


def busy_ports(ports: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Those of ``ports`` something still listens on (connections left in TIME_WAIT do not count)."""
    return [(host, port) for host, port in ports if not port_is_free(host, port)]
