#!/usr/bin/env bash
# The prepared GPU check (issue 14): one device call of about 5 minutes on an H100/H200 (the step
# limits sum to 280 s; the GPU query, jax import and file hash before them take seconds).
#   bash benchmarks/gpu_check.sh              # preflight mosaic w4a4 tiling smoke check
#   bash benchmarks/gpu_check.sh tests dispatch   # a second call: the rest of the checks
#   bash benchmarks/gpu_check.sh check probe  # only the steps named
# The device image lacks mnist1d (the quickstart's data): its wheel waits in the ignored .whl/
# (`pip download --no-deps mnist1d==0.0.2.post1 -d .whl`); pass carry: [".whl"] to the device
# call, and the script installs it. Steps, the targets first (pytest runs one process:
# the pyproject's -n 2 would put two on the GPU):
#   preflight  what q4lab, the quickstart and the tests import: names any package missing
#   mosaic   the Mosaic GPU kernels' tests on the GPU, the bytes XLA gives an int4 array, then
#            the W4A16 Mosaic tilings beside auto and bf16 at 8192x28672, M in {1, 16}
#   w4a4     per-channel W4A4 at M=4096: auto and the W4A4 tilings (the int8 GEMM; the Mosaic
#            kernel, Triton N- and K-major kernels)
#   tiling   the W4A16 Triton tilings beside auto and bf16 at 8192x28672, M in {1, 16}
#   smoke    the harness: the quickstart's W4A16 and W4A4 points of seed 0 by min-max and GPTQ
#            (every layer shape and kernel path of the sweep, and GPTQ's calibration) on the GPU,
#            compile and run time per point (the digits experiment's if mnist1d is missing)
#   check    bench_ops --check: every path's default against the full-precision reference, bf16
#            x, W4 g128, 8192x8192 and 8192x28672, M in {1, 16, 4096}, and what auto ran
#   tests    (second call; 150 s) pytest tests/ops on the GPU but the Mosaic kernels' and the
#            autotuner's (references at HIGHEST precision), test names as they pass
#   dispatch (second call; 120 s) the autotuner's tests on the GPU, then dispatch_check.py:
#            every path that can run each call (what Q4LAB_AUTOTUNE=1 would time) timed side by
#            side at 8192x8192 and 8192x28672, M in {1, 16, 4096}, beside what GPU_CHOICES picks
#   probe    layout_probe.py: load rates of bytes / tiles / words, the Pallas int8 GEMM ceiling
#   compile  the W4A16 kernel's compile time on a harness-sized float32 layer
# A step that fails or reaches its limit keeps its per-cell lines in its log, and the script goes
# on. Logs land in ./gpu_check; under the device tool, which returns at most 8 files from $OUT,
# in one archive, $OUT/gpu_check.tar.gz, of this call's logs only, rewritten after each step
# and every 10 s (a call cut short keeps the steps before and the running step's lines).
set -uo pipefail
out=${OUT:-gpu_check}
logs=$out
mkdir -p "$out"
if [ -n "${OUT:-}" ]; then
  logs=$(mktemp -d)
  bundle() { # whole or not at all: a kill mid-write leaves the archive before
    local part
    part=$(mktemp "$out/.gpu_check.XXXXXX") &&
      tar -czf "$part" -C "$logs" . && chmod 644 "$part" && mv -f "$part" "$out/gpu_check.tar.gz"
  }
  (while sleep 10 && kill -0 $$ 2>/dev/null; do bundle; done) </dev/null >/dev/null 2>&1 &
  bundler=$!
  trap 'kill $bundler 2>/dev/null; bundle' EXIT
else
  bundle() { :; }
fi
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
imports='import importlib.util as u
need = ["q4lab", "jax", "flax", "optax", "pandas", "matplotlib", "safetensors", "tabulate",
        "sklearn", "mnist1d", "hypothesis", "pytest", "tqdm"]
missing = [n for n in need if u.find_spec(n) is None]
print("missing:", ", ".join(missing) if missing else "none")'
int4_bytes='import jax, jax.numpy as jnp
f = jax.jit(lambda b: jax.lax.bitcast_convert_type(b, jnp.int4))
m = f.lower(jax.ShapeDtypeStruct((8192, 4096), jnp.uint8)).compile().memory_analysis()
print("int4 [8192, 4096, 2] from 33554432 bytes: output", m.output_size_in_bytes, "bytes")'
step() { # name, limit, command...
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$logs/$name.log" | grep -v '^\s*$' | tail -n 80
  echo "=== $name: exit ${PIPESTATUS[0]}, $((SECONDS - t0)) s"
  bundle
}
preflight() {
  step preflight 5 $py -c "$imports"
}
smoke() {
  local experiment=experiments/quickstart.py
  if ! $py -c "import mnist1d.data" 2>/dev/null; then
    echo "mnist1d cannot be imported (carry .whl): the digits experiment instead"
    experiment=experiments/digits.py
  fi
  step smoke 50 $py benchmarks/harness_smoke.py $experiment \
    --where seed=0 bits=4 quantizer=minmax quantizer=gptq act_bits=16 act_bits=4
}
tests() { # the Triton kernels' tests first: a step cut short at its limit loses the last ones
  step tests 150 $pytest -v tests/ops/test_pallas_gpu.py \
    $(ls tests/ops/test_*.py | grep -v test_pallas_gpu) -k "not mosaic and not autotune"
}
mosaic() {
  step mosaic-tests 30 $pytest -v tests/ops/test_mosaic_gpu.py
  # does XLA hold int4 two to a byte here? (the kernels bit-cast K-major bytes to int4)
  step int4-bytes 10 $py -c "$int4_bytes"
  step mosaic 40 $bench --tune --check --shapes 8192x28672 --m 1 16 --seconds 0.1 \
    --only "W4A16 mosaic" "W4A16 auto" dense --out "$logs/mosaic.md"
}
tiling() {
  step tiling 40 $bench --tune --check --shapes 8192x28672 --m 1 16 --seconds 0.1 \
    --only "W4A16 pallas" "W4A16 auto" dense --out "$logs/tiling.md"
}
check() {
  step check 75 $bench --check --shapes 8192x28672 8192x8192 --m 1 16 4096 \
    --seconds 0.1 --skip "W4A16 mosaic" --out "$logs/check.md"
}
w4a4() {
  step w4a4 30 $bench --tune --check --group 0 --shapes 8192x8192 --m 4096 --seconds 0.1 \
    --only "W4A4" dense --out "$logs/w4a4.md"
}
dispatch() {
  step autotune-tests 30 $pytest tests/ops/test_autotune.py
  step dispatch 90 $py benchmarks/dispatch_check.py --shapes 8192x8192 8192x28672 --m 1 16 4096 \
    --seconds 0.1 --out "$logs/dispatch.md"
}
probe() { step probe 75 $py benchmarks/layout_probe.py; }
compile() {
  step compile 60 $py benchmarks/kernel_compile.py --rows 360 --k 64 --n 256 --group 32 --limit 30
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$logs/gpu.txt"
$py -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" |
  tee -a "$logs/gpu.txt"
# what ran: the device's checkout may carry a stale .git, so hash the files themselves; here,
# the same line on a clean checkout of a commit says whether that commit is what ran
files=$(find q4lab benchmarks tests -type f \( -name '*.py' -o -name '*.sh' \) | LC_ALL=C sort)
echo "tree $(cat $files | sha1sum | cut -c1-12)" | tee -a "$logs/gpu.txt"
bundle
steps="preflight mosaic w4a4 tiling smoke check tests dispatch probe compile"
for name in ${@:-preflight mosaic w4a4 tiling smoke check}; do
  case " $steps " in
  *" $name "*) $name ;;
  *) echo "unknown step '$name'; allowed: $steps" ;;
  esac
done
