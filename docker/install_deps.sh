#!/bin/sh
# Build-stage only: install pyproject.toml's dependencies into /opt/venv, in two steps (two layers), so the
# large torch layer is the same in both images and built once:
#   install_deps.sh torch VARIANT   create /opt/venv with /tmp/build/torch.txt (torch + torchvision)
#   install_deps.sh rest VARIANT    add /tmp/build/requirements.txt, then check and drop pip
# VARIANT: cpu | gpu. The requirement files come from docker/requirements.py (the Dockerfiles' first stage).
# Reads (all optional, as build args): TORCH_INDEX_URL, PIP_INDEX_URL, PIP_EXTRA_INDEX_URL,
# PIP_TRUSTED_HOST, PIP_FIND_LINKS.
set -eu
STEP="$1"
VARIANT="$2"

# An ARG given as "" must mean "not set", not "an empty index URL" (pip would fail on it).
for var in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST PIP_FIND_LINKS TORCH_INDEX_URL; do
    eval "value=\${$var:-}"
    # shellcheck disable=SC2154  # value is set by the eval above
    [ -n "$value" ] || unset "$var"
done

case "$VARIANT" in
    cpu) ;;
    gpu) unset TORCH_INDEX_URL ;;  # PyPI's torch wheels are the CUDA build
    *) echo "error: VARIANT must be cpu or gpu, not '$VARIANT'" >&2; exit 2 ;;
esac

PIP="/opt/venv/bin/python -m pip --no-cache-dir --disable-pip-version-check --no-input"

case "$STEP" in
    torch)
        python3.11 -m venv /opt/venv
        # From the CPU-only index when one is given: PyPI's default torch pulls GBs of CUDA wheels.
        if [ -n "${TORCH_INDEX_URL:-}" ]; then
            # The torch index carries torch's own dependencies too; a given PIP_INDEX_URL stays as an extra.
            $PIP install --index-url "$TORCH_INDEX_URL" ${PIP_INDEX_URL:+--extra-index-url "$PIP_INDEX_URL"} \
                -r /tmp/build/torch.txt
        else
            $PIP install -r /tmp/build/torch.txt
        fi
        ;;
    rest)
        $PIP install -r /tmp/build/requirements.txt
        $PIP check
        # pip is not needed at run time (byte-code caches stay: they save seconds on every start).
        $PIP uninstall -y pip >/dev/null
        ;;
    *) echo "error: STEP must be torch or rest, not '$STEP'" >&2; exit 2 ;;
esac
