"""Compile time of the W4A16 Pallas kernel on one float32 layer, by rows per tile.

    python benchmarks/kernel_compile.py --rows 360 --k 64 --n 256 --group 32 --limit 30

The harness' evaluation batches are hundreds of float32 rows. Before the kernel tiled rows, all
of them were one tile (512 rows padded): its ``2 * 512 * block_n`` float32 accumulators cannot
live in registers, and one such 64x256 layer compiled for minutes on an H200. Each tiling
compiles in a subprocess under ``--limit`` seconds; "> limit" means it had not finished.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

from q4lab.core import QuantSpec
from q4lab.ops import pallas_gpu
from q4lab.quantizers import get_quantizer


def compile_seconds(rows: int, k: int, n: int, group: int, block_m: int) -> float:
    qt = get_quantizer("minmax").quantize(
        jax.random.normal(jax.random.key(0), (k, n)), QuantSpec(group_size=group or None)
    )
    config = pallas_gpu.KernelConfig(block_m=block_m)
    fn = jax.jit(lambda x, q: pallas_gpu.w4a16_pallas(x, q, config=config))
    start = time.perf_counter()
    fn.lower(jnp.ones((rows, k)), qt).compile()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=360)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--group", type=int, default=32)
    parser.add_argument("--limit", type=float, default=30.0)
    parser.add_argument("--block-m", type=int, help="(internal) compile this tiling and print")
    args = parser.parse_args()
    if args.block_m:
        print(compile_seconds(args.rows, args.k, args.n, args.group, args.block_m))
        return
    print(f"{jax.devices()[0].device_kind}: x float32 [{args.rows}, {args.k}], W4 g{args.group} "
          f"[{args.k}, {args.n}]")  # fmt: skip
    for block_m in (pallas_gpu.W4A16_DEFAULT.block_m, 512):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--block-m", str(block_m)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.limit)
            seconds = done.stdout.strip().splitlines()[-1] if done.returncode == 0 else "error"
            if done.returncode:
                print(done.stderr[-800:])
        except subprocess.TimeoutExpired:
            seconds = f"> {args.limit:g}"
        print(f"block_m {block_m:4d}: compile {seconds} s", flush=True)


if __name__ == "__main__":
    main()
