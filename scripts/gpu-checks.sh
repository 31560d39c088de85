#!/usr/bin/env bash
# The GPU checks of issues 8 and 10, for a session that is lent a GPU machine (15 minutes of device time in
# all, at most 10 a call). Two parts, each one `run` call, then hand the machine back:
#   bash scripts/gpu-checks.sh bench           issue 10: step and round ratios, fp32 and bf16 (about 5 minutes)
#   bash scripts/gpu-checks.sh family 0 [1 2]  issue 8: ResNet-18 over the family at 112 px, these seeds (11 arms
#                                              a seed: the clean arm is shared; budget about 8 minutes a seed)
# Each check's output lands under $OUT (or ./gpu-out), one file per check (JSON from the benchmarks, the per-arm
# lines from the experiment), the card in card.txt; a check that fails or runs out of time leaves the others.
# Not yet run on a GPU: no session with this script has been lent one.
set -u
# shellcheck disable=SC2086  # $HITL may be "python3 -m trainer.app.cli"
PART="${1:-bench}"
shift || true
SEEDS="${*:-0}"
case "$PART" in bench | family) ;; *) echo "gpu-checks.sh: unknown part '$PART' (bench, or family SEEDS...)" >&2; exit 2 ;; esac
OUT="${OUT:-gpu-out}"
mkdir -p "$OUT"
# The device machine has its own Python with torch (no .venv there); missing packages (captum, ...) travel as
# wheels, see .library/device/README.md. HITL names the command: by default the repository on that Python.
if [ -z "${HITL:-}" ]; then
    if [ -x .venv/bin/hitl ]; then HITL=.venv/bin/hitl; else HITL="python3 -m trainer.app.cli"; export PYTHONPATH=.; fi
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/card.txt" 2>&1
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" >> "$OUT/card.txt" 2>&1

check() {  # check NAME SECONDS COMMAND...: run one check under a time limit, its output to $OUT/NAME.out
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*" | tee -a "$OUT/log.txt"
    local started=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.out" 2>> "$OUT/log.txt"
    echo "   exit $? after $((SECONDS - started)) s" | tee -a "$OUT/log.txt"
}

if [ "$PART" = bench ]; then
# Issue 10: a training step at the training default (batch 64 + 16 replayed rows), and a round against a plain one.
for model in resnet18 resnet50; do
    for precision in fp32 bf16; do
        check "step-$model-224-$precision" 45 $HITL bench step --model "$model" --size 224 --steps 20 \
            --precision "$precision" --device cuda --json
    done
done
for precision in fp32 bf16; do
    check "round-resnet18-224-$precision" 90 $HITL bench round --model resnet18 --size 224 --seeds 0 \
        --precision "$precision" --device cuda --compare replay=4 --json
done
check "round-small-cnn" 60 $HITL bench round --model small-cnn --seeds 0 1 2 --device cuda --json
fi

if [ "$PART" = family ]; then  # issue 8; results.json is written when every arm has finished
check "family-resnet18-112-seeds-${SEEDS// /-}" 560 $HITL experiment \
    --dataset decoy-mnist-rgb frame-mnist-rgb texture-mnist-rgb watermark-mnist-rgb ruler-mnist-rgb \
    --model resnet18 --image-size 112 --device cuda --seeds $SEEDS --budget 0.01 --rounds 5 \
    --arms baseline clean hitl --workers 1 --out "$OUT/family-resnet18-112"
fi
echo "done: $(ls "$OUT")" | tee -a "$OUT/log.txt"
