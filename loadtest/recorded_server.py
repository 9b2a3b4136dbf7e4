"""A running TorchServe seen from outside, through the run folder serve.py gave it (``--run-dir``): server.json names
the process group (the launcher's pid: it starts in a session of its own), config.properties the addresses it
listens on, key_file.json the inference key when tokens are on. Its processes are read from /proc."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from convserve.common.errors import ConvserveError
from convserve.hardware.procfs import group_members, is_running, process_memory, torchserve_processes
from convserve.serving.server_lifecycle import port_is_free

ADDRESS_KEYS = ("inference_address", "management_address", "metrics_address")


@dataclass(frozen=True)
class RecordedServer:
    run_dir: Path
    pgid: int
    addresses: dict[str, str]  # config key → http://host:port

    @classmethod
    def read(cls, run_dir: Path) -> RecordedServer:
        run_dir = Path(run_dir)
        state = run_dir / "server.json"
        if not state.is_file():
            raise ConvserveError(f"{state} does not exist: give the --run-dir of a server started with serve.py")
        pgid = int(json.loads(state.read_text())["pgid"])
        if not group_members(pgid):
            raise ConvserveError(f"the server recorded in {state} (process group {pgid}) is not running")
        config = run_dir / "config.properties"
        pairs = (line.split("=", 1) for line in config.read_text().splitlines() if "=" in line and line[0] != "#")
        addresses = {key.strip(): value.strip() for key, value in pairs if key.strip() in ADDRESS_KEYS}
        return cls(run_dir=run_dir, pgid=pgid, addresses=addresses)

    def processes(self) -> list[tuple[int, str]]:
        """(pid, role) of the launcher, the java frontend and its worker processes."""
        return [(self.pgid, "launcher"), *torchserve_processes(self.pgid)]

    def worker_pids(self) -> list[int]:
        return [pid for pid, role in torchserve_processes(self.pgid) if role == "worker"]

    def rss_mb(self, role: str) -> float | None:
        """Summed VmRSS of the processes in ``role`` ("worker", "frontend"); None when none runs."""
        found = [process_memory(pid, role) for pid, r in torchserve_processes(self.pgid) if r == role]
        values = [m.rss_mb for m in found if m is not None and m.rss_mb is not None]
        return sum(values) if values else None

    def ports(self) -> list[tuple[str, int]]:
        out = []
        for url in self.addresses.values():
            parts = urlsplit(url)
            if parts.hostname and parts.port:
                out.append((parts.hostname, parts.port))
        return out

    def inference_key(self) -> str | None:
        """The inference key when token authorization is on (key_file.json), else None."""
        try:
            return json.loads((self.run_dir / "key_file.json").read_text())["inference"]["key"]
        except (OSError, ValueError, KeyError, TypeError):
            return None


def leftovers(pids: list[int], pgid: int) -> list[int]:
    """Of ``pids`` and the members of process group ``pgid``, those still running (zombies excluded)."""
    return sorted({pid for pid in pids if is_running(pid)} | set(group_members(pgid)))


def busy_ports(ports: list[tuple[str, int]]) -> list[tuple[str, int]]:
    return [(host, port) for host, port in ports if not port_is_free(host, port)]
