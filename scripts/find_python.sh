#!/usr/bin/env bash
# Print the path of a Python convserve supports (3.11 to 3.13), or say in one line what to install and exit 2.
#   find_python.sh            python3 when it is 3.11-3.13, else the newest python3.13 / python3.12 / python3.11
#   find_python.sh NAME|PATH  that interpreter (make install PY=python3.12), checked
# A pyenv shim for a version that is installed but not selected fails when run: its interpreter is then taken
# from pyenv's versions folder.
set -euo pipefail
SUPPORTED="3.11, 3.12 or 3.13"

supported() { "$1" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 13))' >/dev/null 2>&1; }

# every runnable interpreter a name stands for: itself, then pyenv's installed copies of it (newest first)
candidates() {
    local name="$1"
    if command -v "$name" >/dev/null 2>&1 && "$name" -c '' >/dev/null 2>&1; then
        command -v "$name"
    fi
    if [[ "$name" != */* ]] && command -v pyenv >/dev/null 2>&1; then
        local root
        root="$(pyenv root 2>/dev/null)" || return 0
        printf "%s\n" "$root"/versions/*/bin/"$name" | grep -v "[*]" | sort -rV || true
    fi
}

if [ $# -gt 0 ] && [ -n "$1" ]; then
    for py in $(candidates "$1"); do
        if supported "$py"; then echo "$py"; exit 0; fi
    done
    found="$( { for py in $(candidates "$1"); do "$py" --version 2>&1; done; } | head -1)"
    echo "error: $1 is ${found:-not installed}; convserve needs Python $SUPPORTED (install one, e.g. apt install python3.12-venv, or pass PY=...)" >&2
    exit 2
fi
for name in python3 python3.13 python3.12 python3.11; do
    for py in $(candidates "$name"); do
        if supported "$py"; then echo "$py"; exit 0; fi
    done
done
have="$(python3 --version 2>&1 || echo 'no python3')"
echo "error: no Python $SUPPORTED found ($have); install one (e.g. apt install python3.12-venv) or pass PY=/path/to/python" >&2
exit 2
