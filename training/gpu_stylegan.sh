#!/usr/bin/env bash
# One call on a CUDA machine: train the layer-wise generator for at most $MINUTES minutes and leave
# what comes back under $OUT (7 files, each under 16 MiB):
#   $OUT/G/      the EMA generator checkpoint (fp32; what serving and `semgen eval stylegan` load)
#   $OUT/pack/   G, its EMA and D in bf16 + the step: carried into the next call, the run goes on
#   $OUT/log.jsonl
# and prints the step's images/s, then (BENCH_STEPS > 0) `semgen bench stylegan` on this device as JSON.
# Needs only torch, numpy, safetensors, pillow and tqdm (no virtual environment), so it runs on a bare
# GPU image. The next call resumes when $RUN/pack (the last call's $OUT/pack) is in the working tree.
# The settings can be overridden from the environment; DEVICE=cpu with a tiny network is the dry run
# the tests make (tests/training/test_gpu_script.py).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder that comes back}"
DEVICE=${DEVICE:-cuda}
MINUTES=${MINUTES:-7}             # the device tool allows 10 min a call: 7 of steps, the rest start-up, writing, bench
RUN=${RUN:-runs/stylegan-gpu}
STEPS=${STEPS:-200000}            # where the run ends; each call goes on from the last one's step
G_CHANNELS=${G_CHANNELS:-256,256,256,128,64}   # 3.9 M parameters: the fp32 checkpoint stays under 16 MiB
D_CHANNELS=${D_CHANNELS:-64,128,256,256,256}
BATCH=${BATCH:-64}
WORKERS=${WORKERS:-12}            # scene-rendering processes (the GPU machine has 16 cores)
IMAGE_SIZE=${IMAGE_SIZE:-64}
Z_DIM=${Z_DIM:-128}
BENCH_STEPS=${BENCH_STEPS:-10}    # timed steps per setting of the bench afterwards (0: no bench)
BENCH_BATCHES=${BENCH_BATCHES:-32 64}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

warm=()
if [ -f "$RUN/pack/warm.json" ]; then
    warm=(--warm-start "$RUN/pack")
    echo "going on from $RUN/pack: $(cat "$RUN/pack/warm.json")"
fi
work=$(mktemp -d)  # this call's run state (optimisers included) stays on the machine
python3 semgen_cli.py train stylegan --device "$DEVICE" --bf16 --channels-last --data-workers "$WORKERS" \
    --g-channels "$G_CHANNELS" --d-channels "$D_CHANNELS" --batch-size "$BATCH" --image-size "$IMAGE_SIZE" \
    --z-dim "$Z_DIM" --w-dim "$Z_DIM" --steps "$STEPS" --max-minutes "$MINUTES" --save-every 1000 \
    --sample-every 1000000000 --threads 2 --run-dir "$work" --out "$OUT/G" --pack-to "$OUT/pack" "${warm[@]}"
cp "$work/log.jsonl" "$OUT/log.jsonl"
python3 - "$OUT/log.jsonl" "$BATCH" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
if len(rows) >= 2:
    (a, b), batch = (rows[0], rows[-1]), int(sys.argv[2])
    rate = (b["step"] - a["step"]) * batch / max(b["elapsed_s"] - a["elapsed_s"], 1e-9)
    print(json.dumps({"last_step": b["step"], "images_per_s": round(rate, 1), "g": b["g"], "d": b["d"]}))
EOF
if [ "$BENCH_STEPS" -gt 0 ]; then
    # shellcheck disable=SC2086  # BENCH_BATCHES is a list of sizes
    python3 semgen_cli.py bench stylegan --device "$DEVICE" --configs "$G_CHANNELS/$D_CHANNELS" \
        --batch-sizes $BENCH_BATCHES --steps "$BENCH_STEPS" --report-dir "$work/bench" --json
fi
