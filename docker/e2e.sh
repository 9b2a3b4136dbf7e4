#!/usr/bin/env bash
# End to end in real containers, from a bare Debian machine (root) to a served model:
#   engine (installs docker.io + compose, starts dockerd if none answers) -> base image (pulls BASE_IMAGE, or
#   builds a Debian bookworm + Python 3.11 one with debootstrap when no registry answers) -> both images ->
#   `compose up trainer` -> `compose up serve` (export + archive + TorchServe, healthy) -> a top-5 answer on
#   127.0.0.1 with the token -> a bounded load test -> teardown of what this script started (its compose
#   project's containers, networks and volumes; dockerd and the wheel mirror only if it started them).
# Every step skips what already exists, so a second run reuses the engine, base image and build cache.
#
# Settings (environment): BASE_IMAGE, TORCH_INDEX_URL, PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST,
# PIP_FIND_LINKS (passed to the builds), CONVSERVE_WHEEL_DIRS (local PEP 503 indexes to serve to the builds,
# default: /opt/pypi and /opt/pypi-more when present), CONVSERVE_E2E_PORT (host port, default 18080),
# CONVSERVE_E2E_EPOCHS (default 3), CONVSERVE_E2E_WORK (scratch, default /tmp/convserve-e2e).
set -euo pipefail
cd "$(dirname "$0")/.."

WORK="${CONVSERVE_E2E_WORK:-/tmp/convserve-e2e}"
PROJECT="convserve-e2e"
export CONVSERVE_PORT="${CONVSERVE_E2E_PORT:-18080}" CONVSERVE_BIND=127.0.0.1
export CONVSERVE_EPOCHS="${CONVSERVE_E2E_EPOCHS:-3}" CONVSERVE_TAG="${CONVSERVE_TAG:-cpu}"
DEBIAN_BASE="convserve-base:bookworm-py311"
STARTED_DOCKERD="" STARTED_MIRROR="" COMPOSE=()
T0=$SECONDS
mkdir -p "$WORK"

say() { printf '[e2e %4ds] %s\n' "$((SECONDS - T0))" "$*"; }
die() { say "error: $*" >&2; exit 1; }

cleanup() {
    local rc=$?
    set +e
    if [ ${#COMPOSE[@]} -gt 0 ]; then
        say "teardown: compose project $PROJECT (containers, networks, volumes)"
        "${COMPOSE[@]}" --profile loadtest down -v --remove-orphans >"$WORK/down.log" 2>&1
    fi
    [ -n "$STARTED_MIRROR" ] && kill "$STARTED_MIRROR" 2>/dev/null && say "teardown: wheel mirror stopped"
    if [ -n "$STARTED_DOCKERD" ]; then
        kill "$STARTED_DOCKERD" 2>/dev/null
        for _ in $(seq 1 30); do kill -0 "$STARTED_DOCKERD" 2>/dev/null || break; sleep 1; done
        say "teardown: dockerd stopped"
    fi
    say "done in $((SECONDS - T0)) s (exit $rc)"
}
trap cleanup EXIT

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

ensure_engine() {
    if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null; then
        say "installing docker.io, docker-compose, debootstrap (apt)"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose debootstrap \
            >"$WORK/apt.log" 2>&1 || die "apt-get install failed, see $WORK/apt.log"
    fi
    if ! docker info >/dev/null 2>&1; then
        say "starting dockerd (log $WORK/dockerd.log)"
        as_root dockerd >"$WORK/dockerd.log" 2>&1 &
        STARTED_DOCKERD=$!
        for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
        docker info >/dev/null 2>&1 || die "dockerd did not come up, see $WORK/dockerd.log"
    fi
    if docker compose version >/dev/null 2>&1; then
        COMPOSE=(docker compose -p "$PROJECT")
    elif command -v docker-compose >/dev/null; then
        COMPOSE=(docker-compose -p "$PROJECT")  # Debian bookworm ships compose 1.29, which reads the same file
    else
        die "neither 'docker compose' nor 'docker-compose' is installed"
    fi
    say "engine: $(docker version -f 'server {{.Server.Version}}' 2>/dev/null); compose: $("${COMPOSE[@]:0:2}" version 2>/dev/null | head -1)"
}

ensure_base_image() {
    if [ -n "${BASE_IMAGE:-}" ]; then
        docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 || timeout 120 docker pull -q "$BASE_IMAGE" >/dev/null \
            || die "BASE_IMAGE=$BASE_IMAGE is neither local nor pullable"
    elif docker image inspect python:3.11-slim-bookworm >/dev/null 2>&1 \
        || timeout 60 docker pull -q python:3.11-slim-bookworm >/dev/null 2>&1; then
        BASE_IMAGE=python:3.11-slim-bookworm
    else
        BASE_IMAGE="$DEBIAN_BASE"
        if ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
            say "no registry answers: building $BASE_IMAGE with debootstrap (Debian bookworm + Python 3.11)"
            local root="$WORK/rootfs"
            as_root rm -rf "$root"
            as_root debootstrap --variant=minbase \
                --include=python3.11,python3.11-venv,python3-distutils,python3-lib2to3,python3-pip-whl,python3-setuptools-whl,ca-certificates \
                bookworm "$root" http://deb.debian.org/debian >"$WORK/debootstrap.log" 2>&1 \
                || die "debootstrap failed, see $WORK/debootstrap.log"
            as_root tar -C "$root" --exclude=./proc --exclude=./sys --exclude=./dev --exclude=./debootstrap \
                --exclude='./var/cache/apt/archives/*.deb' --exclude='./var/lib/apt/lists/*' -c . \
                | docker import -c 'CMD ["python3.11"]' - "$BASE_IMAGE" >/dev/null
            as_root rm -rf "$root"
        fi
    fi
    export BASE_IMAGE
    say "base image: $BASE_IMAGE"
}

ensure_build_settings() {
    # A TLS-intercepting proxy's CA must be trusted inside the builds: docker/certs/*.crt (git-ignored).
    local crt
    for crt in /usr/local/share/ca-certificates/*.crt; do
        [ -f "$crt" ] && { [ -f "docker/certs/$(basename "$crt")" ] || cp "$crt" docker/certs/; }
    done
    if [ -z "${TORCH_INDEX_URL+set}" ] \
        && ! curl -sfI --max-time 10 https://download.pytorch.org/whl/cpu/torch/ >/dev/null 2>&1; then
        export TORCH_INDEX_URL=""  # the PyTorch CPU index is out of reach: torch comes from the pip indexes
        say "PyTorch CPU index unreachable: torch from the pip indexes (the CUDA build, several GB)"
    fi
    local dirs=() d
    for d in ${CONVSERVE_WHEEL_DIRS:-/opt/pypi /opt/pypi-more}; do [ -d "$d/simple" ] && dirs+=("$d"); done
    if [ ${#dirs[@]} -gt 0 ] && [ -z "${PIP_EXTRA_INDEX_URL:-}" ]; then
        # Serve the local indexes over HTTP on loopback; builds use the host network to reach them. A fixed
        # port keeps the build args, and so Docker's layer cache, the same from one run to the next.
        local mirror="$WORK/mirror" port="${CONVSERVE_E2E_MIRROR_PORT:-8765}" urls="" first
        first="http://127.0.0.1:$port/$(basename "${dirs[0]}")/simple/"
        if ! curl -sf --max-time 5 "$first" >/dev/null 2>&1; then
            mkdir -p "$mirror"
            for d in "${dirs[@]}"; do ln -sfn "$d" "$mirror/$(basename "$d")"; done
            python3 -m http.server "$port" --bind 127.0.0.1 --directory "$mirror" >"$WORK/mirror.log" 2>&1 &
            STARTED_MIRROR=$!
            for _ in $(seq 1 20); do curl -sf --max-time 2 "$first" >/dev/null 2>&1 && break; sleep 0.5; done
        fi
        for d in "${dirs[@]}"; do urls+="http://127.0.0.1:$port/$(basename "$d")/simple "; done
        export PIP_EXTRA_INDEX_URL="${urls% }" PIP_TRUSTED_HOST=127.0.0.1
        say "local wheel indexes for the builds: $PIP_EXTRA_INDEX_URL"
    fi
}

build_images() {
    local name file start
    # export: the serving image with models/, training/, export/, loadtest/ and their libraries (checkpoint -> ONNX,
    # the load test and its digits)
    for name in train serve export; do
        file="docker/Dockerfile.$name" with_training=0
        [ "$name" = export ] && file=docker/Dockerfile.serve with_training=1
        start=$SECONDS
        say "building convserve-$name:$CONVSERVE_TAG (log $WORK/build-$name.log)"
        docker build --network host -f "$file" -t "convserve-$name:$CONVSERVE_TAG" --build-arg WITH_TRAINING=$with_training \
            --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg TORCH_INDEX_URL="${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}" \
            --build-arg PIP_INDEX_URL="${PIP_INDEX_URL:-}" --build-arg PIP_EXTRA_INDEX_URL="${PIP_EXTRA_INDEX_URL:-}" \
            --build-arg PIP_TRUSTED_HOST="${PIP_TRUSTED_HOST:-}" --build-arg PIP_FIND_LINKS="${PIP_FIND_LINKS:-}" \
            . >"$WORK/build-$name.log" 2>&1 || { tail -30 "$WORK/build-$name.log"; die "build of $file failed"; }
        say "built convserve-$name:$CONVSERVE_TAG in $((SECONDS - start)) s," \
            "$(docker image inspect -f '{{.Size}}' "convserve-$name:$CONVSERVE_TAG" | awk '{printf "%.2f GB", $1/1e9}')"
    done
}

container_of() { "${COMPOSE[@]}" ps -q "$1" | head -1; }

train() {
    say "docker compose up trainer"
    "${COMPOSE[@]}" up --no-build trainer 2>&1 | tee "$WORK/trainer.log" | grep -E 'epoch [0-9]+/|trainer: |error' || true
    local code
    code=$(docker inspect -f '{{.State.ExitCode}}' "$(container_of trainer)")
    [ "$code" = 0 ] || die "trainer exited with $code, see $WORK/trainer.log"
}

serve() {
    say "docker compose up serve (export + archive, then TorchServe)"
    "${COMPOSE[@]}" up --no-build -d serve >"$WORK/serve-up.log" 2>&1 || { cat "$WORK/serve-up.log"; die "compose up serve failed"; }
    local id status=""
    id=$(container_of serve)
    for _ in $(seq 1 120); do
        status=$(docker inspect -f '{{.State.Health.Status}}' "$id")
        [ "$status" = healthy ] && break
        [ "$(docker inspect -f '{{.State.Running}}' "$id")" = true ] || break
        sleep 5
    done
    "${COMPOSE[@]}" logs --no-color export serve >"$WORK/serve.log" 2>&1 || true
    [ "$status" = healthy ] || { tail -40 "$WORK/serve.log"; die "serve did not become healthy ($status)"; }
    say "serve is healthy (a TorchServe worker of alexnet is READY)"
}

predict() {
    local key
    # A real 8x8 digit of the embedded dataset, scaled as the trainer scales it; made in the export image.
    "${COMPOSE[@]}" run -T --rm --no-deps --entrypoint python export -c \
        'import io,sys; from PIL import Image; from sklearn.datasets import load_digits; d=load_digits(); b=io.BytesIO(); Image.fromarray((d.images[7]*255/16).round().astype("uint8")).save(b,"PNG"); sys.stdout.buffer.write(b.getvalue()); print(d.target[7], file=sys.stderr)' \
        >"$WORK/digit.png" 2>"$WORK/digit.label"
    key=$("${COMPOSE[@]}" exec -T serve python -c \
        'import json,os; print(json.load(open(os.environ["CONVSERVE_KEY_FILE"]))["inference"]["key"])')
    say "POST a digit $(tail -1 "$WORK/digit.label") to http://127.0.0.1:$CONVSERVE_PORT/predictions/alexnet"
    curl -sS --fail-with-body --max-time 30 -H "Authorization: Bearer $key" -H "Content-Type: image/png" \
        --data-binary @"$WORK/digit.png" "http://127.0.0.1:$CONVSERVE_PORT/predictions/alexnet" >"$WORK/top5.json" \
        || { cat "$WORK/top5.json"; die "prediction failed"; }
    say "served top-5: $(tr -d '\n' <"$WORK/top5.json")"
    local unauthorized
    unauthorized=$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 -H "Content-Type: image/png" \
        --data-binary @"$WORK/digit.png" "http://127.0.0.1:$CONVSERVE_PORT/predictions/alexnet")
    # TorchServe 0.12 refuses a missing/wrong key with 400 ("Token Authorization failed"), the gate with 401.
    case "$unauthorized" in 400 | 401) ;; *) die "a request without the token got HTTP $unauthorized" ;; esac
    say "without the token: refused (HTTP $unauthorized)"
    # Management listens on the container's loopback only and is not published: neither the host's port
    # mapping nor the container's own address on the compose network reaches it.
    local id ip
    id=$(container_of serve)
    docker port "$id" | grep -q ':8081\|8081/' && die "the management port is published: $(docker port "$id")"
    ip=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$id" | awk '{print $1}')
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://$ip:8080/ping")" != 000 ] \
        || die "inference port unreachable on $ip:8080, so the management check below would prove nothing"
    curl -s --max-time 5 "http://$ip:8081/models" >/dev/null 2>&1 && die "management API answers on $ip:8081"
    say "management API not reachable from the host (published: $(docker port "$id" | tr '\n' ' '))"
}

loadtest() {
    say "load test: ${CONVSERVE_LOAD_REQUESTS:=200} requests or ${CONVSERVE_LOAD_SECONDS:=30} s, whichever ends first"
    export CONVSERVE_LOAD_REQUESTS CONVSERVE_LOAD_SECONDS
    timeout $((CONVSERVE_LOAD_SECONDS + 120)) "${COMPOSE[@]}" --profile loadtest run --rm --no-deps loadtest \
        >"$WORK/loadtest.log" 2>&1 || { tail -20 "$WORK/loadtest.log"; die "load test failed"; }
    tail -15 "$WORK/loadtest.log"
}

stop_serve() {
    local start=$SECONDS
    "${COMPOSE[@]}" stop -t 30 serve >/dev/null 2>&1
    say "serve stopped in $((SECONDS - start)) s (SIGTERM; 30 s grace)"
}

ensure_engine
ensure_base_image
ensure_build_settings
build_images
train
serve
predict
loadtest
stop_serve
