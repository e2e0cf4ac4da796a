#!/usr/bin/env bash
# Run pytest as an AVX2-only AMD EPYC would (no AVX-512, AMD's cache geometry), under QEMU's
# user-mode emulation of that CPU model. XLA:CPU's float sums come out in another order there:
# this is how a test that compares two differently-ordered float paths bit for bit is caught
# on this (AVX-512) machine. Emulation is slow (one GPTQ harness test: about 4 minutes), so
# name the tests, e.g.
#   bash .ci/on_avx2_cpu.sh tests/test_quantize_model.py -k sequential_calibration
# One process (-n 0): xdist's workers would start outside the emulator.
# Needs qemu-user (`apt-get install qemu-user`) and the README's test venv in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v qemu-x86_64 >/dev/null || { echo "needs qemu-user: apt-get install qemu-user" >&2; exit 2; }
python=$(readlink -f .venv/bin/python)
site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
PYTHONPATH=$site:$PWD Q4LAB_NATIVE_ISA=1 exec qemu-x86_64 -cpu EPYC-Rome "$python" -m pytest \
  -p no:cacheprovider -n 0 "$@"
