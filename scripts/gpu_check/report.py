"""The report: one row per check (figure, PASS/FAIL, target, what was measured), the machine it ran on,
written as gpu_report.json and gpu_report.md after every row (a crash still leaves what was measured)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from convserve.common.files import write_text_atomic

SCHEMA = "convserve.gpu_report/v1"
JSON_NAME, MD_NAME = "gpu_report.json", "gpu_report.md"
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


@dataclass
class Row:
    name: str
    status: str  # "PASS" | "FAIL" | "n/a: why" (a check this machine cannot make, e.g. 2 ranks on 1 GPU)
    figure: str  # the measured result in one line
    target: str  # what PASS requires (GPU-only thresholds: "n/a on dry run")
    detail: str = ""  # what exactly ran and was timed
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "PASS" or self.status.startswith("n/a")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def machine_facts(device: str) -> dict[str, Any]:
    """CPU model and flags, usable CPUs, load, library versions; the GPU, its memory and CUDA where used."""
    import torch

    from convserve.hardware.cpu_features import cpu_flags
    from convserve.hardware.machine import describe_machine

    facts: dict[str, Any] = describe_machine().model_dump()
    flags = cpu_flags()
    facts["cpu_flags"] = [f for f in CPU_FLAGS if f in flags]
    facts["torch"] = torch.__version__
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        facts.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_capability=f"{props.major}.{props.minor}",
            gpu_count=torch.cuda.device_count(),
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    return facts


@dataclass
class Report:
    folder: Path
    mode: str  # "gpu" | "dry-run"
    command: str
    budget_s: int
    machine: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # checks not run yet
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    wall_s: float = 0.0
    installed_wheels: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def over_budget(self) -> bool:
        return self.wall_s > self.budget_s

    @property
    def passed(self) -> bool:
        return bool(self.rows) and not self.pending and all(r.passed for r in self.rows) and not self.over_budget

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "mode": self.mode,
            "device": "cuda" if self.mode == "gpu" else "cpu",
            "command": self.command,
            "started_at": self.started_at,
            "wall_s": round(self.wall_s, 1),
            "budget_s": self.budget_s,
            "passed": self.passed,
            "machine": self.machine,
            "installed_wheels": self.installed_wheels,
            "notes": self.notes,
            "rows": [asdict(r) for r in self.rows],
            "not_run": self.pending,
        }

    def write(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.folder / JSON_NAME, json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        write_text_atomic(self.folder / MD_NAME, markdown(self))


def _machine_line(m: dict[str, Any]) -> str:
    gpu = (
        f"{m['gpu']} ({m['gpu_memory_gib']} GiB, sm {m['gpu_capability']}, CUDA {m['cuda']}, cuDNN {m['cudnn']})"
        if m.get("gpu_memory_gib")
        else "no GPU used (dry run on the CPU)"
    )
    flags = ", ".join(m.get("cpu_flags", [])) or "none of avx2/avx512f/avx512_bf16/amx_bf16"
    load = " / ".join(str(v) for v in m.get("load_average", []))
    return (
        f"GPU: {gpu}. CPU: {m.get('cpu_model')} ({m.get('usable_cpus')} usable CPUs; {flags}), load {load} "
        f"at the start. Python {m.get('python')}, torch {m.get('torch')}."
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(report: Report) -> str:
    title = "dry run on the CPU (tiny sizes)" if report.mode == "dry-run" else report.machine.get("gpu", "GPU")
    lines = [
        f"# GPU check: {title}",
        "",
        f"`{report.command}`, started {report.started_at}, {report.wall_s:.0f} s wall (budget {report.budget_s} s). "
        f"Overall: **{verdict(report.passed)}**.",
        "",
        _machine_line(report.machine),
        "",
        *(f"- {note}" for note in report.notes),
        *([""] if report.notes else []),
        "| check | status | figure | target |",
        "|---|---|---|---|",
        *(f"| {r.name} | {r.status} | {_cell(r.figure)} | {_cell(r.target)} |" for r in report.rows),
        *(f"| {name} | not run | | |" for name in report.pending),
        "",
        "## What each row measures",
        "",
        *(f"- **{r.name}** ({r.seconds:.0f} s): {r.detail}" for r in report.rows),
    ]
    if report.installed_wheels:
        lines += ["", f"Installed for this run from --wheels: {', '.join(report.installed_wheels)}."]
    return "\n".join(lines) + "\n"


def table(report: Report, width: int = 100) -> str:
    """The short table printed last: check, status, figure (cut to fit)."""
    name_w = max([len(r.name) for r in report.rows] + [len(n) for n in report.pending] + [5])
    out = [f"{'check':<{name_w}}  status   figure"]
    for r in report.rows:
        figure = r.figure if len(r.figure) <= width else r.figure[: width - 3] + "..."
        out.append(f"{r.name:<{name_w}}  {r.status:<7}  {figure}")
    out += [f"{name:<{name_w}}  not run" for name in report.pending]
    out.append(f"overall: {verdict(report.passed)} in {report.wall_s:.0f} s ({report.mode}); report in {report.folder}")
    return "\n".join(out)
