"""INT4 matmul speed against the dense float dot, side by side in one run.

    python benchmarks/bench_ops.py                       # every shape and M; a markdown table
    python benchmarks/bench_ops.py --check               # and each path's error vs the reference
    python benchmarks/bench_ops.py --shapes 4096x4096 --m 1 16 --out table.md

y = x[M, K] @ W[K, N] for (K, N) in {4096x4096, 8192x8192, 8192x28672} and M in {1, 16, 128, 4096}.
Dense is bfloat16 on GPU and float32 on CPU (what a model there runs; ``--dtype`` picks another);
the INT4 weights are symmetric 4-bit codes with group-128 float16 scales (4.125 bits per weight;
``--group 0``: per-channel). Every path of `q4lab.ops` the backend runs is timed:

  W4A16 auto       what the harness runs (`w4a16_matmul`, impl="auto")
  W4A16 <impl>     each other implementation (reference = dequantize + dot)
  W4A4 auto        dynamic per-row 4-bit activation codes + `int_matmul` (the whole W4A4 layer)
  W4A4 <impl>      the same layer through another implementation
  ... pallas bn..  (``--tune``, GPU) the kernels under each tiling of `W4A16_TILINGS` and
                   `W4A4_TILINGS`

Each variant cycles through enough copies of its weight that they fill 512 MiB (8 GiB on a GPU, at
most 64 copies), so no cache holds the weight being read; the time is the median of calls after
a compile and 200 warm-up calls (at most 15 s; 20 on a GPU). On a GPU a call shorter than 1 ms
is timed as 64 calls queued back to back before one wait (`timing.pipelined_seconds`: waiting
after each call measured the wait, about 0.1 ms, as much as the call). "x dense" is the dense
time over the path's time, in the same run. "floor" is the fraction of the memory-bandwidth floor
reached: the bytes the call must read and write (weights, scales, x, y) over the best read
bandwidth measured in this run (a streaming reduction over 1 GiB, or the dense dot if that was
faster), divided by the measured time. Below the table, for each shape, M and
operation: what `auto` ran beside the fastest path that agreed with the reference, flagged when
auto is more than 10 % slower (`auto_report`), and the fastest path on K-major codes.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import sys
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from timing import copy_count, median_seconds, replicate

from q4lab.core import (
    QTensor,
    QuantSpec,
    act_codes,
    act_fake_quant,
    dequantize_matrix,
    relayout,
    stored_bytes,
)
from q4lab.ops import (
    IMPLEMENTATIONS,
    choose,
    int_matmul,
    mosaic_gpu,
    on_gpu,
    pallas_gpu,
    pallas_kmajor,
    w4a16_matmul,
)
from q4lab.ops.mosaic_gpu import MosaicConfig
from q4lab.ops.pallas_gpu import KernelConfig
from q4lab.quantizers import get_quantizer
from q4lab.recipe import ActSpec

SHAPES = ((4096, 4096), (8192, 8192), (8192, 28672))
BATCHES = (1, 16, 128, 4096)
ACT = ActSpec(bits=4)
TOLERANCE = 1e-4  # relative to max |y|: exact weights, float32 sums in another order
ROUNDED_TOLERANCE = 1e-2  # the GPU xla form (and W4A16 mosaic) round code * scale to bfloat16


def stream_bandwidth() -> float:
    """Bytes per second of a jitted sum over 1 GiB (4 GiB on a GPU, where a dispatch's fixed
    cost would be a quarter of the time of 1 GiB), read once."""
    a = jnp.ones((1 << (30 if on_gpu() else 28),), jnp.float32)
    t = median_seconds(jax.jit(jnp.sum), [(a,)], seconds=1.0)
    return a.nbytes / t


def _w4a4_layer(x: jax.Array, qt: QTensor, matmul: Callable = int_matmul) -> jax.Array:
    """The whole W4A4 layer: dynamic per-row activation codes, then ``matmul(xc, scale, qt)``."""
    scale, zero = ACT.params(x.astype(jnp.float32))
    return matmul(act_codes(x, scale, zero, ACT.quant_spec()), scale, qt)


def _references(x: jax.Array, qt: QTensor) -> dict[str, np.ndarray]:
    """What the W4A16 and W4A4 paths must return, in float32 at full precision."""
    x = x.astype(jnp.float32)
    scale, zero = ACT.params(x)
    with jax.default_matmul_precision("highest"):
        w = dequantize_matrix(qt)
        return {
            "W4A16": np.asarray(x @ w),
            "W4A4": np.asarray(act_fake_quant(x, scale, zero, ACT.quant_spec()) @ w),
        }


# The --tune grids: each kernel's default and the runners-up of the last H200 run (RESULTS.md:
# 32-bit word loads, the CUDA-core form for one row of x), and the K-major W4A4 kernel.
W4A16_TILINGS = [
    pallas_gpu.W4A16_DEFAULT,
    pallas_gpu.W4A16_ONE_ROW,
    KernelConfig(block_n=128, split_k=4),
    KernelConfig(block_n=128, split_k=8, num_stages=4, load="words"),
    KernelConfig(block_n=128, split_k=8, num_stages=4, load="words", compute="fma"),
]
W4A4_TILINGS = [
    pallas_gpu.W4A4_DEFAULT,
    pallas_gpu.W4A4_LARGE_M,
    KernelConfig(block_m=128, block_n=128, block_k=64, num_warps=8, load="words"),
]
# The best Pallas int8 GEMM tilings on a [N, K] weight (layout_probe.py gemm: bm128 bn128 bk128
# w8 1.43x, bm128 bn256 bk128 w8 s4 1.19x). A K-major step of block_k rows is two dots of depth
# block_k / 2, so the probe's depth 128 is block_k 256 (per-channel; g128 weights step 128).
W4A4_KMAJOR_TILINGS = [
    pallas_kmajor.W4A4_KMAJOR_DEFAULT,
    KernelConfig(block_m=128, block_n=128, block_k=256, num_warps=8),
    KernelConfig(block_m=128, block_n=256, block_k=256, num_warps=8, num_stages=4),
    KernelConfig(block_m=128, block_n=128, block_k=128, num_warps=4),
]
# The Mosaic GPU kernels (TMA + wgmma; W4A4 per-channel only, W4A16 up to 64 rows with group
# size = block_k): never run on a GPU yet. Timed, as the Triton K-major kernel, on weights laid out
# K-major once (`q4lab.core.relayout`), as a model would hold them.
W4A16_MOSAIC_TILINGS = [
    mosaic_gpu.W4A16_MOSAIC_DEFAULT,
    dataclasses.replace(mosaic_gpu.W4A16_MOSAIC_DEFAULT, overlap=True),
    MosaicConfig(block_n=64, block_k=128, stages=8, split_k=1, overlap=True),
    MosaicConfig(block_n=128, block_k=128, stages=4, split_k=2, overlap=True),
    dataclasses.replace(mosaic_gpu.W4A16_MOSAIC_DEFAULT, registers=True),
    MosaicConfig(block_n=128, block_k=128, stages=4, split_k=2, registers=True),
]
W4A4_MOSAIC_TILINGS = [
    mosaic_gpu.MOSAIC_DEFAULT,
    dataclasses.replace(mosaic_gpu.MOSAIC_DEFAULT, overlap=True),
    MosaicConfig(block_m=128, block_n=128, block_k=64, stages=4, overlap=True),
    MosaicConfig(block_m=64, block_n=128, block_k=128, stages=4),
    MosaicConfig(block_m=128, block_n=64, block_k=128, stages=3, overlap=True),
]
TUNE_MAX_ROWS = 64  # the W4A16 kernel is for small M: larger M takes the xla form
# the paths that read K-major codes: timed on weights laid out so; for a weight in rows `auto`
# does not reach them (relayout does)
_KMAJOR_PATHS = ("W4A16 mosaic", "W4A4 mosaic", "W4A4 pallas k-major")


def _tiling_name(config: KernelConfig, w4a4: bool) -> str:
    rows = f"bm{config.block_m} bk{config.block_k} " if w4a4 else f"sk{config.split_k} "
    kind = "" if config.load == "bytes" else f" {config.load}"
    kind += "" if config.compute == "dot" else f" {config.compute}"
    return f"bn{config.block_n} {rows}w{config.num_warps} s{config.num_stages}{kind}"


def _mosaic_name(config: MosaicConfig, w4a4: bool) -> str:
    rows = f"bm{config.block_m} " if w4a4 else ""
    name = f"{rows}bn{config.block_n} bk{config.block_k} s{config.stages}"
    name += "" if w4a4 else f" sk{config.split_k}"
    return name + " overlap" * config.overlap + " registers" * config.registers


def _kmajor_name(config: KernelConfig) -> str:
    return (
        f"bm{config.block_m} n{config.block_n} bk{config.block_k} w{config.num_warps} "
        f"s{config.num_stages}"
    )


class _Family(NamedTuple):
    """A kernel and its tilings under ``--tune``."""

    label: str  # the paths' names start with it
    tilings: list
    kernel: Callable  # kernel(..., config=tiling)
    refuses: Callable[..., str | None]  # refuses(qt, m, tiling): why it cannot run, or None
    name: Callable[..., str]  # a tiling's name
    w4a4: bool  # timed as a whole W4A4 layer (`_w4a4_layer`)


def _tuned_families(m: int, dtype) -> list[_Family]:
    """The kernel families in the order they are timed: the Mosaic GPU and K-major W4A4 kernels
    first (never timed on a GPU yet: a step that runs out of time keeps them)."""
    sixteen_bit, few_rows = jnp.dtype(dtype).itemsize == 2, m <= TUNE_MAX_ROWS
    return [
        _Family(
            "W4A16 mosaic",
            W4A16_MOSAIC_TILINGS if sixteen_bit else [],
            mosaic_gpu.w4a16_mosaic,
            lambda qt, m, c: mosaic_gpu.unsupported(qt, m, c, w4a4=False),
            lambda c: _mosaic_name(c, False),
            False,
        ),
        _Family(
            "W4A4 mosaic",
            W4A4_MOSAIC_TILINGS,
            mosaic_gpu.w4a4_mosaic,
            mosaic_gpu.unsupported,
            lambda c: _mosaic_name(c, True),
            True,
        ),
        _Family(
            "W4A4 pallas k-major",
            W4A4_KMAJOR_TILINGS,
            pallas_kmajor.w4a4_kmajor_pallas,
            lambda qt, m, c: pallas_kmajor.unsupported(qt, c),
            _kmajor_name,
            True,
        ),
        _Family(
            "W4A16 pallas",
            W4A16_TILINGS if few_rows else [],
            pallas_gpu.w4a16_pallas,
            pallas_gpu.unsupported,
            lambda c: _tiling_name(c, False),
            False,
        ),
        _Family(
            "W4A4 pallas",
            W4A4_TILINGS,
            pallas_gpu.w4a4_pallas,
            lambda qt, m, c: pallas_gpu.unsupported(qt, m, c, w4a4=True),
            lambda c: _tiling_name(c, True),
            True,
        ),
    ]


def _tuned_paths(qt: QTensor, m: int, dtype) -> dict[str, Callable]:
    """GPU only: each kernel under each tiling of a small grid (``--tune``) that can run it."""
    paths = {}
    for family in _tuned_families(m, dtype):
        for config in family.tilings:
            if not family.refuses(qt, m, config):
                path = functools.partial(family.kernel, config=config)
                if family.w4a4:
                    path = functools.partial(_w4a4_layer, matmul=path)
                paths[f"{family.label} {family.name(config)}"] = path
    return paths


def _paths(qt: QTensor, m: int, tune: bool, dtype) -> dict[str, Callable]:
    """Name -> jitted ``f(x, w)`` for every path this backend runs on this shape."""
    paths = _tuned_paths(qt, m, dtype) if tune and on_gpu() else {}
    auto = choose(qt, m, dtype=dtype)
    paths |= {f"W4A16 auto ({auto})": lambda x, w: w4a16_matmul(x, w)}
    # the Mosaic kernels are timed under their tilings (--tune); GPU-only paths off a GPU
    skip = {"auto", "pallas_interpret", "mosaic", auto} | (set() if on_gpu() else {"pallas"})
    if qt.scale.shape[0] > 1 and not on_gpu():
        skip.add("xla")  # per-group with float32 inputs: the xla form is the reference
    for impl in IMPLEMENTATIONS:
        if impl not in skip:
            paths[f"W4A16 {impl}"] = lambda x, w, impl=impl: w4a16_matmul(x, w, impl=impl)
    w4a4 = choose(qt, m, w4a4=True, dtype=jnp.int8)
    paths[f"W4A4 auto ({w4a4})"] = _w4a4_layer
    intermediate = m * qt.scale.shape[0] * qt.n * 4  # the einsum's [M, G, N] int32 (xla, ref.)
    for impl in ("reference", "xla", "blocked", "pallas"):
        if impl == w4a4 or impl == ("blocked" if on_gpu() else "pallas"):
            continue
        if impl in ("reference", "xla") and intermediate >= (2 << 30) and w4a4 != impl:
            continue
        if impl == "xla" and not on_gpu():
            continue  # on CPU the xla form is the reference's einsum
        matmul = functools.partial(int_matmul, impl=impl)
        paths[f"W4A4 {impl}"] = functools.partial(_w4a4_layer, matmul=matmul)
    return {name: jax.jit(f) for name, f in paths.items()}


def bench_shape(
    k: int,
    n: int,
    batches,
    seconds: float,
    check: bool,
    tune: bool,
    spec: QuantSpec,
    dtype,
    only: list[str] | None = None,
    skip: list[str] | None = None,
) -> list[dict]:
    w = jax.random.normal(jax.random.key(k + n), (k, n), jnp.float32) / math.sqrt(k)
    qt = get_quantizer("minmax").quantize(w, spec)
    dense_w = w.astype(dtype)
    del w
    dense_copies = replicate(dense_w, copy_count(dense_w.nbytes))
    q_bytes = stored_bytes(qt)
    q_copies = replicate(qt, copy_count(q_bytes))
    kmajor_copies = []  # K-major codes (relayout), made once (offline) as a model would hold them
    rows = []
    for m in batches:
        x = jax.random.normal(jax.random.key(m), (m, k), jnp.float32).astype(dtype)
        io = x.nbytes + m * n * jnp.dtype(dtype).itemsize
        dense = median_seconds(jax.jit(lambda x, w: x @ w), [(x, c) for c in dense_copies], seconds)
        rows.append(
            _row(k, n, m, f"dense {jnp.dtype(dtype).name}", dense, dense, dense_w.nbytes + io)
        )
        print(f"{k}x{n} M={m} dense: {dense * 1e3:.4g} ms", file=sys.stderr, flush=True)
        references = _references(x, qt) if check else {}
        for name, fn in _paths(qt, m, tune, dtype).items():
            if (only and not name.startswith(tuple(only))) or name.startswith(tuple(skip or ())):
                continue
            weights = q_copies
            if name.startswith(_KMAJOR_PATHS):  # kernels that read K-major codes
                kmajor_copies = kmajor_copies or [relayout(c, "kmajor") for c in q_copies]
                weights = kmajor_copies
            try:
                t = median_seconds(fn, [(x, c) for c in weights], seconds)
            except Exception as err:  # a kernel that does not lower here: say so, go on
                rows.append({**_row(k, n, m, name, math.nan, dense, 0), "error": repr(err)[:120]})
                print(f"{k}x{n} M={m} {name}: failed {err!r:.300}", file=sys.stderr, flush=True)
                continue
            row = _row(k, n, m, name, t, dense, q_bytes + io)
            if check:
                y = np.asarray(fn(x, weights[0]), np.float32)
                ref = references[name.split()[0]]
                row["rel err"] = float(np.abs(y - ref).max() / np.abs(ref).max())
                rounded = "xla" in name or name.startswith("W4A16 mosaic")
                row["tolerance"] = ROUNDED_TOLERANCE if rounded and on_gpu() else TOLERANCE
            rows.append(row)
            error = f", rel err {row['rel err']:.2g}" if check else ""
            print(
                f"{k}x{n} M={m} {name}: {t * 1e3:.4g} ms, {dense / t:.3g}x dense{error}",
                file=sys.stderr,
                flush=True,
            )
    return rows


def _row(k: int, n: int, m: int, path: str, t: float, dense: float, nbytes: int) -> dict:
    return {
        "KxN": f"{k}x{n}",
        "M": m,
        "path": path,
        "ms": t * 1e3,
        "x dense": dense / t,
        "bytes": nbytes,
    }


def auto_report(table: pd.DataFrame, slack: float = 0.10) -> list[str]:
    """Per shape, M and operation: what `auto` ran against the fastest path that agreed with the
    reference, flagging auto more than ``slack`` slower (the issue's dispatch rule: the cue to
    change `GPU_CHOICES`); the fastest K-major path beside it (what relaying the weight buys)."""
    lines = []
    ok = table[table.ms.notna()]
    if "rel err" in ok and "tolerance" in ok:
        ok = ok[~(ok["rel err"] > ok["tolerance"])]
    for (shape, m), cell in ok.groupby(["KxN", "M"], sort=False):
        for op in ("W4A16", "W4A4"):
            paths = cell[cell.path.str.startswith(f"{op} ")]
            auto = paths[paths.path.str.startswith(f"{op} auto")]
            if auto.empty:
                continue
            kmajor = paths.path.str.startswith(_KMAJOR_PATHS)
            best, auto_ms = paths[~kmajor].loc[paths[~kmajor].ms.idxmin()], auto.ms.iloc[0]
            line = f"{shape} M={m} {op}: {auto.path.iloc[0]} {auto_ms:.4g} ms"
            if auto_ms > (1 + slack) * best.ms:
                line += f"; {best.path} {best.ms:.4g} ms, auto {auto_ms / best.ms:.2f}x slower"
            else:
                line += f" (fastest within {slack:.0%})"
            if kmajor.any():
                fast = paths[kmajor].loc[paths[kmajor].ms.idxmin()]
                line += f"; K-major: {fast.path} {fast.ms:.4g} ms"
            lines.append(line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="*", default=[f"{k}x{n}" for k, n in SHAPES])
    parser.add_argument("--m", nargs="*", type=int, default=list(BATCHES))
    parser.add_argument("--seconds", type=float, default=1.0, help="timing budget per cell")
    parser.add_argument("--check", action="store_true", help="error of each path vs reference")
    parser.add_argument("--tune", action="store_true", help="GPU: time each kernel tiling too")
    parser.add_argument("--out", help="also write the table (markdown) to this file")
    parser.add_argument("--only", nargs="*", help="time only paths whose name starts so")
    parser.add_argument("--skip", nargs="*", help="leave out paths whose name starts so")
    parser.add_argument("--group", type=int, default=128, help="weight group size (0: per-channel)")
    parser.add_argument(
        "--dtype",
        choices=("bfloat16", "float16", "float32"),
        help="x and dense (default: bfloat16 on GPU, float32 on CPU)",
    )
    args = parser.parse_args()
    dtype = jnp.dtype(args.dtype or ("bfloat16" if on_gpu() else "float32"))
    spec = QuantSpec(bits=4, group_size=args.group or None, scale_dtype="float16")

    bandwidth = stream_bandwidth()
    rows = []
    for shape in args.shapes:
        k, n = (int(v) for v in shape.lower().split("x"))
        rows += bench_shape(
            k, n, args.m, args.seconds, args.check, args.tune, spec, dtype, args.only, args.skip
        )
    table = pd.DataFrame(rows)
    dense = table[table.path.str.startswith("dense")]
    best = max(bandwidth, float((dense.bytes / (dense.ms / 1e3)).max()))
    table["GB/s"] = table.bytes / (table.ms / 1e3) / 1e9
    table["floor"] = table["GB/s"] * 1e9 / best
    failed = args.check and bool((table["rel err"] > table["tolerance"]).any())
    report = auto_report(table)
    table = table.drop(columns=["bytes", "tolerance"], errors="ignore")
    device = jax.devices()[0]
    header = (
        f"{device.platform} ({device.device_kind}), jax {jax.__version__}, "
        f"x {dtype.name}, {spec.describe()}; best read bandwidth {best / 1e9:.0f} GB/s "
        f"(stream {bandwidth / 1e9:.0f} GB/s)\n"
    )
    text = header + "\n" + table.to_markdown(index=False, floatfmt=".3g") + "\n"
    text += "\nWhat auto ran, against the fastest path that agrees with the reference:\n"
    text += "".join(f"- {line}\n" for line in report)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    if failed:
        raise SystemExit("a path disagrees with the reference (rel err above its tolerance)")


if __name__ == "__main__":
    main()
