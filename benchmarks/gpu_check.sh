#!/usr/bin/env bash
# The prepared GPU check (issue 14): one device call of about 6 minutes on an H100/H200.
#   1. the harness smoke: the quickstart's points on the GPU, compile and run time per point
#   2. the W4A16 kernel's compile time on a harness-sized float32 layer, row-tiled (today) and as
#      one 512-row tile (before the fix), each under a time limit
#   3. bench_ops --check: every path against the full-precision reference, bf16, W4 g128
#   4. per-channel W4A4 at M=4096 with the W4A4 tilings; float32 inputs at harness shapes
#   5. the W4A16 tiling sweep at 8192x28672
#   6. pytest tests/ops on the GPU (references at precision=HIGHEST)
# Each step has its own time limit and the script goes on after a failure; files land in $OUT
# (the device tool) or ./gpu_check. Missing pure-Python wheels can be carried in .whl/.
set -uo pipefail
out=${OUT:-gpu_check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} JAX_PLATFORMS=cuda
export WANDB_MODE=disabled Q4LAB_CACHE=${Q4LAB_CACHE:-/tmp/q4lab-cache}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
    export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
py=python3
step() { # name, limit, command...
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.log" | grep -v '^\s*$' | tail -n 60
  echo "=== $name: exit ${PIPESTATUS[0]}, $((SECONDS - t0)) s"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
$py -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" |
  tee -a "$out/gpu.txt"

step smoke 90 $py benchmarks/harness_smoke.py experiments/quickstart.py --limit 16
step compile 75 $py benchmarks/kernel_compile.py --rows 360 --k 64 --n 256 --group 32 --limit 30
step bench 150 $py benchmarks/bench_ops.py --check --shapes 8192x8192 8192x28672 --m 1 16 4096 \
  --seconds 0.2
step w4a4_pc 60 $py benchmarks/bench_ops.py --tune --group 0 --shapes 8192x8192 --m 4096 \
  --seconds 0.2 --only W4A4 dense
step float32 45 $py benchmarks/bench_ops.py --dtype float32 --shapes 384x1536 1536x384 \
  --m 1 16 360 4096 --seconds 0.1
step tune 150 $py benchmarks/bench_ops.py --tune --shapes 8192x28672 --m 1 16 --seconds 0.1 \
  --only "W4A16" dense
step tests 100 $py -m pytest -q -x -p no:cacheprovider tests/ops
