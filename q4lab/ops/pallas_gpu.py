"""Pallas (Triton backend) kernels for packed 4-bit weights on NVIDIA GPUs (4-bit only: other
widths are packed otherwise, see `unsupported`).

A 4-bit `QTensor` stores byte ``[k, j]`` = codes ``[k, 2j]`` (low nibble) and ``[k, 2j + 1]``
(high nibble). The kernels read those bytes as they are, either one at a time (``load="bytes"``)
or four at a time as a little-endian 32-bit word (``load="words"``: nibble ``i`` of word ``w`` is
column ``8w + i``); the same memory either way. Each nibble position ``i`` of a loaded element
is a *phase*: the output columns ``i, i + P, i + 2P, ...`` (P = 2 or 8 phases). A program
multiplies x by every phase of its block separately and the ``[M, N]`` result is interleaved at
the end, so no unpacked weight is ever written to memory (the XLA forms do, and ran at 0.3-0.5x
of the bf16 dot on an H200: ``benchmarks/RESULTS.md``).

Unpacking is integer logic only: a nibble ``u`` ORed into the top mantissa bits of 1.0 is the
float ``1 + u/16`` exactly (one bit cast, no int-to-float conversion); the dot gives
``sum x (1 + u/16)``, and ``sum x (u - zero) = 16 * that - (16 + zero) * sum x``. Symmetric codes
are two's-complement nibbles, xor-ed with 0x8 per nibble into ``u = code + 8`` (zero 8). The
subtraction cancels: the float32 error grows with ``sum |x|`` rather than ``|y|``, about 2.5e-5
of max |y| for float32 inputs whose mean is 1-300 standard deviations (g128, K=1024, through the
interpreter; 3e-6 for zero-mean ones; the test
bounds it), far below bfloat16's own rounding of x. Subtracting ``1 + zero/16`` in x's dtype
before the dot would be exact, at one more operation per weight (not timed).

W4A16  grid ``(M / block_m, columns / block, split_k)``: a program walks its share of K one
       scale group at a time (``block_k`` rows for per-channel weights), one dot per phase per
       step (x's dtype, float32 accumulation), the group's scales applied to the partial
       products. ``split_k`` partial sums are added by XLA. Rows are tiled in blocks of at most
       ``block_m`` (a power of two >= 16: Triton's tensors have power-of-two shapes and its
       smallest dot is 16): an untiled 512-row block (the harness' evaluation batches) spilled
       its accumulators so badly that one tiny layer took minutes to compile on an H200.
       ``compute="fma"`` takes one row of x as a column and multiplies on the CUDA cores.
W4A4   grid ``(M / block_m, columns / block)``: int8 activation codes times the nibbles as int8
       (0..15), int32 accumulation within a group less ``zero * sum x``, then the group scale in
       float32; the row scales of the activations at the end.

``interpret=True`` runs the same kernels through Pallas' interpreter on any backend: that is how
the tests check them on CPU. Speed is measured only on a GPU, by ``benchmarks/bench_ops.py``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from q4lab.core import QTensor
from q4lab.ops import halves

_MIN_DOT = 16  # Triton's smallest dot dimension
COMPUTE = ("dot", "fma")
LOAD = ("bytes", "words")
_PHASES = {"bytes": 2, "words": 8}
SYMMETRIC_ZERO = int(halves.SYMMETRIC_ZERO)  # two's-complement nibble xor 0x8 = code + 8


@dataclasses.dataclass(frozen=True, kw_only=True)
class KernelConfig:
    """Tiling of the kernels; hashable (a static jit argument)."""

    block_n: int = 128  # bytes of a code row per program (2 output columns each)
    block_k: int = 128  # rows per step for per-channel weights (per-group: the group size)
    split_k: int = 4  # W4A16: programs sharing one column block, each a slice of K
    block_m: int = 64  # rows of x per program, at most (bounds the accumulator registers)
    num_warps: int = 4
    num_stages: int = 3
    compute: str = "dot"  # W4A16: "dot" on tensor cores; "fma" (one row of x) on CUDA cores
    load: str = "bytes"  # codes read as "bytes" (2 nibbles) or 32-bit "words" (8 nibbles)

    def __post_init__(self):
        for field, allowed in (("compute", COMPUTE), ("load", LOAD)):
            if getattr(self, field) not in allowed:
                raise ValueError(
                    f"{field}={getattr(self, field)!r} is unknown; allowed: {', '.join(allowed)}"
                )


# The tilings of the `benchmarks/bench_ops.py --check --tune` grids that led on an H200
# (RESULTS.md, 2026-11-28; the same tiling moved by 10-20 % between runs, and times under 0.3 ms
# carried ~0.1 ms of dispatch). W4A16, 128 bytes of a code row by split-K 8: for one row of x 4
# stages (8192x28672: 0.98x and 1.04x of bf16 in two runs against 0.89x and 0.75x with 3; at
# 8192x8192 3 stages led, 1.14x to 1.07x), else 3. W4A4: 4 warps for small M; above 128 rows,
# 256-row tiles of 8 warps (8192x8192, M=4096, g128: 2.4 ms; 128-row tiles, 4 warps: 3.1 ms).
W4A16_DEFAULT = KernelConfig(block_n=128, split_k=8)
W4A16_ONE_ROW = KernelConfig(block_n=128, split_k=8, num_stages=4)
W4A4_DEFAULT = KernelConfig(block_n=64, block_m=128)
W4A4_LARGE_M = KernelConfig(block_n=64, block_m=256, num_warps=8)


def default_config(m: int, *, w4a4: bool = False) -> KernelConfig:
    """The tiling a kernel runs for M rows of x when none is given."""
    if not w4a4:
        return W4A16_ONE_ROW if m == 1 else W4A16_DEFAULT
    return W4A4_LARGE_M if m > W4A4_DEFAULT.block_m else W4A4_DEFAULT


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
    config = config or default_config(m, w4a4=w4a4)
    if m < 1:  # a launch grid of no row blocks is not a valid CUDA launch
        return f"M={m}: no rows to launch the kernel over"
    if not qt.spec.nibbles:
        return f"{qt.spec.bits}-bit codes are not nibbles; allowed widths: 4"
    if qt.layout != "rows":
        return f"layout={qt.layout!r}: these kernels read codes packed along N; allowed: 'rows'"
    if config.compute == "fma" and (w4a4 or m != 1):
        return f"compute='fma' takes one row of x (W4A16), got M={m}"
    h = qt.codes.shape[1]
    if h % config.block_n:
        return f"ceil(N/2)={h} is not a multiple of block_n={config.block_n}"
    if config.load == "words" and (qt.n % 8 or config.block_n % (4 * _MIN_DOT)):
        return f"load='words' needs N % 8 == 0 and block_n % 64 == 0 (N={qt.n})"
    step = _step_rows(qt, config)
    if not _pow2(step) or step < (32 if w4a4 else _MIN_DOT):
        return f"{step} rows per scale step is not a power of two >= {_MIN_DOT} (int8: 32)"
    if qt.k % step:
        return f"K={qt.k} is not a multiple of {step}"
    return None


def _scale_row(ref, row):
    return ref[pl.ds(row, 1), :].astype(jnp.float32)


# Bits of 1.0, mantissa width and same-width unsigned int of each dot dtype.
_ONE_BITS = {
    jnp.dtype(jnp.bfloat16): (0x3F80, 7, jnp.uint16),
    jnp.dtype(jnp.float16): (0x3C00, 10, jnp.uint16),
    jnp.dtype(jnp.float32): (0x3F800000, 23, jnp.uint32),
}


def _one_plus_sixteenths(w, i: int, dtype):
    """Nibble ``i`` (bits 4i..4i+3) of unsigned ints ``w`` as ``1 + u/16`` in ``dtype``, exactly:
    ``u`` moved into the top four mantissa bits of 1.0, then a bit cast."""
    one, mantissa, same_width = _ONE_BITS[jnp.dtype(dtype)]
    w = w.astype(jnp.uint32)
    shift = mantissa - 4 - 4 * i
    moved = w << shift if shift >= 0 else w >> -shift
    bits = (moved & jnp.uint32(0xF << (mantissa - 4))) | jnp.uint32(one)
    return lax.bitcast_convert_type(bits.astype(same_width), dtype)


def _codes(qt: QTensor, load: str) -> jax.Array:
    """The stored bytes ``[K, h]``, or the same memory as uint32 ``[K, h/4]``."""
    if load == "bytes":
        return qt.codes
    k, h = qt.codes.shape
    return lax.bitcast_convert_type(qt.codes.reshape(k, h // 4, 4), jnp.uint32)


def _phase_block(config: KernelConfig) -> tuple[int, int]:
    """Phases of a loaded element, and elements of a code row per program."""
    phases = _PHASES[config.load]
    return phases, config.block_n * 2 // phases


def _weight_operands(qt: QTensor, config: KernelConfig, column):
    """BlockSpecs and arrays of the weight operands, and the constant zero (None: stored zero
    points): codes ``[K, block]`` and a scale and a zero grid ``[G, block]`` per phase for
    column block ``column(*grid_ids)``. Symmetric codes' zero slots get the scales as unread
    placeholders."""
    phases, block = _phase_block(config)
    codes = _codes(qt, config.load)
    scales = halves.phases(qt.scale, qt.n, phases)
    if qt.zero is None:
        zeros, zero_const = scales, SYMMETRIC_ZERO
    else:
        zeros, zero_const = halves.phases(qt.int_zero(), qt.n, phases), None
    grid = pl.BlockSpec((scales[0].shape[0], block), lambda *ids: (0, column(*ids)))
    specs = [pl.BlockSpec((qt.k, block), lambda *ids: (0, column(*ids)))]
    specs += [grid] * (2 * phases)
    return specs, (codes, *scales, *zeros), zero_const


def _w4a16_kernel(
    x_ref, codes_ref, *refs, step, steps, per_group, zero_const, precision, fma, phases
):
    scale_refs, zero_refs, out_refs = refs[:phases], refs[phases : 2 * phases], refs[2 * phases :]
    part = pl.program_id(2)
    if fma:  # one row of x, as a column [K, 1]: products and sums over K on the CUDA cores

        def contract(xb, w):
            return jnp.sum(xb * w, axis=0, keepdims=True)

        def block(k0):
            return x_ref[pl.ds(k0, step), :].astype(jnp.float32)

        def total(xb):
            return jnp.sum(xb, axis=0, keepdims=True)
    else:  # rows of x [bm, K]: tensor-core dots
        contract = functools.partial(
            jnp.dot, preferred_element_type=jnp.float32, precision=precision
        )

        def block(k0):
            return x_ref[:, pl.ds(k0, step)]

        def total(xb):
            return jnp.sum(xb.astype(jnp.float32), axis=1, keepdims=True)

    def body(t, acc):
        k0 = (part * steps + t) * step
        g = k0 // step if per_group else 0
        xb = block(k0)
        w = halves.offset_codes(codes_ref[pl.ds(k0, step), :], zero_const is not None)
        x_sum = total(xb)
        out = []
        for i in range(phases):
            zero = zero_const if zero_const is not None else _scale_row(zero_refs[i], g)
            # sum x (u - z) = 16 sum x (1 + u/16) - (16 + z) sum x
            p = 16 * contract(xb, _one_plus_sixteenths(w, i, xb.dtype)) - (16 + zero) * x_sum
            out.append(acc[i] + (p * _scale_row(scale_refs[i], g) if per_group else p))
        return tuple(out)

    acc_rows = 1 if fma else x_ref.shape[0]
    zeros = jnp.zeros((acc_rows, out_refs[0].shape[-1]), jnp.float32)
    acc = lax.fori_loop(0, steps, body, (zeros,) * phases)
    for i, (y, out_ref) in enumerate(zip(acc, out_refs, strict=True)):
        if not per_group:
            y = y * _scale_row(scale_refs[i], 0)
        if out_ref.shape[-2] < acc_rows:  # one row of x padded to a dot's 16: the others are zero
            y = jnp.sum(y, axis=0, keepdims=True)
        out_ref[...] = y


@functools.partial(jax.jit, static_argnames=("config", "interpret"))
def w4a16_pallas(
    x: jax.Array,
    qt: QTensor,
    *,
    config: KernelConfig | None = None,
    interpret: bool = False,
) -> jax.Array:
    """``x[M, K] @ dequantize(qt)`` (float32 ``[M, N]``) by the W4A16 kernel; see `unsupported`;
    ``config``: `default_config`.

    Dots run in x's dtype when it is bfloat16/float16 (the codes are exact in it), else float32;
    ``compute="fma"`` multiplies in float32 whatever x's dtype.
    """
    m = x.shape[0]
    config = config or default_config(m)
    reason = unsupported(qt, m, config)
    if reason:
        raise ValueError(f"w4a16_pallas cannot run this weight: {reason}")
    fma = config.compute == "fma"
    dtype = x.dtype if x.dtype in (jnp.bfloat16, jnp.float16) and not fma else jnp.float32
    bm = 1 if fma else _rows_tile(m, config.block_m)
    mp = _round_up(m, bm)
    x = jnp.pad(halves.permuted_input(x, qt).astype(dtype), ((0, mp - m), (0, 0)))
    k = qt.k
    x_spec = pl.BlockSpec((bm, k), lambda i, j, s: (i, 0))
    if fma:
        x, x_spec = x.T, pl.BlockSpec((k, 1), lambda i, j, s: (0, 0))
    step = _step_rows(qt, config)
    split = max(s for s in range(1, config.split_k + 1) if (k // step) % s == 0)
    weight_specs, weights, zero_const = _weight_operands(qt, config, lambda i, j, s: j)
    phases, block = _phase_block(config)
    columns = weights[0].shape[1]
    kernel = functools.partial(
        _w4a16_kernel,
        step=step,
        steps=k // step // split,
        per_group=qt.scale.shape[0] > 1,
        zero_const=zero_const,
        precision=lax.Precision.HIGHEST if dtype == jnp.float32 else None,
        fma=fma,
        phases=phases,
    )
    out_rows = 1 if m == 1 else bm  # one row: write only it, not the 15 of padding
    out_spec = pl.BlockSpec((None, out_rows, block), lambda i, j, s: (s, i, j))
    outputs = pl.pallas_call(
        kernel,
        out_shape=[jax.ShapeDtypeStruct((split, mp // bm * out_rows, columns), jnp.float32)]
        * phases,
        grid=(mp // bm, columns // block, split),
        in_specs=[x_spec, *weight_specs],
        out_specs=[out_spec] * phases,
        interpret=interpret,
        compiler_params=_triton_params(config),
        name="q4lab_w4a16",
    )(x, *weights)
    return halves.interleave(*(y.sum(0) for y in outputs), n=qt.n)[:m]


def _w4a4_step(p, x_sum, g, scale_ref, zero_ref, *, per_group, zero_const):
    """A step's int32 sums ``sum xc u`` less ``zero * sum xc`` (exact); with group scales, times
    the group's scale in float32 (per-channel sums stay int32 over all of K)."""
    if zero_const is not None:
        p = p - zero_const * x_sum
    else:
        p = p - x_sum * zero_ref[pl.ds(g, 1), :].astype(jnp.int32)
    return p.astype(jnp.float32) * _scale_row(scale_ref, g) if per_group else p


def _w4a4_output(acc, scale_ref, row_scale, *, per_group):
    """The accumulated sums times the per-channel scale (if not applied per group) and the
    activations' row scales."""
    y = acc.astype(jnp.float32)
    if not per_group:
        y = y * _scale_row(scale_ref, 0)
    return y * row_scale


def _padded_rows(xc: jax.Array, x_scale: jax.Array, qt: QTensor, bm: int):
    """W4A4 inputs in the weight's row order, int8, padded to a multiple of ``bm`` rows, and
    their float32 row scales ``[Mp, 1]``; and Mp."""
    m = xc.shape[0]
    mp = _round_up(m, bm)
    xc = jnp.pad(halves.permuted_input(xc, qt).astype(jnp.int8), ((0, mp - m), (0, 0)))
    row_scale = jnp.broadcast_to(x_scale.astype(jnp.float32), (m, 1))
    return xc, jnp.pad(row_scale, ((0, mp - m), (0, 0))), mp


def _w4a4_kernel(x_ref, xs_ref, codes_ref, *refs, step, steps, per_group, zero_const, phases):
    scale_refs, zero_refs, out_refs = refs[:phases], refs[phases : 2 * phases], refs[2 * phases :]

    def body(t, acc):
        k0 = t * step
        g = t if per_group else 0
        xb = x_ref[:, pl.ds(k0, step)]
        w = halves.offset_codes(codes_ref[pl.ds(k0, step), :], zero_const is not None)
        x_sum = jnp.sum(xb.astype(jnp.int32), axis=1, keepdims=True)
        out = []
        for i in range(phases):
            # the nibbles stay small ints (0..15 fit int8); the zero comes off the int32 sums
            p = jnp.dot(xb, halves.nibble(w, i).astype(jnp.int8), preferred_element_type=jnp.int32)
            p = _w4a4_step(
                p, x_sum, g, scale_refs[i], zero_refs[i], per_group=per_group, zero_const=zero_const
            )
            out.append(acc[i] + p)
        return tuple(out)

    zeros = jnp.zeros(out_refs[0].shape, jnp.float32 if per_group else jnp.int32)
    acc = lax.fori_loop(0, steps, body, (zeros,) * phases)
    row_scale = xs_ref[...].astype(jnp.float32)
    for y, scale_ref, out_ref in zip(acc, scale_refs, out_refs, strict=True):
        out_ref[...] = _w4a4_output(y, scale_ref, row_scale, per_group=per_group)


@functools.partial(jax.jit, static_argnames=("config", "interpret"))
def w4a4_pallas(
    xc: jax.Array,
    x_scale: jax.Array,
    qt: QTensor,
    *,
    config: KernelConfig | None = None,
    interpret: bool = False,
) -> jax.Array:
    """W4A4 by the int8 kernel: centered int8 codes ``xc[M, K]`` (logical order) with row scales
    ``x_scale[M or 1, 1]`` times the weight; float32 ``[M, N]``. ``config``: `default_config`."""
    m = xc.shape[0]
    config = config or default_config(m, w4a4=True)
    reason = unsupported(qt, m, config, w4a4=True)
    if reason:
        raise ValueError(f"w4a4_pallas cannot run this weight: {reason}")
    bm = _rows_tile(m, config.block_m)
    xc, row_scale, mp = _padded_rows(xc, x_scale, qt, bm)
    k = qt.k
    step = _step_rows(qt, config)
    weight_specs, weights, zero_const = _weight_operands(qt, config, lambda i, j: j)
    phases, block = _phase_block(config)
    columns = weights[0].shape[1]
    kernel = functools.partial(
        _w4a4_kernel,
        step=step,
        steps=k // step,
        per_group=qt.scale.shape[0] > 1,
        zero_const=zero_const,
        phases=phases,
    )
    outputs = pl.pallas_call(
        kernel,
        out_shape=[jax.ShapeDtypeStruct((mp, columns), jnp.float32)] * phases,
        grid=(mp // bm, columns // block),
        in_specs=[
            pl.BlockSpec((bm, k), lambda i, j: (i, 0)),
            pl.BlockSpec((bm, 1), lambda i, j: (i, 0)),
            *weight_specs,
        ],
        out_specs=[pl.BlockSpec((bm, block), lambda i, j: (i, j))] * phases,
        interpret=interpret,
        compiler_params=_triton_params(config),
        name="q4lab_w4a4",
    )(xc, row_scale, *weights)
    return halves.interleave(*outputs, n=qt.n)[:m]


def _triton_params(config: KernelConfig):
    from jax.experimental.pallas import triton as pl_triton

    return pl_triton.CompilerParams(num_warps=config.num_warps, num_stages=config.num_stages)
