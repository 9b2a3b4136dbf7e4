#!/usr/bin/env bash
# Create the virtual environment and install convserve with every extra; install Java for TorchServe if missing.
set -euo pipefail
PY="${1:-python3.11}"
VENV="${2:-.venv}"
command -v "$PY" >/dev/null || PY=python3
if ! "$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11)' 2>/dev/null; then
    echo "error: convserve needs Python 3.11 ($PY is $("$PY" --version 2>&1))" >&2
    exit 2
fi
if ! command -v java >/dev/null; then
    echo "installing a Java runtime for TorchServe (apt)"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq openjdk-17-jre-headless >/dev/null
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v -i warning || true
"$VENV/bin/python" -m pip install -q -e ".[export,serve,dev]" 2>&1 | grep -v -i "warning" || true
"$VENV/bin/python" -c 'import torch, torchvision, onnxruntime, ts; print("installed torch", torch.__version__, "onnxruntime", onnxruntime.__version__)'
