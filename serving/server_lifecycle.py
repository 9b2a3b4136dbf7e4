"""What both server processes (TorchServe's and the v2 server's) share: starting one and waiting until its model
answers, stopping its process group without leaving children behind, stopping one a background start recorded,
holding one in the foreground until Ctrl-C or SIGTERM, and the address helpers they both need."""

from __future__ import annotations

import io
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Self

from PIL import Image

from convserve.common.errors import ConvserveError
from convserve.hardware.procfs import group_members


class ServerStartError(ConvserveError):
    """A server (or one of its workers) did not come up; the message carries the reason from its logs."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def port_is_free(host: str, port: int) -> bool:
    """Nothing listens on ``host:port``. Closed connections in TIME_WAIT (a server stopped a moment ago) do not
    count: the servers bind with SO_REUSEADDR too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def probe_png() -> bytes:
    """A small real PNG for the readiness prediction (a gradient, so every decoder path runs)."""
    buf = io.BytesIO()
    Image.linear_gradient("L").resize((64, 64)).convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


class ServerLifecycle:
    """What both server processes share: ``start`` launches, waits until the model answers (stopping the process
    if it never does) and times it; ``stop`` (and the end of a ``with`` block) ends the process group the server
    runs in. Subclasses give ``launch`` (setting ``proc``), ``wait_ready`` and the ``run_dir`` of its console.log.
    """

    run_dir: Path
    proc: subprocess.Popen | None = None
    startup_seconds: float | None = None

    def launch(self) -> None:
        raise NotImplementedError

    def wait_ready(self) -> None:
        raise NotImplementedError

    def console_text(self) -> str:
        path = self.run_dir / "console.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _tail(self, lines: int = 25) -> str:
        return "\n".join(self.console_text().splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the server's process group (and all it started), SIGKILL what is left after ``timeout``."""
        if self.proc is not None:
            stop_group(self.proc.pid, timeout, reap=self.proc.poll)
            self.proc.wait()
            self.proc = None
        self.after_stop()

    def after_stop(self) -> None:
        """What a server leaves behind once its processes are gone (nothing by default)."""

    def start(self) -> Self:
        """Launch and return once the model answers (the process stopped if it never does)."""
        started = time.perf_counter()
        self.launch()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.perf_counter() - started
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def group_alive(pgid: int) -> bool:
    """A member of the group still runs. Zombies do not count: a launcher whose parent exited (serve.py in the
    background) waits as a zombie until its new parent reaps it, which some container inits never do."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return bool(group_members(pgid))


def stop_group(pgid: int, timeout: float = 30.0, reap=None) -> str | None:
    """SIGTERM the group, SIGKILL it after ``timeout``; returns "terminated" or "killed" (None: nothing ran).
    ``reap``: our child's poll, so an exited launcher is not kept as a zombie member of the group."""
    if not group_alive(pgid):
        return None
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if reap is not None:
            reap()
        if not group_alive(pgid):
            _await_reaping(pgid, reap)
            return "terminated"
        time.sleep(0.2)
    os.killpg(pgid, signal.SIGKILL)
    return "killed"


def _await_reaping(pgid: int, reap=None, patience: float = 2.0) -> None:
    """Give the group's zombies a moment to be reaped by parents that still run (java reaps its workers, the
    launcher java); a zombie whose parent never reaps (an orphan under such an init) is left after ``patience``."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        if reap is not None:
            reap()
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            return
        time.sleep(0.05)


def stop_recorded(run_dir: Path, timeout: float = 30.0) -> str | None:
    """Stop the server whose state a background start left in ``run_dir/server.json``: "terminated" (SIGTERM
    sufficed) or "killed" (SIGKILL after ``timeout``); None when none was recorded or it no longer ran."""
    state_file = Path(run_dir) / "server.json"
    if not state_file.exists():
        return None
    state = json.loads(state_file.read_text())
    how = stop_group(int(state["pgid"]), timeout)
    shutil.rmtree(state.get("tmp_dir", ""), ignore_errors=True)
    state_file.unlink()
    return how


def stop_and_tell(run_dir: Path, say=print) -> int:
    """A CLI's ``--stop --run-dir``: stop the recorded server and say how; exit code 0 either way."""
    how = stop_recorded(run_dir)
    say(f"stopped ({how})" if how else f"no running server recorded in {run_dir}")
    return 0


def serve_in_front(server, usage, what: str, cli: str, foreground: bool, say=print, forget: Path | None = None) -> int:
    """Start ``server`` (either server's process class) and wait until it answers; foreground: serve until
    SIGINT/SIGTERM, then stop it (and remove ``forget``, its recorded state). Returns the CLI's exit code."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    server.start()
    say(usage(server))
    if not foreground:
        say(f"  stop: convserve {cli} --stop --run-dir {server.run_dir}")
        return 0
    say("  serving in the foreground; Ctrl-C stops it")
    try:
        code = server.proc.wait()
        say(f"{what} exited by itself with code {code}; see {server.run_dir / 'console.log'}")
        return 1
    finally:
        server.stop()
        if forget is not None:
            forget.unlink(missing_ok=True)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt
