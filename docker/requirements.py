"""Print the pip requirement lines of pyproject.toml (core + chosen extras) for an image build.

``python docker/requirements.py serve export --replace onnxruntime-gpu=onnxruntime --only torch,torchvision``
``python docker/requirements.py serve export --exclude torchvision,tensorboard``

pyproject.toml stays the one list of dependencies: the Dockerfiles install from this output instead of
copying version pins, a CPU image swaps the GPU build of ONNX Runtime for the CPU one here, and the serving
image leaves out what only training and exporting import. A name given to --only or --exclude that the chosen
lists lack is an error (a misspelt exclusion would otherwise install the package silently).
Standard library only, because it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirement_name(line: str) -> str:
    match = _NAME.match(line)
    if not match:
        raise ValueError(f"not a requirement: {line!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def requirements(
    pyproject: Path,
    extras: list[str],
    replace: dict[str, str],
    only: set[str] | None,
    exclude: frozenset[str] = frozenset(),
) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"error: unknown extra(s) {unknown}; pyproject.toml has {sorted(optional)}")
    lines = list(project["dependencies"]) + [r for e in extras for r in optional[e]]
    out, names = [], set()
    for line in lines:
        name = requirement_name(line)
        if name in replace:
            line = replace[name] + line[len(_NAME.match(line).group(1)) :]
            name = requirement_name(line)
        names.add(name)
        if (only is None or name in only) and name not in exclude:
            out.append(line)
    absent = sorted(((only or set()) | exclude) - names)
    if absent:
        raise SystemExit(f"error: {absent} not among the requirements of the core and extra(s) {extras}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("extras", nargs="*", help="extras of pyproject.toml to include")
    p.add_argument("--pyproject", type=Path, default=Path(__file__).resolve().parent.parent / "pyproject.toml")
    p.add_argument("--replace", action="append", default=[], metavar="OLD=NEW", help="swap a distribution name")
    p.add_argument("--only", default=None, help="comma-separated names to keep (default: all)")
    p.add_argument("--exclude", default="", help="comma-separated names to leave out (after --replace)")
    args = p.parse_args(argv)
    replace = dict(r.split("=", 1) for r in args.replace if r.split("=", 1)[0] != r.split("=", 1)[-1])
    only = {requirement_name(n) for n in args.only.split(",")} if args.only else None
    exclude = frozenset(requirement_name(n) for n in args.exclude.split(",") if n.strip())
    print("\n".join(requirements(args.pyproject, args.extras, replace, only, exclude)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
