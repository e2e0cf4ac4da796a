"""W4A4 on K-major codes: the int8 GEMM laid out as Hopper's 8-bit tensor cores read it.

Hopper's 8-bit MMA takes both operands K-major (the contraction axis contiguous). A `QTensor`
packs its codes along N (``[K, N/2]`` bytes), and an int8 Pallas GEMM reading its weight that way
ran at 0.15-0.34x of XLA's bf16 dot on an H200, while the same loop on a ``[N, K]`` weight ran at
0.9-1.43x (``benchmarks/layout_probe.py gemm``, RESULTS.md). This kernel reads the codes packed
along K instead, as a `QTensor` of layout ``"kmajor"`` holds them (`q4lab.core.relayout`): byte
``[n, j]`` holds rows 2j (low nibble) and 2j + 1 of column n as signed nibbles; xor-ing a byte
with 0x88 makes both ``u = code + zero`` unsigned (zero = 8 for symmetric codes). The activations
are split into their even and odd columns, so one step is ``x_even @ low.T + x_odd @ high.T``
with int32 sums; then ``- zero * sum x``, the group scale in float32 and the row scales, as
`pallas_gpu`'s W4A4 kernel.

A weight in the rows layout is re-laid on every call (a pass over the whole weight, small at
M=4096 beside the GEMM); lay it out once instead. Not yet timed on a GPU
(``benchmarks/gpu_check.sh`` step "check" times it): `auto` does not run it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from q4lab.core import QTensor, relayout
from q4lab.ops import halves
from q4lab.ops.pallas_gpu import (
    SYMMETRIC_ZERO,
    KernelConfig,
    _padded_rows,
    _pow2,
    _rows_tile,
    _step_rows,
    _triton_params,
    _w4a4_output,
    _w4a4_step,
)

# block_n counts output columns here (the n-major kernels count bytes of a code row); a step of
# block_k rows is two dots of depth block_k / 2 (even and odd rows)
W4A4_KMAJOR_DEFAULT = KernelConfig(block_m=128, block_n=128, block_k=128, num_warps=8)
_MIN_INT8_DOT = 32  # an 8-bit MMA's contraction depth


def unsupported(qt: QTensor, config: KernelConfig = W4A4_KMAJOR_DEFAULT) -> str | None:
    """Why the K-major kernel cannot take this weight under ``config``; None when it can."""
    if config.load != "bytes" or config.compute != "dot":
        return "the K-major kernel reads bytes into tensor-core dots (load='bytes', compute='dot')"
    if not qt.spec.nibbles:
        return f"{qt.spec.bits}-bit codes are not nibbles; allowed widths: 4"
    if qt.n % config.block_n:
        return f"N={qt.n} is not a multiple of block_n={config.block_n}"
    step = _step_rows(qt, config)
    if not _pow2(step) or step < 2 * _MIN_INT8_DOT:
        return f"{step} rows per scale step is not a power of two >= {2 * _MIN_INT8_DOT}"
    if qt.k % step:
        return f"K={qt.k} is not a multiple of {step}"
    return None


def _kernel(xe_ref, xo_ref, xs_ref, codes_ref, scale_ref, zero_ref, out_ref, *, half, steps,
            per_group, zero_const):  # fmt: skip
    dot = functools.partial(jnp.dot, preferred_element_type=jnp.int32)

    def body(t, acc):
        j0 = t * half
        xe = xe_ref[:, pl.ds(j0, half)]
        xo = xo_ref[:, pl.ds(j0, half)]
        w = halves.offset_codes(codes_ref[:, pl.ds(j0, half)], True)  # [bn, half] of u
        lo = halves.low_nibbles(w).astype(jnp.int8)
        hi = halves.high_nibbles(w).astype(jnp.int8)
        p = dot(xe, lo.T) + dot(xo, hi.T)
        x_sum = jnp.sum(xe.astype(jnp.int32), axis=1, keepdims=True)
        x_sum += jnp.sum(xo.astype(jnp.int32), axis=1, keepdims=True)
        g = t if per_group else 0
        return acc + _w4a4_step(
            p, x_sum, g, scale_ref, zero_ref, per_group=per_group, zero_const=zero_const
        )

    acc = lax.fori_loop(
        0, steps, body, jnp.zeros(out_ref.shape, jnp.float32 if per_group else jnp.int32)
    )
    row_scale = xs_ref[...].astype(jnp.float32)
    out_ref[...] = _w4a4_output(acc, scale_ref, row_scale, per_group=per_group)


@functools.partial(jax.jit, static_argnames=("config", "interpret"))
def w4a4_kmajor_pallas(
    xc: jax.Array,
    x_scale: jax.Array,
    qt: QTensor,
    *,
    config: KernelConfig = W4A4_KMAJOR_DEFAULT,
    interpret: bool = False,
) -> jax.Array:
    """W4A4 on K-major codes: centered int8 codes ``xc[M, K]`` (logical order) with row scales
    ``x_scale[M or 1, 1]`` times the weight; float32 ``[M, N]``."""
    m = xc.shape[0]
    reason = unsupported(qt, config)
    if reason:
        raise ValueError(f"w4a4_kmajor_pallas cannot run this weight: {reason}")
    bm, bn = _rows_tile(m, config.block_m), config.block_n
    xc, row_scale, mp = _padded_rows(xc, x_scale, qt, bm)
    groups = qt.scale.shape[0]
    scale = jnp.broadcast_to(qt.scale, (groups, qt.n))
    zero = scale if qt.zero is None else jnp.broadcast_to(qt.int_zero(), (groups, qt.n))
    step = _step_rows(qt, config)
    kernel = functools.partial(
        _kernel,
        half=step // 2,
        steps=qt.k // step,
        per_group=groups > 1,
        zero_const=SYMMETRIC_ZERO if qt.zero is None else None,
    )
    grid_spec = pl.BlockSpec((groups, bn), lambda i, j: (0, j))
    x_spec = pl.BlockSpec((bm, qt.k // 2), lambda i, j: (i, 0))
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((mp, qt.n), jnp.float32),
        grid=(mp // bm, qt.n // bn),
        in_specs=[
            x_spec,
            x_spec,
            pl.BlockSpec((bm, 1), lambda i, j: (i, 0)),
            pl.BlockSpec((bn, qt.k // 2), lambda i, j: (j, 0)),
            grid_spec,
            grid_spec,
        ],
        out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
        interpret=interpret,
        compiler_params=_triton_params(config),
        name="q4lab_w4a4_kmajor",
    )(xc[:, 0::2], xc[:, 1::2], row_scale, relayout(qt, "kmajor").codes, scale, zero)[:m]
