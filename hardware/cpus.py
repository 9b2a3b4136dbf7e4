"""How many CPUs this process may really use: the affinity mask and the cgroup CPU quota, whichever is smaller.

``os.sched_getaffinity`` sees every CPU of a 64-core node inside a container limited to 2 CPUs of quota
(Kubernetes ``limits.cpu: 2``, ``docker run --cpus 2``); starting 64 intra-op threads there makes each of them
wait for its share of the quota.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

ROOT = Path("/")


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (what os.sched_getaffinity sees; the quota is not applied)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _own_cgroups(root: Path) -> dict[str, str]:
    """controller -> cgroup path of this process ("" for the unified v2 hierarchy), from /proc/self/cgroup."""
    text = _read(root / "proc" / "self" / "cgroup") or ""
    groups: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(",") if parts[1] else [""]:
            groups[controller] = parts[2]
    return groups


def _ancestors(mount: Path, cgroup_path: str) -> list[Path]:
    """The cgroup's folder and each parent up to the mount point: a quota set on a parent limits us too.

    Inside a container the path in /proc/self/cgroup may name the host's hierarchy while the mount shows
    only our own subtree, so folders that do not exist are simply skipped.
    """
    parts = [p for p in cgroup_path.strip("/").split("/") if p]
    return [mount.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]


def _v2_quota(root: Path, cgroup_path: str) -> float | None:
    limits = []
    for folder in _ancestors(root / "sys" / "fs" / "cgroup", cgroup_path):
        text = _read(folder / "cpu.max")
        if text and not text.startswith("max"):
            quota, _, period = text.partition(" ")
            try:
                if float(period or 100_000) > 0:
                    limits.append(float(quota) / float(period or 100_000))
            except ValueError:  # an unreadable limit limits nothing
                continue
    return min(limits) if limits else None


def _v1_quota(root: Path, cgroup_path: str) -> float | None:
    limits = []
    for mount_name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        for folder in _ancestors(root / "sys" / "fs" / "cgroup" / mount_name, cgroup_path):
            quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
            if quota and period and quota.isdigit() and period.isdigit() and int(quota) > 0 and int(period) > 0:
                limits.append(int(quota) / int(period))  # "-1" (no limit) and unreadable values limit nothing
    return min(limits) if limits else None


def cgroup_cpu_limit(root: Path = ROOT) -> float | None:
    """CPUs of quota the cgroup gives this process (e.g. 1.5), or None when unlimited or unknown."""
    groups = _own_cgroups(root)
    limits = []
    if "" in groups:
        limits.append(_v2_quota(root, groups[""]))
    if "cpu" in groups:
        limits.append(_v1_quota(root, groups["cpu"]))
    limits = [v for v in limits if v is not None]
    return min(limits) if limits else None


def usable_cpus(root: Path = ROOT) -> int:
    """CPUs this process may use: affinity and cgroup quota, rounded down, at least 1.

    The one answer for the whole project: torch intra-op threads, the ONNX Runtime / torch split in serving,
    TorchServe workers and the machine probe all start from it.
    """
    count = affinity_cpus()
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        count = min(count, math.floor(limit))
    return max(1, count)
