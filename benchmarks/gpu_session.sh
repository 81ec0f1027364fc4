#!/usr/bin/env bash
# Everything a session with a lent GPU has to measure, in ONE call of the device tool: a session gets about 15
# minutes of device time in all, the machine's start included, and at most 10 minutes a call. From the repository
# root on the GPU machine:
#
#   bash benchmarks/gpu_session.sh            # all of it, most needed first (9 min 15 s at the very most)
#   bash benchmarks/gpu_session.sh tests      # only the first four steps: pytest -m gpu, both training runs, gradcheck
#   bash benchmarks/gpu_session.sh bench      # only model_speed.py and ops.py against PyTorch
#
# Steps, in order, each with its own time limit: pytest -m gpu (180 s); python -m minifcn.train --device gpu on
# the full VGG16 for 100 iterations, for its iterations per second (90 s); the bare command's tiny net for 500
# iterations (45 s); python -m minifcn.gradcheck --device gpu (30 s); model_speed.py --device gpu (150 s); ops.py --device gpu
# (60 s): 9 min 15 s at the very most, under the device tool's 10 minutes for one call. A step that fails or times
# out is logged and the next one still runs.
#
# It prints each step's command, the last 15 lines of its log and its exit status (124: it ran out of time).
# Every log lands in $OUT (the device tool's folder that comes back; /tmp/gpu-session elsewhere). The benchmarks'
# --append edits the device's copy of benchmarks/RESULTS.md, which does not come back by itself: the script
# copies it to $OUT, so that the new tables can be carried over by hand.
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

case "${1:-all}" in
  all|tests|bench) ;;
  *) echo "usage: bash benchmarks/gpu_session.sh [all|tests|bench]" >&2; exit 2 ;;
esac

# a machine without PyTorch still runs everything; the benchmarks' PyTorch columns are then nan
{ nvidia-smi -L; python3 -c "import cupy, numpy, pytest, hypothesis
try:
    import torch; t = torch.__version__
except ImportError:
    t = 'not installed: the PyTorch columns will be nan'
print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'torch', t)"
  echo "CUPY_TF32=${CUPY_TF32:-unset (off)}"; } >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

tests() {
    step pytest_gpu 180 python3 -m pytest -m gpu -q -x -p no:cacheprovider
    # FCN-8s on the full VGG16 body on the GPU: iterations per second (log.jsonl has pixels_per_s; batch 2, 160x160)
    step train_gpu 90 python3 -m minifcn.train --device gpu --backbone vgg16 --iters 100 --val-every 100 \
        --val-images 10 --log-every 10 --checkpoint-every 100 --out /tmp/train_gpu --overwrite
    cp /tmp/train_gpu/log.jsonl "$OUT/train_gpu_log.jsonl" 2>/dev/null
    # the bare command's net (FCN-8s, vgg16-tiny, 160x160, batch 2) on the GPU: its iterations per second beside the
    # CPU's (about 6.5 a second on 2 Xeon cores), and every op's backward checked on CuPy
    step train_gpu_tiny 45 python3 -m minifcn.train --device gpu --iters 500 --val-every 500 --val-images 20 \
        --log-every 50 --checkpoint-every 500 --out /tmp/train_gpu_tiny --overwrite
    cp /tmp/train_gpu_tiny/log.jsonl "$OUT/train_gpu_tiny_log.jsonl" 2>/dev/null
    step gradcheck_gpu 30 python3 -m minifcn.gradcheck --device gpu
}

bench() {
    step model_speed_gpu 150 python3 benchmarks/model_speed.py --device gpu --repeat 3 --append
    step ops_gpu 60 python3 benchmarks/ops.py --device gpu --repeat 3 --append
    cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
}

case "${1:-all}" in
  all) tests; bench ;;
  tests) tests ;;
  bench) bench ;;
esac
