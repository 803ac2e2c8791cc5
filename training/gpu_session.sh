#!/usr/bin/env bash
# One call on a lent CUDA machine (the device tool gives ~10 minutes a call): the GPU checks in the order the
# GPU issue asks, each under its own time limit, so that a slow step costs only itself. Back under $OUT
# (at most 8 files come back): session.log (everything printed: the machine, `pytest -m gpu`, the serving bench's
# JSON line, the training's images/s and its bench) and training/gpu_stylegan.sh's 7 files (G/, pack/, log.jsonl).
#   1. the machine: GPU, driver, torch, ONNX Runtime's providers, whether `import tensorrt` works
#   2. pytest -m gpu
#   3. semgen bench serve on the GPU: eager CUDA in process and served by the embedded engine; ONNX Runtime
#      (whatever provider it has there) against eager CUDA by batch size
#   4. training/gpu_stylegan.sh for what is left of $SECONDS_TOTAL
# Carry .whl (grpcio, its health/reflection add-ons, protobuf: the versions pyproject.toml pins), serving/_generated
# (the stubs; grpc_tools is not there) and var/onnx (the bundle's export, so the bench does not export it again).
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder that comes back}"
export DEVICE=${DEVICE:-cuda}      # DEVICE=cpu (and gpu_stylegan.sh's settings for a tiny network): the dry run
SECONDS_TOTAL=${SECONDS_TOTAL:-540}  # stay inside the call's limit; the training gets what the steps before leave
started=$(date +%s)
log=$OUT/session.log
exec > >(tee -a "$log") 2>&1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD:$PWD/tests${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
step() { echo; echo "=== $1 ($(($(date +%s) - started)) s)"; }

step "1. the machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "no nvidia-smi"
python3 - <<'EOF'
import importlib.util, onnxruntime, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0),
      "tf32 conv", torch.backends.cudnn.allow_tf32, "tf32 matmul", torch.backends.cuda.matmul.allow_tf32)
print("onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers())
print("tensorrt importable:", importlib.util.find_spec("tensorrt") is not None)
EOF
nproc

step "2. pytest -m gpu"
timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider -rA tests/semgen/test_pipelines_on_cuda.py \
    tests/training/test_semantics_training.py tests/export/test_tensorrt.py 2>&1 | tail -25

step "3. semgen bench serve --device $DEVICE --runtime torch"
timeout 170 python3 semgen_cli.py bench serve --device "$DEVICE" --runtime torch --engines embedded --concurrency 1,16 \
    --requests 128 --seconds 8 --eager-batches 1,8,32 --out /tmp/bench_cuda --json 2>&1 | grep -v "^\s*$" | tail -20

left=$((SECONDS_TOTAL - ($(date +%s) - started) - 90))  # start-up, writing and the training bench after the steps
step "4. training/gpu_stylegan.sh, ${left} s of steps"
if [ "$left" -gt 30 ]; then
    MINUTES=$(python3 -c "print(min($left / 60, 4))") BENCH_STEPS=${BENCH_STEPS:-5} BENCH_BATCHES=${BENCH_BATCHES:-64} \
        timeout $((left + 120)) bash training/gpu_stylegan.sh 2>&1 | grep -v "it/s]$" | tail -15
fi
step "done"
