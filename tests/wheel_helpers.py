"""Build convserve's wheel as a user gets it, and a fresh virtualenv that installs it (not editable)."""

from __future__ import annotations

import importlib.metadata
import shutil
import site
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# commands our code starts by their path next to the interpreter (TorchServe's launcher and its archiver)
NEIGHBOUR_COMMANDS = ("torchserve", "torch-model-archiver")


def source_copy(dest: Path) -> Path:
    """The files git would ship (tracked, and new ones not ignored), copied: a build in the checkout would leave
    build/ there, whose stale modules a later build packs too."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():  # a file deleted but not yet staged is listed too
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def build_wheel(out: Path) -> Path:
    """``pip wheel`` of the sources without build isolation: offline, with the setuptools the dev extra installs."""
    source = source_copy(Path(out) / "source")
    cmd = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q", "-w", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=out)
    (wheel,) = Path(out).glob("convserve-*.whl")
    return wheel


def fresh_venv_with(wheel: Path, root: Path) -> Path:
    """A new virtualenv holding the wheel installed for real; its dependencies are this environment's (a .pth
    line adds our site-packages as a plain folder: their .pth files, the editable finder among them, stay off).
    Returns its bin folder."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(purelib) / "reuse_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q"]
    subprocess.run([*install, str(wheel)], check=True, capture_output=True, text=True)
    for name in NEIGHBOUR_COMMANDS:
        _write_launcher(root / "bin", name)
    return root / "bin"


def _write_launcher(bin_dir: Path, name: str) -> None:
    """What pip writes for a console script, for a command of a reused dependency."""
    (entry,) = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == name]
    module, _, attr = entry.value.partition(":")
    script = bin_dir / name
    script.write_text(f"#!{bin_dir / 'python'}\nimport sys\nfrom {module} import {attr}\nsys.exit({attr}())\n")
    script.chmod(0o755)
