"""CPU paths: the packed weight is unpacked one block of K rows at a time, never whole. They read
4-bit nibbles (`q4lab.ops.halves`); other widths are refused by `halves.split`.

XLA on CPU lowers ``x @ dequantize(W)`` by writing the full float32 weight to memory and then
running the GEMM on it: 8x the bytes of the packed codes written and read again, about 10x slower
than the float dot at M = 1. Here a `lax.fori_loop` walks K in blocks of `block_rows`; each step
unpacks the block's low and high nibbles (the even and odd output columns, see `q4lab.ops.halves`)
to float32 while they stay in cache, and accumulates the block's product. The weight values are
exactly those of `dequantize` (``(u - z) * s`` in float32); only the order of the float sums
differs from the one big dot. Its dots ask for float32 products (``HIGHEST``): on a GPU, where
`GPU_CHOICES` runs this path for float32 activations, the default would round them as TF32 does.

W4A4 runs the same walk on integer-valued float32 operands: a block lies within one scale group
and its products and sums are integers below 2^24 (|x_c| <= 128, |w_c| <= 15, at most 8192 rows),
so they are exact, as an int32 accumulation would be; the group scale multiplies each block's
sum. XLA:CPU's int8 GEMM is 4-8x slower than its float32 GEMM here (``benchmarks/NOTES.md``).

Block size: ``8 MiB`` of unpacked float32 per step (the best of 2..32 MiB for N = 4096..28672
on this 2-core AVX-512 machine, ``benchmarks/bench_ops.py``), and at least 4 M rows, so the
``[M, N]`` accumulator that every step reads and writes stays small beside the block.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from q4lab.core import QTensor
from q4lab.ops import halves
from q4lab.ops.halves import Halves

BLOCK_BYTES = 8 << 20  # float32 bytes of both halves of one unpacked block
EXACT_ROWS = 8192  # rows whose integer W4A4 sums stay below 2^24: 128 * 15 * 8192 < 2^24


def _pow2_floor(v: int) -> int:
    return 2 ** int(math.log2(max(1, v)))


def block_rows(
    k: int,
    n: int,
    rows_per_scale: int,
    m: int = 1,
    *,
    budget: int = BLOCK_BYTES,
    within_scale_row: bool = False,
    most: int | None = None,
) -> int:
    """Rows of K per step: about ``budget`` bytes of float32 ``[rows, n]`` or ``4 m`` rows,
    whichever is more (at most ``most``), a power of two, and a multiple or a divisor of the
    group size so no block straddles a scale row (a divisor when ``within_scale_row``)."""
    target = max(8, _pow2_floor(budget // (4 * n)), _pow2_floor(4 * m))
    target = target if most is None else min(target, most)
    if rows_per_scale < k:  # per-group
        g = rows_per_scale
        if target >= g and not within_scale_row:
            return min((target // g) * g, k)
        return max(d for d in range(1, min(target, g) + 1) if g % d == 0)
    return min(target, k)


def _grid_rows(a: jax.Array | None, r0, size: int, rows_per_scale: int) -> jax.Array:
    """Float32 rows of a ``[G, h]`` scale/zero grid covering block rows ``[r0, r0 + size)``, as
    ``[size // rows_per_scale or 1, 1, h]``; a grid of one row broadcasts; None is the
    symmetric zero."""
    if a is None:
        return jnp.full((1, 1, 1), halves.SYMMETRIC_ZERO, jnp.float32)
    if a.shape[0] > 1:
        a = lax.dynamic_slice_in_dim(a, r0 // rows_per_scale, max(1, size // rows_per_scale), 0)
    return a[:, None, :].astype(jnp.float32)


def _grouped(block: jax.Array, rows_per_scale: int) -> jax.Array:
    """``[size, h] -> [size // rows_per_scale or 1, rows_per_scale or size, h]``."""
    size = block.shape[0]
    groups = max(1, size // rows_per_scale)
    return block.reshape(groups, size // groups, block.shape[1])


Step = Callable[[jax.Array, jax.Array, jax.Array, jax.Array, object, int], jax.Array]


def _walk(hv: Halves, rows: int, init: jax.Array, step: Step) -> tuple[jax.Array, jax.Array]:
    """Run ``step(acc, nibbles, scale, zero, r0, size)`` over K in blocks, for both halves:
    ``nibbles`` are the block's unsigned nibbles ``u`` grouped ``[groups, rows, h]`` (code =
    ``u - zero``), ``scale``/``zero`` float32 ``[groups, 1, h]``."""
    k = hv.codes.shape[0]
    rps = hv.rows_per_scale

    def block(r0, size: int, acc: tuple[jax.Array, jax.Array]):
        b = halves.offset_codes(lax.dynamic_slice_in_dim(hv.codes, r0, size, 0), hv.symmetric)
        out = []
        for nibbles, scale, zero, a in (
            (halves.low_nibbles(b), hv.scale_even, hv.zero_even, acc[0]),
            (halves.high_nibbles(b), hv.scale_odd, hv.zero_odd, acc[1]),
        ):
            grids = (_grid_rows(scale, r0, size, rps), _grid_rows(zero, r0, size, rps))
            out.append(step(a, _grouped(nibbles, rps), *grids, r0, size))
        return tuple(out)

    full, tail = divmod(k, rows)
    acc = lax.fori_loop(0, full, lambda i, a: block(i * rows, rows, a), (init, init))
    if tail:
        acc = block(full * rows, tail, acc)
    return acc


def w4a16_blocked(x: jax.Array, qt: QTensor, *, rows: int | None = None) -> jax.Array:
    """``x[M, K] @ dequantize(qt)`` in float32, unpacking ``rows`` rows of K per step."""
    hv = halves.split(qt)
    x = halves.permuted_input(x, qt).astype(jnp.float32)
    rows = rows or block_rows(qt.k, qt.n, hv.rows_per_scale, x.shape[0])

    def step(acc, nibbles, scale, zero, r0, size):
        w = (nibbles.astype(jnp.float32) - zero) * scale
        xb = lax.dynamic_slice_in_dim(x, r0, size, 1)
        return acc + jnp.dot(xb, w.reshape(size, -1), precision=lax.Precision.HIGHEST)

    init = jnp.zeros((x.shape[0], hv.codes.shape[1]), jnp.float32)
    even, odd = _walk(hv, rows, init, step)
    return halves.interleave(even, odd, n=qt.n)


def w4a4_blocked(
    xc: jax.Array, x_scale: jax.Array, qt: QTensor, *, rows: int | None = None
) -> jax.Array:
    """W4A4 on CPU: centered int8 activation codes ``xc[M, K]`` (logical order) times the
    weight's centered codes, exact integer sums per block (in float32, see the module
    docstring), then the weight and row scales."""
    if xc.dtype != jnp.int8:
        raise ValueError(f"w4a4_blocked needs int8 activation codes, got {xc.dtype}")
    hv = halves.split(qt)
    xf = halves.permuted_input(xc, qt).astype(jnp.float32)
    m = xf.shape[0]
    per_group = hv.rows_per_scale < qt.k
    rows = rows or block_rows(
        qt.k, qt.n, hv.rows_per_scale, m, within_scale_row=True, most=EXACT_ROWS
    )
    if rows > EXACT_ROWS or (per_group and hv.rows_per_scale % rows):
        raise ValueError(f"rows={rows} must divide the group size and be at most {EXACT_ROWS}")

    def step(acc, nibbles, scale, zero, r0, size):
        centered = nibbles[0].astype(jnp.float32) - zero[0]  # one scale row: [size, h]
        xb = lax.dynamic_slice_in_dim(xf, r0, size, 1)
        exact = jnp.dot(xb, centered, precision=lax.Precision.HIGHEST)
        return acc + exact * scale[0]

    init = jnp.zeros((m, hv.codes.shape[1]), jnp.float32)
    even, odd = _walk(hv, rows, init, step)
    return halves.interleave(even, odd, n=qt.n) * x_scale.astype(jnp.float32)
