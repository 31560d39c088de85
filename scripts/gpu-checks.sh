#!/usr/bin/env bash
# The GPU checks of issues 8 and 10, for a session that is lent a GPU machine (15 minutes of device time in
# all, at most 10 a call). One `run` call, then hand the machine back:
#   bash scripts/gpu-checks.sh all 0 1 2        everything below inside DEADLINE seconds (default 540)
#   bash scripts/gpu-checks.sh bench            issue 10: step and round ratios at 224 px, fp32 and bf16
#   bash scripts/gpu-checks.sh family 0 [1 2]   issue 8: ResNet-18 over the family at 112 px, these seeds (11 arms
#                                               a seed: the clean arm is shared), WORKERS processes on the GPU;
#                                               FAMILY_ARGS adds experiment flags (e.g. "--lam 10"),
#                                               ARMS picks the arms (default "baseline clean hitl")
# "all" runs the step benchmarks, then the family (whatever time the round benchmarks do not need), then the
# rounds. Each check's output lands under $OUT (or ./gpu-out), one file per check (JSON from the benchmarks,
# the per-arm lines from the experiment), the card in card.txt; a check that fails or runs out of time leaves
# the others, and the family's results.json holds every arm that finished.
set -u
PART="${1:-bench}"
shift || true
SEEDS="${*:-0}"
case "$PART" in bench | family | all) ;; *) echo "gpu-checks.sh: unknown part '$PART' (all, bench, or family SEEDS...)" >&2; exit 2 ;; esac
OUT="${OUT:-gpu-out}"
DEADLINE="${DEADLINE:-540}"  # seconds for the whole script ("all")
WORKERS="${WORKERS:-14}"  # arms at a time on the one GPU: each is bound by its own CPU thread, not the GPU
ARMS="${ARMS:-baseline clean hitl}"
ROUNDS_S=170  # what "all" keeps back for the round benchmarks after the family
mkdir -p "$OUT"
# The device machine has its own Python with torch but no Label Studio SDK (and no .venv): there the commands
# come from scripts/offline_cli.py; captum and mlxtend travel as wheels (see .library/device/README.md).
if [ -z "${HITL:-}" ]; then
    if [ -x .venv/bin/hitl ]; then HITL=.venv/bin/hitl; else HITL="python3 scripts/offline_cli.py"; fi
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/card.txt" 2>&1
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" >> "$OUT/card.txt" 2>&1

check() {  # check NAME SECONDS COMMAND...: run one check under a time limit (and the deadline), output to $OUT/NAME.out
    local name=$1 limit=$2
    shift 2
    local left=$((DEADLINE - SECONDS))
    [ "$PART" = all ] && [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -lt 5 ]; then echo "== $name: skipped, no time left" | tee -a "$OUT/log.txt"; return; fi
    echo "== $name (limit ${limit}s): $*" | tee -a "$OUT/log.txt"
    local started=$SECONDS
    # shellcheck disable=SC2086  # $HITL may be "python3 scripts/offline_cli.py"
    timeout "$limit" $HITL "$@" > "$OUT/$name.out" 2>> "$OUT/log.txt"
    echo "   exit $? after $((SECONDS - started)) s" | tee -a "$OUT/log.txt"
}

steps() {  # issue 10: a penalised step at the training default (batch 64 + the plan's rows; mean_ratio spreads it
    # over the plan's penalty_every steps) against a CE step
    for model in resnet18 resnet50; do
        for precision in fp32 bf16; do
            check "step-$model-224-$precision" 40 bench step --model "$model" --size 224 --steps 20 \
                --precision "$precision" --device cuda --json
        done
    done
}

rounds() {  # issue 10: a feedback round at the default (the model's replay plan) against a plain round, with the
    # exact schedule before the plans (16 rows on every step) beside it for the accuracy
    for precision in fp32 bf16; do
        check "round-resnet18-224-$precision" 75 bench round --model resnet18 --size 224 --seeds 0 \
            --train-fraction 0.5 --precision "$precision" --device cuda \
            --compare replay=16 penalty_every=1 replay_weight=1 --json
    done
    check "round-small-cnn" 45 bench round --model small-cnn --seeds 0 1 2 --device cuda --json
    for precision in fp32 bf16; do
        check "round-resnet50-224-$precision" 60 bench round --model resnet50 --size 224 --seeds 0 \
            --train-fraction 0.25 --precision "$precision" --device cuda --json
    done
}

family() {  # issue 8: FAMILY LIMIT; results.json is rewritten as each arm finishes
    # shellcheck disable=SC2086  # FAMILY_ARGS and ARMS hold several words
    check "family-resnet18-112-seeds-${SEEDS// /-}" "$1" experiment ${FAMILY_ARGS:-} \
        --dataset decoy-mnist-rgb frame-mnist-rgb texture-mnist-rgb watermark-mnist-rgb ruler-mnist-rgb \
        --model resnet18 --image-size 112 --device cuda --seeds $SEEDS --budget 0.01 --rounds 5 \
        --arms $ARMS --workers "$WORKERS" --out "$OUT/family-resnet18-112"
}

case "$PART" in
    bench) steps; rounds ;;
    family) family 560 ;;
    all) steps; family $((DEADLINE - SECONDS - ROUNDS_S)); rounds ;;
esac
echo "done after $SECONDS s: $(ls "$OUT")" | tee -a "$OUT/log.txt"
# At most 8 files come back from the device machine: every check's output travels in one archive, written
# beside $OUT first (tar fails on an archive that grows inside the folder it reads).
archive=$(mktemp --suffix .tar.gz)
tar czf "$archive" -C "$OUT" . && find "$OUT" -mindepth 1 -not -name log.txt -not -name card.txt -delete &&
    mv "$archive" "$OUT/checks.tar.gz"
