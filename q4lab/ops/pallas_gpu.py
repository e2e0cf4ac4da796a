"""Pallas (Triton backend) kernels for packed 4-bit weights on NVIDIA GPUs (4-bit only: other
widths are packed otherwise, see `unsupported`).

Both kernels read the packed bytes of a column block once, split them into the even (low nibble)
and odd (high nibble) output columns in registers (`q4lab.ops.halves`), and never write an
unpacked weight to memory. The XLA forms do (see ``shared/GPU_NOTES.md``: 0.26-0.48x of bf16).

W4A16  grid ``(M / block_m, h / block_n, split_k)``: a program walks its share of K one scale
       group at a time (``block_k`` rows for per-channel weights), two dots per step (x's dtype,
       float32 accumulation), the group's scales applied to the partial products. ``split_k``
       partial sums are added by XLA. Rows are tiled in blocks of at most ``block_m`` (a power of
       two >= 16: Triton's tensors have power-of-two shapes and its smallest dot is 16). The
       accumulators of a program are ``2 * block_m * block_n`` float32 registers: an untiled
       512-row block (the harness' evaluation batches) spilled so badly that one tiny layer took
       minutes to compile on an H200 (``shared/GPU_NOTES.md``).
W4A4   grid ``(M / block_m, h / block_n)``: int8 activation codes times the weight's centered
       int8 codes, int32 accumulation within a group, then the group scale in float32; the row
       scales of the activations at the end.

``interpret=True`` runs the same kernels through Pallas' interpreter on any backend: that is how
the tests check them on CPU. Speed is measured only on a GPU, by ``benchmarks/bench_ops.py``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from q4lab.core import QTensor
from q4lab.ops import halves
from q4lab.ops.halves import Halves

_MIN_DOT = 16  # Triton's smallest dot dimension


@dataclasses.dataclass(frozen=True, kw_only=True)
class KernelConfig:
    """Tiling of the kernels; hashable (a static jit argument)."""

    block_n: int = 128  # output columns per half per program (bytes of codes per row)
    block_k: int = 128  # rows per step for per-channel weights (per-group: the group size)
    split_k: int = 4  # W4A16: programs sharing one column block, each a slice of K
    block_m: int = 64  # rows of x per program, at most (bounds the accumulator registers)
    num_warps: int = 4
    num_stages: int = 3


# The fastest tilings of the `benchmarks/bench_ops.py --tune` grid on an H200 (RESULTS.md):
# W4A16 at 8192x28672, M = 1 and 16 (split-K 8: 0.93x / 1.27x of bf16 against 0.77x / 0.96x
# at split-K 4); W4A4 at 8192x8192, M = 4096 (128 rows x 64 columns: 2.2 ms, 64 x 128: 5.8 ms).
W4A16_DEFAULT = KernelConfig(block_n=128, split_k=8)
W4A4_DEFAULT = KernelConfig(block_n=64, block_m=128)


def _pow2(v: int) -> bool:
    return v > 0 and v & (v - 1) == 0


def _round_up(v: int, to: int) -> int:
    return -(-v // to) * to


def _rows_tile(m: int, cap: int) -> int:
    """Rows of x per tile: a power of two (Triton's tensors are), at least 16, at most ``cap``."""
    return min(cap, max(_MIN_DOT, pl.next_power_of_2(m)))


def _step_rows(qt: QTensor, config: KernelConfig) -> int:
    rps = halves.rows_per_scale(qt)
    return rps if rps < qt.k else min(config.block_k, qt.k)


def unsupported(
    qt: QTensor, m: int, config: KernelConfig | None = None, *, w4a4: bool = False
) -> str | None:
    """Why the kernel (W4A16, or W4A4 with ``w4a4``) cannot take this weight and batch under
    ``config`` (default: the kernel's own), as a string; None when it can."""
    config = config or (W4A4_DEFAULT if w4a4 else W4A16_DEFAULT)
    if not qt.spec.nibbles:
        return f"{qt.spec.bits}-bit codes are not nibbles; allowed widths: 4"
    h = qt.codes.shape[1]
    if h % config.block_n:
        return f"ceil(N/2)={h} is not a multiple of block_n={config.block_n}"
    step = _step_rows(qt, config)
    if not _pow2(step) or step < (32 if w4a4 else _MIN_DOT):
        return f"{step} rows per scale step is not a power of two >= {_MIN_DOT} (int8: 32)"
    if qt.k % step:
        return f"K={qt.k} is not a multiple of {step}"
    return None


def _offset(codes, zero_const):
    """Bytes as int32 whose nibbles are ``code + zero`` (`halves.offset_codes`)."""
    return halves.offset_codes(codes, zero_const is not None).astype(jnp.int32)


def _centered(nibbles, zero_ref, g, zero_const, dtype):
    """``u - zero`` of unsigned nibbles (int32) in ``dtype``: integer arithmetic for symmetric
    codes (constant zero), float32 for stored zero points."""
    if zero_const is not None:
        return (nibbles - int(zero_const)).astype(dtype)
    return (nibbles.astype(jnp.float32) - _scale_row(zero_ref, g)).astype(dtype)


def _scale_row(ref, row):
    return ref[pl.ds(row, 1), :].astype(jnp.float32)


def _w4a16_kernel(
    x_ref, codes_ref, se_ref, so_ref, ze_ref, zo_ref, ye_ref, yo_ref,
    *, step, steps, per_group, zero_const, precision,
):  # fmt: skip
    part = pl.program_id(2)

    def body(t, acc):
        k0 = (part * steps + t) * step
        xb = x_ref[:, pl.ds(k0, step)]
        b = _offset(codes_ref[pl.ds(k0, step), :], zero_const)
        g = k0 // step if per_group else 0
        lo = _centered(halves.low_nibbles(b), ze_ref, g, zero_const, xb.dtype)
        hi = _centered(halves.high_nibbles(b), zo_ref, g, zero_const, xb.dtype)
        pe = jnp.dot(xb, lo, preferred_element_type=jnp.float32, precision=precision)
        po = jnp.dot(xb, hi, preferred_element_type=jnp.float32, precision=precision)
        if per_group:
            pe, po = pe * _scale_row(se_ref, g), po * _scale_row(so_ref, g)
        return acc[0] + pe, acc[1] + po

    zeros = jnp.zeros(ye_ref.shape, jnp.float32)
    even, odd = lax.fori_loop(0, steps, body, (zeros, zeros))
    if not per_group:
        even, odd = even * _scale_row(se_ref, 0), odd * _scale_row(so_ref, 0)
    ye_ref[...] = even
    yo_ref[...] = odd


def _weight_operands(hv: Halves, bn: int, column: Callable[..., jax.Array]):
    """BlockSpecs, arrays and the constant zero (or None) of the weight operands: codes
    ``[K, bn]`` and the scale and zero grids ``[G, bn]`` of column block ``column(*grid_ids)``.
    Symmetric codes have the constant zero; their zero slots get the scales as unread
    placeholders."""
    groups = hv.scale_even.shape[0]
    if hv.symmetric:
        zeros, zero_const = (hv.scale_even, hv.scale_odd), halves.SYMMETRIC_ZERO
    else:
        shape = hv.scale_even.shape
        zeros = (jnp.broadcast_to(hv.zero_even, shape), jnp.broadcast_to(hv.zero_odd, shape))
        zero_const = None
    grid = pl.BlockSpec((groups, bn), lambda *ids: (0, column(*ids)))
    specs = [pl.BlockSpec((hv.codes.shape[0], bn), lambda *ids: (0, column(*ids)))] + [grid] * 4
    return specs, (hv.codes, hv.scale_even, hv.scale_odd, *zeros), zero_const


@functools.partial(jax.jit, static_argnames=("config", "interpret"))
def w4a16_pallas(
    x: jax.Array, qt: QTensor, *, config: KernelConfig = W4A16_DEFAULT, interpret: bool = False
) -> jax.Array:
    """``x[M, K] @ dequantize(qt)`` (float32 ``[M, N]``) by the W4A16 kernel; see `unsupported`.

    Dots run in x's dtype when it is bfloat16/float16 (the codes are exact in it), else float32.
    """
    m = x.shape[0]
    reason = unsupported(qt, m, config)
    if reason:
        raise ValueError(f"w4a16_pallas cannot run this weight: {reason}")
    hv = halves.split(qt)
    dtype = x.dtype if x.dtype in (jnp.bfloat16, jnp.float16) else jnp.float32
    bm = _rows_tile(m, config.block_m)
    mp = _round_up(m, bm)
    x = jnp.pad(halves.permuted_input(x, qt).astype(dtype), ((0, mp - m), (0, 0)))
    k, h = hv.codes.shape
    step = _step_rows(qt, config)
    split = max(s for s in range(1, config.split_k + 1) if (k // step) % s == 0)
    bn = config.block_n
    weight_specs, weights, zero_const = _weight_operands(hv, bn, lambda i, j, s: j)
    out_spec = pl.BlockSpec((None, bm, bn), lambda i, j, s: (s, i, j))
    kernel = functools.partial(
        _w4a16_kernel,
        step=step,
        steps=k // step // split,
        per_group=hv.scale_even.shape[0] > 1,
        zero_const=zero_const,
        precision=lax.Precision.HIGHEST if dtype == jnp.float32 else None,
    )
    even, odd = pl.pallas_call(
        kernel,
        out_shape=[jax.ShapeDtypeStruct((split, mp, h), jnp.float32)] * 2,
        grid=(mp // bm, h // bn, split),
        in_specs=[pl.BlockSpec((bm, k), lambda i, j, s: (i, 0)), *weight_specs],
        out_specs=[out_spec, out_spec],
        interpret=interpret,
        compiler_params=_triton_params(config),
        name="q4lab_w4a16",
    )(x, *weights)
    return halves.interleave(even.sum(0), odd.sum(0), hv.n)[:m]


def _w4a4_kernel(
    x_ref, xs_ref, codes_ref, se_ref, so_ref, ze_ref, zo_ref, ye_ref, yo_ref,
    *, step, steps, per_group, zero_const,
):  # fmt: skip
    def centered(nibbles, zero_ref, g):
        return _centered(nibbles, zero_ref, g, zero_const, jnp.int32).astype(jnp.int8)

    def body(t, acc):
        k0 = t * step
        xb = x_ref[:, pl.ds(k0, step)]
        b = _offset(codes_ref[pl.ds(k0, step), :], zero_const)
        g = t if per_group else 0
        pe = jnp.dot(
            xb, centered(halves.low_nibbles(b), ze_ref, g), preferred_element_type=jnp.int32
        )
        po = jnp.dot(
            xb, centered(halves.high_nibbles(b), zo_ref, g), preferred_element_type=jnp.int32
        )
        if not per_group:  # exact int32 sums over all of K
            return acc[0] + pe, acc[1] + po
        pe = pe.astype(jnp.float32) * _scale_row(se_ref, g)
        po = po.astype(jnp.float32) * _scale_row(so_ref, g)
        return acc[0] + pe, acc[1] + po

    acc_dtype = jnp.float32 if per_group else jnp.int32
    zeros = jnp.zeros(ye_ref.shape, acc_dtype)
    even, odd = lax.fori_loop(0, steps, body, (zeros, zeros))
    even, odd = even.astype(jnp.float32), odd.astype(jnp.float32)
    if not per_group:
        even, odd = even * _scale_row(se_ref, 0), odd * _scale_row(so_ref, 0)
    row_scale = xs_ref[...].astype(jnp.float32)
    ye_ref[...] = even * row_scale
    yo_ref[...] = odd * row_scale


@functools.partial(jax.jit, static_argnames=("config", "interpret"))
def w4a4_pallas(
    xc: jax.Array,
    x_scale: jax.Array,
    qt: QTensor,
    *,
    config: KernelConfig = W4A4_DEFAULT,
    interpret: bool = False,
) -> jax.Array:
    """W4A4 by the int8 kernel: centered int8 codes ``xc[M, K]`` (logical order) with row scales
    ``x_scale[M or 1, 1]`` times the weight; float32 ``[M, N]``."""
    m = xc.shape[0]
    reason = unsupported(qt, m, config, w4a4=True)
    if reason:
        raise ValueError(f"w4a4_pallas cannot run this weight: {reason}")
    hv = halves.split(qt)
    bm = _rows_tile(m, config.block_m)
    mp = _round_up(m, bm)
    xc = jnp.pad(halves.permuted_input(xc, qt).astype(jnp.int8), ((0, mp - m), (0, 0)))
    row_scale = jnp.broadcast_to(x_scale.astype(jnp.float32), (m, 1))
    row_scale = jnp.pad(row_scale, ((0, mp - m), (0, 0)))
    k, h = hv.codes.shape
    step = _step_rows(qt, config)
    bn = config.block_n
    weight_specs, weights, zero_const = _weight_operands(hv, bn, lambda i, j: j)
    out_spec = pl.BlockSpec((bm, bn), lambda i, j: (i, j))
    kernel = functools.partial(
        _w4a4_kernel,
        step=step,
        steps=k // step,
        per_group=hv.scale_even.shape[0] > 1,
        zero_const=zero_const,
    )
    even, odd = pl.pallas_call(
        kernel,
        out_shape=[jax.ShapeDtypeStruct((mp, h), jnp.float32)] * 2,
        grid=(mp // bm, h // bn),
        in_specs=[
            pl.BlockSpec((bm, k), lambda i, j: (i, 0)),
            pl.BlockSpec((bm, 1), lambda i, j: (i, 0)),
            *weight_specs,
        ],
        out_specs=[out_spec, out_spec],
        interpret=interpret,
        compiler_params=_triton_params(config),
        name="q4lab_w4a4",
    )(xc, row_scale, *weights)
    return halves.interleave(even, odd, hv.n)[:m]


def _triton_params(config: KernelConfig):
    from jax.experimental.pallas import triton as pl_triton

    return pl_triton.CompilerParams(num_warps=config.num_warps, num_stages=config.num_stages)
