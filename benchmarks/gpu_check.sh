#!/usr/bin/env bash
# The prepared GPU check (issue 14): one device call of about 5 minutes on an H100/H200 (the step
# limits sum to 300 s; the GPU query, jax import and file hash before them take seconds).
#   bash benchmarks/gpu_check.sh              # smoke, tests, mosaic, check, w4a4, in this order
#   bash benchmarks/gpu_check.sh check probe  # only the steps named
# Steps (pytest runs one process: the pyproject's -n 2 would put two on the GPU):
#   smoke    the harness: the quickstart's W4A16 and W4A4 points of seed 0 by min-max and GPTQ
#            (every layer shape and kernel path of the sweep, and GPTQ's calibration) on the GPU,
#            compile and run time per point
#   tests    pytest tests/ops on the GPU but the Mosaic kernels' and the autotuner's (references at
#            HIGHEST precision)
#   mosaic   the Mosaic GPU kernels' tests on the GPU, the bytes XLA gives an int4 array, then
#            the W4A16 Mosaic tilings beside auto and bf16 at 8192x28672, M in {1, 16}
#   check    bench_ops --check --tune (less the Mosaic W4A16 tilings): every path and kernel
#            tiling of the --tune grids against the full-precision reference, bf16 x, W4 g128,
#            8192x8192 and 8192x28672, M in {1, 16, 4096} (what GPU_CHOICES comes from)
#   w4a4     per-channel W4A4 at M=4096: auto and the W4A4 tilings (the int8 GEMM; the Mosaic
#            kernel, Triton N- and K-major kernels)
#   dispatch (not in the default run; 120 s) the autotuner's tests on the GPU, then
#            dispatch_check.py: every path that can run each call (what Q4LAB_AUTOTUNE=1 would
#            time) timed side by side at 8192x8192 and 8192x28672, M in {1, 16, 4096}, beside
#            what GPU_CHOICES picks
#   probe    layout_probe.py: load rates of bytes / tiles / words, the Pallas int8 GEMM ceiling
#   compile  the W4A16 kernel's compile time on a harness-sized float32 layer
# A step that fails or reaches its limit keeps its per-cell lines in its log, and the script goes
# on. Logs land in $OUT (the device tool) or ./gpu_check. Missing pure-Python wheels can be
# carried in .whl/.
set -uo pipefail
out=${OUT:-gpu_check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} JAX_PLATFORMS=cuda
unset Q4LAB_AUTOTUNE # auto by the rules (GPU_CHOICES): what the steps check
export WANDB_MODE=disabled Q4LAB_CACHE=${Q4LAB_CACHE:-/tmp/q4lab-cache}
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
    export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
py=python3
bench="$py benchmarks/bench_ops.py"
pytest="$py -m pytest -o addopts= -q -p no:cacheprovider"
int4_bytes='import jax, jax.numpy as jnp
f = jax.jit(lambda b: jax.lax.bitcast_convert_type(b, jnp.int4))
m = f.lower(jax.ShapeDtypeStruct((8192, 4096), jnp.uint8)).compile().memory_analysis()
print("int4 [8192, 4096, 2] from 33554432 bytes: output", m.output_size_in_bytes, "bytes")'
step() { # name, limit, command...
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.log" | grep -v '^\s*$' | tail -n 80
  echo "=== $name: exit ${PIPESTATUS[0]}, $((SECONDS - t0)) s"
}
smoke() {
  step smoke 50 $py benchmarks/harness_smoke.py experiments/quickstart.py \
    --where seed=0 bits=4 quantizer=minmax quantizer=gptq act_bits=16 act_bits=4
}
tests() { step tests 65 $pytest tests/ops -k "not mosaic and not autotune"; }
mosaic() {
  step mosaic-tests 35 $pytest tests/ops/test_mosaic_gpu.py
  # does XLA hold int4 two to a byte here? (the kernels bit-cast K-major bytes to int4)
  step int4-bytes 10 $py -c "$int4_bytes"
  step mosaic 40 $bench --tune --check --shapes 8192x28672 --m 1 16 --seconds 0.1 \
    --only "W4A16 mosaic" "W4A16 auto" dense --out "$out/mosaic.md"
}
check() {
  step check 70 $bench --check --tune --shapes 8192x8192 8192x28672 --m 1 16 4096 \
    --seconds 0.1 --skip "W4A16 mosaic" --out "$out/check.md"
}
w4a4() {
  step w4a4 30 $bench --tune --check --group 0 --shapes 8192x8192 --m 4096 --seconds 0.1 \
    --only "W4A4" dense --out "$out/w4a4.md"
}
dispatch() {
  step autotune-tests 30 $pytest tests/ops/test_autotune.py
  step dispatch 90 $py benchmarks/dispatch_check.py --shapes 8192x8192 8192x28672 --m 1 16 4096 \
    --seconds 0.1 --out "$out/dispatch.md"
}
probe() { step probe 75 $py benchmarks/layout_probe.py; }
compile() {
  step compile 60 $py benchmarks/kernel_compile.py --rows 360 --k 64 --n 256 --group 32 --limit 30
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
$py -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" |
  tee -a "$out/gpu.txt"
# what ran: the device's checkout may carry a stale .git, so hash the files themselves; here,
# the same line on a clean checkout of a commit says whether that commit is what ran
files=$(find q4lab benchmarks tests -type f \( -name '*.py' -o -name '*.sh' \) | LC_ALL=C sort)
echo "tree $(cat $files | sha1sum | cut -c1-12)" | tee -a "$out/gpu.txt"
steps="smoke tests mosaic check w4a4 dispatch probe compile"
for name in ${@:-smoke tests mosaic check w4a4}; do
  case " $steps " in
  *" $name "*) $name ;;
  *) echo "unknown step '$name'; allowed: $steps" ;;
  esac
done
