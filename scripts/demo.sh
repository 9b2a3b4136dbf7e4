#!/usr/bin/env bash
# make demo: the whole pipeline on the embedded digits (no download):
# train AlexNet -> export ONNX + TorchScript (parity-checked) -> archive -> TorchServe -> top-5 over HTTP -> stop.
set -euo pipefail
NAME="${1:?usage: demo.sh NAME}"
PORT="${PORT:-8080}"
CONFIG="${DEMO_CONFIG:-training/configs/demo.yaml}"
EXTRA=()
[ -n "${DEMO_EPOCHS:-}" ] && EXTRA=(--epochs "$DEMO_EPOCHS")   # a quick dry run of the pipeline
BIN=.venv/bin
RUN_DIR="runs/$NAME"
ARTIFACT="artifacts/$NAME"
STORE="model_store/$NAME"
SERVE_DIR="logs/$NAME"

step() { printf '\n== %s\n' "$*"; }

step "1/5 train AlexNet on the embedded sklearn digits -> $RUN_DIR"
"$BIN/python" training/train.py --config "$CONFIG" --output-dir "$RUN_DIR" "${EXTRA[@]}"
"$BIN/python" - "$RUN_DIR/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"trained: test top-1 {s['test_acc1']:.2f}%  top-5 {s['test_acc5']:.2f}%  ({s['test_count']} test images, "
      f"best epoch {s['best_epoch'] + 1}, {s['wall_time_s']:.1f} s wall, {s['precision']}, {s['images_per_s']:.0f} img/s, "
      f"peak RSS {s['peak_rss_mb']:.0f} MB)")
PY

step "2/5 export ONNX and TorchScript (each verified against the eager model) -> $ARTIFACT"
"$BIN/python" export/to_onnx.py "$RUN_DIR/checkpoints/best.pt" --output-dir "$ARTIFACT"
"$BIN/python" export/to_torchscript.py "$RUN_DIR/checkpoints/best.pt" --output-dir "$ARTIFACT"

step "3/5 archive for TorchServe -> $STORE/alexnet.mar"
"$BIN/python" serving/archive.py "$ARTIFACT" --model-name alexnet --export-path "$STORE" --backend onnx

step "4/5 start TorchServe on 127.0.0.1:$PORT (returns once the workers really answer)"
"$BIN/python" serving/serve.py --model-store "$STORE" --models alexnet=alexnet.mar --port "$PORT" --run-dir "$SERVE_DIR"
trap '"$BIN/python" serving/serve.py --stop --run-dir "$SERVE_DIR" >/dev/null 2>&1 || true' EXIT

step "5/5 ask the server: a real photo and a real handwritten digit"
"$BIN/python" - "$SERVE_DIR" <<'PY'
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data
from sklearn.datasets import load_digits

out = Path(sys.argv[1])
Image.fromarray(data.chelsea()).save(out / "cat.jpg", quality=92)
bunch = load_digits()
digit = np.round(bunch.images[1000] * 255 / 16).astype(np.uint8)
Image.fromarray(digit).resize((64, 64), Image.BILINEAR).save(out / f"digit-{bunch.target[1000]}.png")
PY
for img in "$SERVE_DIR"/cat.jpg "$SERVE_DIR"/digit-*.png; do
    echo "-- $(basename "$img")"
    "$BIN/python" serving/predict.py --url "http://127.0.0.1:$PORT/predictions/alexnet" "$img"
done
echo
echo "try it yourself:  curl -T $SERVE_DIR/cat.jpg http://127.0.0.1:$PORT/predictions/alexnet"
echo "(the demo stops the server now; 'make serve' keeps one running)"
