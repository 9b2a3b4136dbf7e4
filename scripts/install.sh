#!/usr/bin/env bash
# Create the virtual environment and install convserve with every extra; install Java for TorchServe if missing.
#   install.sh [PYTHON] [VENV]   PYTHON: a name or path (default: the one scripts/find_python.sh picks)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="${2:-.venv}"
if [ -x "$VENV/bin/python" ] && [ -z "${1:-}" ]; then
    PY="$VENV/bin/python"  # an existing venv keeps its Python unless one is asked for
else
    PY="$(bash "$HERE/find_python.sh" "${1:-}")"
fi
if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))'; then
    echo "error: $VENV holds Python $("$VENV/bin/python" --version 2>&1 | cut -d' ' -f2), which convserve does not support; remove it (make clean-venv)" >&2
    exit 2
fi
version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }
if [ -x "$VENV/bin/python" ] && [ "$(version "$VENV/bin/python")" != "$(version "$PY")" ]; then
    echo "error: $VENV holds Python $(version "$VENV/bin/python"), not $(version "$PY") ($PY); remove it first (make clean-venv)" >&2
    exit 2
fi
if ! command -v java >/dev/null; then
    echo "installing a Java runtime for TorchServe (apt)"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq openjdk-17-jre-headless >/dev/null
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
echo "installing convserve into $VENV with Python $("$VENV/bin/python" --version 2>&1 | cut -d' ' -f2)"
"$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v -i warning || true
if [ -n "${CONVSERVE_TORCH:-}" ]; then
    # a torch the user already has, or an older pair inside pyproject's range (CONVSERVE_TORCH="torch==2.11.0
    # torchvision==0.26.0"): installed first, convserve's range then keeps it
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install -q $CONVSERVE_TORCH 2>&1 | grep -v -i "warning" || true
fi
"$VENV/bin/python" -m pip install -q -e ".[export,serve,dev]" 2>&1 | grep -v -i "warning" || true
"$VENV/bin/python" -c 'import torch, torchvision, onnxruntime, ts; print("installed torch", torch.__version__, "onnxruntime", onnxruntime.__version__)'
