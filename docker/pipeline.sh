#!/bin/sh
# The container steps of the pipeline, each safe to run again (compose restarts one-shot services on `up`):
#   pipeline.sh train [TRAIN FLAGS...]   train into $CONVSERVE_RUN unless it already holds a finished run
#                                        ($CONVSERVE_EPOCHS, when set and not empty, adds --epochs N)
#   pipeline.sh export                   ONNX artifact + TorchServe archive, unless the archive exists
#   pipeline.sh loadtest [LOADTEST FLAGS...]  loadtest/loadtest.py with real digit PNGs and the server's token
#                                        (read from $CONVSERVE_KEY_FILE, the serve container's run folder)
#   pipeline.sh serve [SERVE FLAGS...]   the model in the foreground on $CONVSERVE_SERVE_HOST:$CONVSERVE_SERVE_PORT
#                                        (0.0.0.0:8080), by $CONVSERVE_SERVER: torchserve (default: the archive
#                                        through serving/serve.py; its run folder $CONVSERVE_SERVE_DIR holds logs
#                                        and key_file.json) or kserve (the artifact through serving/serve_v2.py,
#                                        the Open Inference Protocol; beyond loopback it needs $CONVSERVE_TOKEN)
# Finished outputs are reused, never overwritten: remove the volume (docker compose down -v) to start over.
set -eu
RUN="${CONVSERVE_RUN:-/data/runs/demo}"
ARTIFACT="${CONVSERVE_ARTIFACT:-/data/artifacts/demo}"
STORE="${CONVSERVE_MODEL_STORE:-/data/model-store}"
MODEL="${CONVSERVE_MODEL_NAME:-alexnet}"
EXPORT_FORMAT="${CONVSERVE_EXPORT_FORMAT:-onnx}"
SERVE_DIR="${CONVSERVE_SERVE_DIR:-/srv/torchserve}"
cd "${CONVSERVE_APP_DIR:-/app}"  # the source tree in the image (a checkout when tested outside)

report_accuracy() {
    python -c 'import json,sys; s=json.load(open(sys.argv[1])); print("trainer: final test top-1 %.2f%% top-5 %.2f%% (%s)" % (s["test_acc1"], s["test_acc5"], sys.argv[1]))' "$RUN/summary.json"
}

step="${1:-}"
[ $# -gt 0 ] && shift
case "$step" in
    train)
        if [ -f "$RUN/summary.json" ]; then
            echo "trainer: $RUN already holds a finished run; reusing it"
        elif [ -f "$RUN/checkpoints/last.pt" ]; then
            echo "trainer: resuming the unfinished run in $RUN"
            python training/train.py --resume --output-dir "$RUN"
        elif [ -n "${CONVSERVE_EPOCHS:-}" ]; then
            python training/train.py --output-dir "$RUN" "$@" --epochs "$CONVSERVE_EPOCHS"
        else
            python training/train.py --output-dir "$RUN" "$@"
        fi
        report_accuracy
        ;;
    export)
        if [ -f "$STORE/$MODEL.mar" ]; then
            echo "export: $STORE/$MODEL.mar exists; reusing it"
            exit 0
        fi
        [ -f "$RUN/checkpoints/best.pt" ] || { echo "error: no checkpoint at $RUN/checkpoints/best.pt (run the trainer first)" >&2; exit 2; }
        if [ ! -f "$ARTIFACT/model_card.json" ]; then
            case "$EXPORT_FORMAT" in
                onnx) python export/to_onnx.py "$RUN/checkpoints/best.pt" --output-dir "$ARTIFACT" ;;
                torchscript) python export/to_torchscript.py "$RUN/checkpoints/best.pt" --output-dir "$ARTIFACT" ;;
                *) echo "error: CONVSERVE_EXPORT_FORMAT must be onnx or torchscript, not '$EXPORT_FORMAT'" >&2; exit 2 ;;
            esac
        fi
        mkdir -p "$STORE"
        python serving/archive.py "$ARTIFACT" --model-name "$MODEL" --export-path "$STORE"
        echo "export: $STORE/$MODEL.mar"
        ;;
    serve)
        # A run folder left by an earlier container (a persistent volume) holds a stale server.json.
        rm -f "$SERVE_DIR/server.json"
        case "${CONVSERVE_SERVER:-torchserve}" in
            torchserve)
                exec python serving/serve.py --model-store "$STORE" --models "$MODEL=$MODEL.mar" \
                    --host "${CONVSERVE_SERVE_HOST:-0.0.0.0}" --port "${CONVSERVE_SERVE_PORT:-8080}" \
                    --run-dir "$SERVE_DIR" --foreground "$@"
                ;;
            kserve)
                [ -f "$ARTIFACT/model_card.json" ] || { echo "error: no artifact at $ARTIFACT (run the export step first)" >&2; exit 2; }
                exec python serving/serve_v2.py "$ARTIFACT" --model-name "$MODEL" \
                    --host "${CONVSERVE_SERVE_HOST:-0.0.0.0}" --port "${CONVSERVE_SERVE_PORT:-8080}" \
                    --grpc-port "${CONVSERVE_GRPC_PORT:-8081}" --run-dir "$SERVE_DIR" --foreground "$@"
                ;;
            *)
                echo "error: CONVSERVE_SERVER must be torchserve or kserve, not '$CONVSERVE_SERVER'" >&2
                exit 2
                ;;
        esac
        ;;
    loadtest)
        images=/tmp/loadtest-images
        mkdir -p "$images"
        python - "$images" <<'PY'
import sys
from pathlib import Path

from PIL import Image
from sklearn.datasets import load_digits

digits = load_digits()
for i in range(10):  # one real 8x8 digit per class, scaled 0..16 -> 0..255 as the trainer does
    pixels = (digits.images[i] * 255 / 16).round().astype("uint8")
    Image.fromarray(pixels).save(Path(sys.argv[1]) / f"digit-{digits.target[i]}.png")
PY
        if [ -z "${CONVSERVE_TOKEN:-}" ] && [ -f "${CONVSERVE_KEY_FILE:-}" ]; then
            CONVSERVE_TOKEN=$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["inference"]["key"])' "$CONVSERVE_KEY_FILE")
            export CONVSERVE_TOKEN
        fi
        exec python loadtest/loadtest.py --images "$images"/*.png "$@"
        ;;
    *)
        echo "usage: pipeline.sh train|export|serve|loadtest [FLAGS...]" >&2
        exit 2
        ;;
esac
