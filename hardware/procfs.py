"""Processes as Linux /proc shows them: RSS and its peak per process, CPU time, the process trees of TorchServe
and of the v2 server, and which processes still run (zombies excluded).

TorchServe's launcher starts a java frontend, and the frontend starts one Python process per worker. The v2
server's supervisor (serving/v2_workers.py) starts its worker processes itself. The workers' memory is what a
model costs, so each is read on its own (VmRSS now, VmHWM the peak since start).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

PROC = Path("/proc")
V2_WORKER_MODULE = "convserve.serving.kserve_server"  # what serving/v2_workers.py runs with -m, once per worker


class ProcessMemory(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pid: int
    role: str  # "worker", "frontend", "supervisor", "self"
    command: str
    rss_mb: float | None  # VmRSS
    peak_rss_mb: float | None  # VmHWM
    # VmRSS = RssAnon (private: heap, weights) + RssFile (mapped libraries, shared between processes) + RssShmem
    anon_mb: float | None = None
    file_mb: float | None = None
    threads: int | None = None


def _status(pid: int) -> dict[str, str]:
    try:
        text = (PROC / str(pid) / "status").read_text()
    except OSError:
        return {}
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


def _kb_to_mb(value: str | None) -> float | None:
    if not value:
        return None
    number, _, unit = value.strip().partition(" ")
    return int(number) / 1024 if unit.strip().lower() == "kb" else None


def process_memory(pid: int, role: str) -> ProcessMemory | None:
    """VmRSS / VmHWM of ``pid``, or None when it is gone."""
    status = _status(pid)
    if not status:
        return None
    threads = status.get("Threads", "").strip()
    return ProcessMemory(
        pid=pid,
        role=role,
        command=command_line(pid) or status.get("Name", "").strip(),
        rss_mb=_kb_to_mb(status.get("VmRSS")),
        peak_rss_mb=_kb_to_mb(status.get("VmHWM")),
        anon_mb=_kb_to_mb(status.get("RssAnon")),
        file_mb=_kb_to_mb(status.get("RssFile")),
        threads=int(threads) if threads.isdigit() else None,
    )


def command_line(pid: int, limit: int = 200) -> str:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:limit]


def command_args(pid: int) -> list[str]:
    """The whole argument vector of ``pid`` ([] when it is gone or a zombie); ``command_line`` shortens it."""
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0")[:-1]]


def _stat_fields(pid: int | str) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on, or None when the process is gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # the command (field 2) is in parentheses and may hold spaces: parse after the last ')'
    return stat.rsplit(")", 1)[1].split()


def _all_pids() -> list[int]:
    return [int(entry.name) for entry in PROC.iterdir() if entry.name.isdigit()]


def parent_map() -> dict[int, list[int]]:
    """pid → its children's pids, from every /proc/<pid>/stat (field 4 is the parent)."""
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        fields = _stat_fields(pid)
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(pid)
    return children


def is_running(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie has exited; only its exit status waits to be read)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    """Running (not zombie) processes whose process group is ``pgid`` (field 5 of /proc/<pid>/stat)."""
    found = []
    for pid in _all_pids():
        fields = _stat_fields(pid)
        if fields is not None and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            found.append(pid)
    return sorted(found)


def descendants(pid: int) -> list[int]:
    tree = parent_map()
    out, todo = [], list(tree.get(pid, []))
    while todo:
        child = todo.pop()
        out.append(child)
        todo.extend(tree.get(child, []))
    return sorted(out)


def is_java(pid: int) -> bool:
    name = _status(pid).get("Name", "").strip()
    return name == "java" or os.path.basename(command_line(pid).split(" ", 1)[0]) == "java"


def torchserve_processes(launcher_pid: int) -> list[tuple[int, str]]:
    """(pid, role) of the java frontend(s) under ``launcher_pid`` and of the worker processes they started."""
    tree = parent_map()
    out: list[tuple[int, str]] = []
    todo = list(tree.get(launcher_pid, []))
    while todo:  # the launcher may sit between us and java (torchserve → java)
        pid = todo.pop()
        if is_java(pid):
            out.append((pid, "frontend"))
            out += [(worker, "worker") for worker in sorted(tree.get(pid, []))]
        else:
            todo.extend(tree.get(pid, []))
    return out


def v2_worker_index(pid: int) -> int | None:
    """The ``--worker`` index of a v2 server worker process (python -m convserve.serving.kserve_server ...), or
    None when ``pid`` is no such process."""
    args = command_args(pid)
    if V2_WORKER_MODULE not in args or "--worker" not in args[:-1]:
        return None
    index = args[args.index("--worker") + 1]
    return int(index) if index.isdigit() else None


def v2_processes(supervisor_pid: int) -> list[tuple[int, str]]:
    """(pid, role) of the v2 server's supervisor and of the worker processes it started, in worker index order."""
    workers = []
    for pid in parent_map().get(supervisor_pid, []):
        index = v2_worker_index(pid)
        if index is not None:
            workers.append((index, pid))
    return [(supervisor_pid, "supervisor"), *((pid, "worker") for _, pid in sorted(workers))]


def torchserve_memory(launcher_pid: int) -> list[ProcessMemory]:
    found = [process_memory(pid, role) for pid, role in torchserve_processes(launcher_pid)]
    return [m for m in found if m is not None]


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of ``pid`` (all its threads) so far, from /proc/<pid>/stat."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    # after the command: state is field 3, so utime (14) and stime (15) are at offsets 11 and 12
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_role(processes: list[tuple[int, str]]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for pid, role in processes:
        used = cpu_seconds(pid)
        if used is not None:
            totals[role] = totals.get(role, 0.0) + used
    return totals


def own_peak_rss_mb() -> float | None:
    """This process's peak RSS (VmHWM); ru_maxrss gives the same on Linux, in kB."""
    found = process_memory(os.getpid(), "self")
    return found.peak_rss_mb if found else None
