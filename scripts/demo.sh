#!/usr/bin/env bash
# The main job on the embedded default dataset: train AlexNet on sklearn's digits (no download).
set -euo pipefail
RUN_DIR="${1:?usage: demo.sh RUN_DIR}"
BIN=.venv/bin
echo "== train: AlexNet on the embedded digits -> $RUN_DIR"
"$BIN/python" training/train.py --config training/configs/demo.yaml --output-dir "$RUN_DIR"
"$BIN/python" -c "import json,sys; s=json.load(open(sys.argv[1])); print(f\"test top-1 {s['test_acc1']:.2f}%  top-5 {s['test_acc5']:.2f}%  wall {s['wall_time_s']:.1f}s\")" "$RUN_DIR/summary.json"
