#!/bin/sh
# Build-stage only: create /opt/venv and install pyproject.toml's dependencies for one image.
#   install_deps.sh VARIANT EXTRAS...      VARIANT: cpu | gpu
# Reads (all optional, as build args): TORCH_INDEX_URL, PIP_INDEX_URL, PIP_EXTRA_INDEX_URL,
# PIP_TRUSTED_HOST, PIP_FIND_LINKS.
set -eu
VARIANT="$1"
shift

# An ARG given as "" must mean "not set", not "an empty index URL" (pip would fail on it).
for var in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST PIP_FIND_LINKS TORCH_INDEX_URL; do
    eval "value=\${$var:-}"
    # shellcheck disable=SC2154  # value is set by the eval above
    [ -n "$value" ] || unset "$var"
done

case "$VARIANT" in
    cpu) ORT=onnxruntime ;;
    gpu) ORT=onnxruntime-gpu; unset TORCH_INDEX_URL ;;  # PyPI's torch wheels are the CUDA build
    *) echo "error: VARIANT must be cpu or gpu, not '$VARIANT'" >&2; exit 2 ;;
esac

python3.11 -m venv /opt/venv
PIP="/opt/venv/bin/python -m pip --no-cache-dir --disable-pip-version-check --no-input"
REQS="python3.11 /tmp/build/requirements.py --pyproject /tmp/build/pyproject.toml"

# torch first, from the CPU-only index when one is given: PyPI's default torch pulls GBs of CUDA wheels.
$REQS --only torch,torchvision > /tmp/build/torch.txt
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    # The torch index carries torch's own dependencies too; the other indexes stay as extras for the rest.
    $PIP install --index-url "$TORCH_INDEX_URL" ${PIP_INDEX_URL:+--extra-index-url "$PIP_INDEX_URL"} \
        -r /tmp/build/torch.txt
else
    $PIP install -r /tmp/build/torch.txt
fi

# shellcheck disable=SC2086  # EXTRAS is a list of words on purpose
$REQS "$@" --replace "onnxruntime-gpu=$ORT" > /tmp/build/requirements.txt
$PIP install -r /tmp/build/requirements.txt
$PIP check
# pip is not needed at run time (byte-code caches stay: they save seconds on every start).
$PIP uninstall -y pip >/dev/null
