"""The v2 server's worker processes: one listening socket, bound here and shared by N workers
(serving/kserve_server.py, each KServe's ModelServer with its own copy of the model and its share of the CPUs).
Every worker accepts from the same socket, so a new connection goes to whichever worker is free to take it.

    python -m convserve.serving.v2_workers RUN_DIR/settings.json      (serving/kserve_process.py starts it)

- Ready: each worker writes ``RUN_DIR/ready/<index>`` (its pid) once its model has loaded; every worker answers
  GET /v2/health/ready with true only while each index holds the mark of a live process, so the server is ready
  when all workers are, and not while one is being replaced.
- A worker that dies (a crash, kill -9, the OOM killer) is replaced at once; its connections are lost, the
  other workers keep answering; the replacement takes connections only once its model has loaded. A worker that
  could not load its model (exit code 3) stops the server: the artifact is broken, and a replacement would fail
  the same way.
- Metrics: the workers write their Prometheus figures to ``RUN_DIR/metrics`` (prometheus_client's multiprocess
  mode), so GET /metrics on any worker answers for all of them (a replaced worker's counts included).
- SIGTERM or SIGINT: the socket closes (new connections are refused at once), every worker gets SIGTERM and
  drains (uvicorn stops accepting, finishes the requests in flight within ``DRAIN_S``, then exits); a worker still
  there after ``GRACE_S`` is killed, before serve_v2.py --stop's own 30 s run out.

KServe 0.21's own multi-process mode (``ModelServer(workers=N)``) is not used: its workers re-import
``kserve.model_server:app`` in a fresh interpreter, without this server's routes, gate and readiness, and
receive the parent's model pickled instead of loading their own.

Only the standard library here: this process holds no model and stays small.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from convserve.hardware.cpu_share import worker_split

LOAD_FAILED_CODE = 3  # a worker's exit code when its model cannot load (serving/kserve_server.py)
DRAIN_S = 20  # a worker's graceful shutdown (uvicorn's, set through KServe's grace period)
GRACE_S = 27.0  # the drain, gRPC's stop (5 s) and a little more, within serve_v2.py --stop's 30 s
BACKLOG = 2048
MAX_EARLY_DEATHS = 3  # a worker that keeps dying before it ever loads is not replaced forever


METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # read by prometheus_client when it is imported


def ready_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "ready"


def fresh_folder(folder: Path) -> Path:
    """``folder``, created or emptied: marks and metric files of an earlier run count for nothing."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():
        stale.unlink()
    return folder


def mark_ready(folder: Path, index: int) -> None:
    """A worker's model has loaded (written by the worker itself)."""
    tmp = folder / f".{index}.{os.getpid()}"
    tmp.write_text(str(os.getpid()))
    tmp.replace(folder / str(index))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def all_ready(folder: Path, workers: int) -> bool:
    """Every worker index holds the mark of a process that still runs."""
    for index in range(workers):
        try:
            pid = int((folder / str(index)).read_text())
        except (OSError, ValueError):
            return False
        if not _alive(pid):
            return False
    return True


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return sock


class WorkerPool:
    """Start ``workers`` processes on ``sock``, replace the ones that die, drain them all on a stop signal."""

    def __init__(self, settings_file: Path, sock: socket.socket, workers: int, threads: int):
        self.settings_file = settings_file
        self.sock = sock
        self.workers = workers
        self.threads = threads
        self.marks = ready_dir(settings_file.parent)
        self.metrics = settings_file.parent / "metrics"
        self.procs: list[subprocess.Popen] = []
        self.early_deaths = [0] * workers
        self.stopping = False
        self.exit_code = 0

    def command(self, index: int, replacement: bool) -> list[str]:
        return [
            sys.executable, "-m", "convserve.serving.kserve_server", str(self.settings_file),
            "--worker", str(index), "--workers", str(self.workers), "--threads", str(self.threads),
            "--listen-fd", str(self.sock.fileno()), "--ready-dir", str(self.marks),
            *(["--accept-when-loaded"] if replacement else []),
        ]  # fmt: skip

    def spawn(self, index: int, replacement: bool = False) -> subprocess.Popen:
        (self.marks / str(index)).unlink(missing_ok=True)
        env = {**os.environ, METRICS_ENV: str(self.metrics)}
        return subprocess.Popen(self.command(index, replacement), pass_fds=[self.sock.fileno()], env=env)

    def run(self) -> int:
        fresh_folder(self.marks)
        fresh_folder(self.metrics)
        self.procs = [self.spawn(index) for index in range(self.workers)]
        say(f"{self.workers} worker(s) of {self.threads} thread(s), pids {[p.pid for p in self.procs]}")
        while not self.stopping:
            time.sleep(0.1)
            self.replace_dead()
        self.drain()
        return self.exit_code

    def replace_dead(self) -> None:
        for index, proc in enumerate(self.procs):
            code = proc.poll()
            if code is None or self.stopping:
                continue
            was_ready = (self.marks / str(index)).exists()
            self.early_deaths[index] = 0 if was_ready else self.early_deaths[index] + 1
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            why = self.fatal(code, self.early_deaths[index], how)
            if why:
                say(f"worker {index} (pid {proc.pid}) {why}; stopping")
                self.exit_code, self.stopping = LOAD_FAILED_CODE, True
                return
            self.procs[index] = self.spawn(index, replacement=True)
            say(f"worker {index} (pid {proc.pid}) ended with {how}; started pid {self.procs[index].pid}")

    @staticmethod
    def fatal(code: int, early_deaths: int, how: str) -> str | None:
        """Why a worker's end stops the server (a replacement would end the same way), or None."""
        if code == LOAD_FAILED_CODE:
            return "could not load the model"
        if early_deaths >= MAX_EARLY_DEATHS:
            return f"ended {early_deaths} times before its model loaded (last: {how})"
        return None

    def drain(self) -> None:
        self.sock.close()  # the workers hold their own copies; connections nobody would take are refused now
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"worker pid {proc.pid} still busy after {GRACE_S:.0f} s; killing it")
                proc.kill()
                proc.wait()


def say(message: str) -> None:
    print(f"convserve: {message}", flush=True)


def main(argv: list[str]) -> int:
    settings_file = Path(argv[0]).resolve()
    settings = json.loads(settings_file.read_text())
    workers, threads = worker_split(settings.get("workers"), settings.get("threads"))
    try:
        sock = listen(settings["host"], settings["port"])
    except OSError as exc:
        say(f"cannot listen on {settings['host']}:{settings['port']}: {exc.strerror}")
        return 1
    pool = WorkerPool(settings_file, sock, workers, threads)

    def stop(signum: int, frame: object) -> None:
        pool.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return pool.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
