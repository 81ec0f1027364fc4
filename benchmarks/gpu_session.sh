#!/usr/bin/env bash
# Everything a session with a lent GPU has to measure, in two calls of the device tool (each under 10 minutes),
# run from the repository root on the GPU machine:
#
#   bash benchmarks/gpu_session.sh tests    # pytest -m gpu, then python -m minifcn.train --device gpu (vgg16)
#   bash benchmarks/gpu_session.sh bench    # model_speed.py and ops.py --device gpu --append, against PyTorch
#
# Every log lands in $OUT (the device tool's folder that comes back; /tmp/gpu-session elsewhere). The benchmarks'
# --append edits the device's copy of benchmarks/RESULTS.md, which does not come back by itself: the script
# copies it to $OUT, so that the new tables can be carried over by hand. A step that fails or times out is
# logged and the next one still runs.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-session}
mkdir -p "$OUT"
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}

step() {   # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.txt, print the tail
    local name=$1 limit=$2; shift 2
    echo "== $name: $*"
    timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
    local status=$?
    tail -n 15 "$OUT/$name.txt"
    echo "== $name: exit $status (124: timed out)" | tee -a "$OUT/$name.txt"
}

{ nvidia-smi -L; python3 -c "import cupy, numpy, pytest, hypothesis, torch
print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'torch', torch.__version__)"; } \
    >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

case "${1:-}" in
  tests)
    step pytest_gpu 300 python3 -m pytest -m gpu -q -p no:cacheprovider
    # FCN-8s on the full VGG16 body on the GPU: iterations per second (log.jsonl has pixels_per_s; batch 2, 160x160)
    step train_gpu 240 python3 -m minifcn.train --device gpu --backbone vgg16 --iters 200 --val-every 200 \
        --val-images 20 --log-every 20 --checkpoint-every 200 --out /tmp/train_gpu
    cp /tmp/train_gpu/log.jsonl "$OUT/train_gpu_log.jsonl" 2>/dev/null
    ;;
  bench)
    step model_speed_gpu 330 python3 benchmarks/model_speed.py --device gpu --append
    step ops_gpu 220 python3 benchmarks/ops.py --device gpu --append
    cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
    ;;
  *)
    echo "usage: bash benchmarks/gpu_session.sh tests|bench" >&2
    exit 2
    ;;
esac
