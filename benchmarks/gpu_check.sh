#!/usr/bin/env bash
# The prepared GPU check for issue 7: one device call (about 6 minutes on an H100/H200).
#   every q4lab matmul path against the full-precision reference at the benchmark shapes (--check
#   exits non-zero on a disagreement), the speed table, then the kernel tilings at the M that
#   matter. Files land in $OUT (the device tool) or the current directory.
set -euo pipefail
out=${OUT:-.}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python -c "import jax; print(jax.__version__, jax.devices())" | tee -a "$out/gpu.txt"
python benchmarks/bench_ops.py --check --out "$out/bench_ops.md" 2>&1 | tee "$out/bench_ops.log"
python benchmarks/bench_ops.py --tune --shapes 8192x28672 --m 1 16 4096 --seconds 0.3 \
  --out "$out/tune.md" 2>&1 | tee "$out/tune.log"
