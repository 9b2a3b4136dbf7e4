#!/usr/bin/env bash
# Every GPU check of convserve in one command, from the source tree (no install):
#   bash scripts/gpu_check.sh [--dry-run] [--wheels DIR] [--compile] [--nproc N] [--epochs N] [OUT]
# writes OUT/gpu_report.json and OUT/gpu_report.md (OUT defaults to gpu-report/) and prints a short table last.
# The logic is the Python package scripts/gpu_check/; this only picks the Python and puts that package on its path.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -n "${PYTHON:-}" ]; then
    PY="$PYTHON"
elif [ -x "$ROOT/.venv/bin/python" ]; then
    PY="$ROOT/.venv/bin/python"
else
    PY=python3
fi
# convserve installed in that Python (make install, pip install .) is used as installed; on a bare machine the
# checkout itself is put on the path (convserve/ finds its rooms beside it)
if (cd / && "$PY" -c 'import convserve') >/dev/null 2>&1; then
    export PYTHONPATH="$ROOT/scripts${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$ROOT:$ROOT/scripts${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$PY" -m gpu_check "$@"
