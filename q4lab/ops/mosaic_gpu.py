"""Kernels for Pallas' Mosaic GPU backend (Hopper: TMA loads pipelined over K, ``wgmma``).

The Triton kernels of `q4lab.ops.pallas_gpu` leave loads and tensor-core scheduling to Triton:
on an H200 they stayed near 1.0x of XLA's bf16 dot for W4A16 at small M (the issue asks 3.0x)
and at 0.33-0.47x for W4A4 at M=4096 (asked: 1.5x; a plain Triton int8 GEMM reached 1.43x).
Mosaic GPU exposes what Hopper's fast GEMMs are built from: TMA copies into swizzled shared
memory, ``emit_pipeline`` keeping several steps of loads in flight, and ``wgmma``. Both kernels
read the codes K-major, as a `QTensor` of layout ``"kmajor"`` holds them (`q4lab.core.relayout`:
uint8 ``[N, K/2]``, read as int4 ``[N, K]`` holding ``u - 8``, ``u`` the unsigned code; the same
bytes as the rows layout), and never write an unpacked weight to global memory. Lay a weight out
once: one in the rows layout is re-laid on every call, a pass over the whole weight. The scales
are read as stored; asymmetric zeros are widened to one ``zero - 8`` per column (and group) per
call, a pass over ``G x N`` values.

W4A4 (`w4a4_mosaic`, per-channel weights: QuaRot's layout). 8-bit ``wgmma`` takes both operands
K-major; x ``[M, K]`` is. A step: x tile and code tile by TMA; codes to registers, int4 -> int8,
back to shared memory; ``acc += x @ codes.T`` in int32. The epilogue subtracts ``(zero - 8) *
sum x`` (asymmetric weights) and applies the weight scale, then the row scale, in the order of
`q4lab.ops.matmul`'s xla form: the result is that form's, bit for bit.

W4A16 (`w4a16_mosaic`, at most 64 rows of 16-bit x). ``wgmma``'s rows come in 64s, so the weight is
its left operand: ``y^T = W^T x^T``, x^T ``[K, M]`` padded to 16, 32 or 64 columns. A step is one
scale group (``block_k`` = the group size): codes unpacked to bfloat16 with integer ops (Mosaic's
int4 -> bfloat16 conversion: each nibble XOR-ed into 0x4308, a bfloat16 whose exponent makes its
mantissa an integer (the XOR also flips the nibble's sign bit), then 136 subtracted, as CUTLASS and
Marlin do; a convert per code to float32 was the alternative), ``u - zero`` subtracted (exact),
times the scale rounded once to x's dtype (the xla form's 16-bit weight: in x's dtype two to a
register when the scales are stored in it, the exact product rounded once; else in float32), then
``wgmma`` with float32 accumulation. One scale row: the codes (exact in 16 bits) go in and the scale
is applied after, as the xla form does. ``split_k`` programs share a column block; XLA adds them.

The unpacked tile reaches ``wgmma`` through shared memory by default. ``overlap=True`` keeps two
such tiles, so a step unpacks while the previous step's ``wgmma`` runs (that step's TMA operand
is released a step later); with one tile each step waits for its ``wgmma``. ``registers=True``
hands ``wgmma`` the tile in registers (Marlin's way: no store to shared memory and read back, a
fence less per step), each step waiting for its ``wgmma``. Which is fastest is for a GPU to say
(all are in the benchmark's tilings).

Checked on CPU through Mosaic GPU's interpreter (``interpret=True``) and lowered for CUDA from
the CPU (``tests/ops/test_mosaic_gpu.py``, which also reads the lowered kernels' unpacking and
``wgmma`` operands). The interpreter (jax 0.10.2) cannot read a transposed ``wgmma`` operand nor
one in registers, and takes no register layouts, so there (``hardware=False``) the W4A4 tile is
stored N-major and handed over as it is, the W4A16 tile always goes through shared memory, and
loads name no layout; everything else is the same code. Not yet run or timed on a GPU
(``benchmarks/gpu_check.sh``: step "tests" runs both against the xla forms, steps "mosaic" and
"w4a4" time them); `auto` runs them only on weights laid out K-major (`q4lab.ops.matmul`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from q4lab.core import QTensor, relayout
from q4lab.core.qtensor import KMAJOR_OFFSET
from q4lab.ops.halves import permuted_input


@dataclasses.dataclass(frozen=True, kw_only=True)
class MosaicConfig:
    """Tiling of the Mosaic GPU kernels; hashable (a static jit argument)."""

    block_m: int = 128  # W4A4: rows of x per program (a multiple of 64: one warpgroup's wgmma)
    block_n: int = 128  # output columns per program
    block_k: int = 128  # rows of the weight per pipeline step (one wgmma of that depth)
    stages: int = 4  # pipeline steps in flight (TMA loads ahead of the dots)
    split_k: int = 1  # W4A16: programs sharing a column block, each a slice of K
    # two unpacked tiles: step k+1 unpacks while step k's wgmma runs (its operands held a step
    # longer); one tile: each step waits for its wgmma
    overlap: bool = False
    # W4A16 on a GPU: wgmma takes the unpacked weight from registers (as Marlin feeds its MMAs),
    # with no tile stored to shared memory and read back; each step waits for its wgmma
    registers: bool = False

    def __post_init__(self):
        if self.registers and self.overlap:
            raise ValueError("overlap=True keeps unpacked tiles in shared memory; registers=True "
                             "keeps none: choose one")  # fmt: skip

    @property
    def slots(self) -> int:
        """Unpacked tiles in shared memory."""
        return 2 if self.overlap else 1

    @property
    def in_flight(self) -> int:
        """wgmma groups a step leaves running (``wgmma_wait``'s argument)."""
        return self.slots - 1


MOSAIC_DEFAULT = MosaicConfig()
# W4A16 streams the weight once: narrow column blocks (N=8192 still fills 132 SMs with split-K),
# deep pipelines (the bytes in flight hide the memory latency)
W4A16_MOSAIC_DEFAULT = MosaicConfig(block_n=64, block_k=128, stages=6, split_k=2)
W4A16_MAX_ROWS = 64  # rows of x the W4A16 kernel takes (wgmma's N: padded to 16, 32 or 64)


def unsupported(
    w: QTensor, m: int, config: MosaicConfig | None = None, *, w4a4: bool = True
) -> str | None:
    """Why the W4A4 (or, with ``w4a4=False``, W4A16) kernel cannot take this weight and M under
    ``config`` (default: the kernel's own); None when it can."""
    config = config or (MOSAIC_DEFAULT if w4a4 else W4A16_MOSAIC_DEFAULT)
    if m < 1:
        return f"M={m}: no rows to launch the kernel over"
    if not w.spec.nibbles:
        return f"{w.spec.bits}-bit codes are not nibbles; allowed widths: 4"
    groups = w.scale.shape[0]
    if w4a4 and groups != 1:
        return "group scales: the W4A4 kernel takes per-channel or per-tensor weights only"
    if not w4a4 and groups != 1 and w.k // groups != config.block_k:
        return f"group size {w.k // groups} != block_k={config.block_k} (one group a step)"
    if not w4a4 and m > W4A16_MAX_ROWS:
        return f"M={m} rows: the W4A16 kernel takes at most {W4A16_MAX_ROWS}"
    if w4a4 and config.registers:
        return "registers=True: W4A4's codes are wgmma's right operand, read from shared memory"
    if config.block_n % 64 or config.block_k % 64 or (w4a4 and config.block_m % 64):
        return f"{config} is not a multiple of 64 in every block"
    depth = config.block_k * (1 if w4a4 else config.split_k)
    if w.n % config.block_n or w.k % depth:
        return f"[K, N] = [{w.k}, {w.n}] is not a multiple of [{depth}, {config.block_n}]"
    return None


def on_hopper() -> bool:
    """True when the default device is a Hopper GPU (compute capability 9.x): ``wgmma`` is
    Hopper's."""
    return getattr(jax.devices()[0], "compute_capability", "").split(".")[0] == "9"


def _tiled(columns: int, bits: int = 8, swizzle: int | None = None) -> tuple:
    """The swizzled shared-memory layout of a tile whose rows hold ``columns`` elements (the
    widest swizzle the rows fill, unless named: wgmma wants both operands' swizzles equal)."""
    swizzle = swizzle or plgpu.find_swizzle(columns * bits)
    return (plgpu.TilingTransform((8, swizzle * 8 // bits)), plgpu.SwizzleTransform(swizzle))


def _load(ref, layout, hardware: bool):
    """A shared-memory array into registers: in ``layout`` on a GPU (8-bit and narrower types and
    broadcast vectors need one); the interpreter takes no layouts."""
    return plgpu.load(ref, (), layout=layout) if hardware else ref[...]


def _vector_scratch(blocks) -> tuple:
    """Shared memory and barriers for `_load_vectors`' blocks ``(gmem, start, size)``."""
    smem = [plgpu.SMEM((size,), gmem.dtype) for gmem, _, size in blocks]
    return smem, plgpu.Barrier(num_barriers=len(blocks))


def _load_vectors(blocks, smem, barriers, layouts, hardware: bool) -> list:
    """Each 1-D block ``gmem[start:start + size]`` copied (TMA) into shared memory, then loaded
    in its layout: per-row and per-column factors of an epilogue."""
    for t, (gmem, start, size) in enumerate(blocks):
        plgpu.copy_gmem_to_smem(gmem.at[pl.ds(start, size)], smem[t], barriers.at[t])
    for t in range(len(blocks)):
        plgpu.barrier_wait(barriers.at[t])
    return [_load(ref, layout, hardware) for ref, layout in zip(smem, layouts, strict=True)]


def _w4a4_kernel(x_gmem, codes_gmem, x_scale_gmem, w_scale_gmem, *zeros_and_out, config,
                 hardware):  # fmt: skip
    *zeros, out_gmem = zeros_and_out  # asymmetric codes only: sum x per row, zero - 8 per column
    bm, bn, bk = config.block_m, config.block_n, config.block_k
    i, j = lax.axis_index("m"), lax.axis_index("n")
    # the unpacked codes as wgmma's right operand: [bn, bk] read transposed (K-major, what the
    # hardware takes for 8 bits), or [bk, bn] (what the interpreter takes)
    tile = (bn, bk) if hardware else (bk, bn)
    rows, cols = plgpu.Layout.WGMMA.reduce(1), plgpu.Layout.WGMMA.reduce(0)
    # the epilogue's factors: [block, layout] of each vector, in the order of `vectors` below
    blocks = [(x_scale_gmem, i * bm, bm), (w_scale_gmem, j * bn, bn)]
    layouts = [rows, cols]
    if zeros:
        blocks += [(zeros[0], i * bm, bm), (zeros[1], j * bn, bn)]
        layouts += [rows, cols]

    def gemm(w_smem, vector_smem, barriers, acc):
        def step(index, x_smem, codes_smem):
            tile_smem = w_smem.at[index[0] % config.slots]
            # int4 -> int8: u - 8 (int4 loads only into the tensor-core fragment layouts)
            w = _load(codes_smem, plgpu.Layout.WGMMA_UPCAST_4X, hardware).astype(jnp.int8)
            tile_smem[...] = w if hardware else w.T
            plgpu.commit_smem()  # the store above, visible to the tensor cores
            right = plgpu.transpose_ref(tile_smem, (1, 0)) if hardware else tile_smem
            plgpu.wgmma(acc, x_smem, right)
            plgpu.wgmma_wait(config.in_flight)  # a tile is rewritten once its wgmma is done

        x_spec = plgpu.BlockSpec(
            (bm, bk), lambda k: (i, k), transforms=_tiled(bk), delay_release=config.in_flight
        )
        plgpu.emit_pipeline(
            step,
            grid=(x_gmem.shape[1] // bk,),
            in_specs=[
                x_spec,
                plgpu.BlockSpec((bn, bk), lambda k: (j, k), transforms=_tiled(bk, bits=4)),
            ],
            max_concurrent_steps=config.stages,
        )(x_gmem, codes_gmem)
        plgpu.wgmma_wait(0)

        x_scale, w_scale, *x_sum_and_zero = _load_vectors(
            blocks, vector_smem, barriers, layouts, hardware
        )
        sums = acc[...]  # int32 [bm, bn]
        if x_sum_and_zero:  # sum x (u - 8) - (zero - 8) sum x = sum x (u - zero), exactly
            x_sum, zero = x_sum_and_zero
            sums -= lax.broadcast_in_dim(x_sum, (bm, bn), [0]) * lax.broadcast_in_dim(
                zero, (bm, bn), [1]
            )
        y = sums.astype(jnp.float32) * lax.broadcast_in_dim(w_scale, (bm, bn), [1])
        out_gmem[pl.ds(i * bm, bm), pl.ds(j * bn, bn)] = y * lax.broadcast_in_dim(
            x_scale, (bm, bn), [0]
        )

    def scoped(w_smem, vector_smem, barriers):  # registers get a scope of their own
        gemm_ = functools.partial(gemm, w_smem, vector_smem, barriers)
        pl.run_scoped(gemm_, plgpu.ACC((bm, bn), jnp.int32))

    tiles = plgpu.SMEM((config.slots, *tile), jnp.int8, transforms=_tiled(tile[1]))
    pl.run_scoped(scoped, tiles, *_vector_scratch(blocks))


@functools.partial(jax.jit, static_argnames=("config", "interpret"))
def w4a4_mosaic(
    xc: jax.Array,
    x_scale: jax.Array,
    w: QTensor,
    *,
    config: MosaicConfig = MOSAIC_DEFAULT,
    interpret: bool = False,
) -> jax.Array:
    """W4A4: centered int8 codes ``xc[M, K]`` (logical order) with row scales ``x_scale[M or 1,
    1]`` times a per-channel 4-bit weight (best laid out ``"kmajor"`` once); float32
    ``[M, N]`` (`q4lab.ops.matmul.int_matmul`)."""
    m = xc.shape[0]
    reason = unsupported(w, m, config)
    if reason:
        raise ValueError(f"w4a4_mosaic cannot run this weight: {reason}")
    w = relayout(w, "kmajor")
    bm = config.block_m
    mp = -(-m // bm) * bm
    xc = jnp.pad(permuted_input(xc, w).astype(jnp.int8), ((0, mp - m), (0, 0)))
    x_scale = jnp.broadcast_to(x_scale.astype(jnp.float32), (m, 1))[:, 0]
    x_scale = jnp.pad(x_scale, (0, mp - m))
    zeros = []  # symmetric codes need no correction: nothing to copy
    if w.zero is not None:
        zeros = [jnp.sum(xc.astype(jnp.int32), axis=1), _column_zeros(w, jnp.int32)[0]]
    kernel = functools.partial(_w4a4_kernel, config=config, hardware=not interpret)
    y = plgpu.kernel(
        kernel,
        out_type=jax.ShapeDtypeStruct((mp, w.n), jnp.float32),
        grid=(mp // bm, w.n // config.block_n),
        grid_names=("m", "n"),
        interpret=_interpreter() if interpret else None,
    )(xc, _int4(w), x_scale, _column_scales(w)[0].astype(jnp.float32), *zeros)
    return y[:m]


def _w4a16_kernel(xt_gmem, codes_gmem, scale_gmem, *zero_and_out, config, hardware):
    *zero_gmem, out_gmem = zero_and_out  # zeros: asymmetric codes only
    bn, bk, mp = config.block_n, config.block_k, xt_gmem.shape[1]
    j, part = lax.axis_index("n"), lax.axis_index("k")
    steps = xt_gmem.shape[0] // bk // config.split_k  # this program's slice of K
    first = part * steps
    per_group = scale_gmem.shape[0] > codes_gmem.shape[0]  # a scale row per step, or one row
    column_blocks = codes_gmem.shape[0] // bn
    rows = plgpu.Layout.WGMMA.reduce(1)  # a factor per row of W^T (per output column)
    swizzle = plgpu.find_swizzle(mp * 16)  # x^T's rows are narrow: W^T's tile follows them

    def vector(k):  # this column block's scales / zeros at step k: [G * N] flat, row g = step
        return (((first + k) * column_blocks if per_group else 0) + j,)

    def column(ref, dtype):  # a [bn] scale or zero block in dtype, broadcast along the tile's K
        return lax.broadcast_in_dim(_load(ref, rows, hardware).astype(dtype), (bn, bk), [0])

    def dequantized(w, scale_ref):
        """``u - zero`` (exact, bfloat16) times the step's scales, rounded once to x's dtype:
        the xla form's 16-bit weight. The product of a 5-bit integer and a 16-bit scale is exact
        in float32, and a 16-bit multiply rounds the exact product once, so with scales stored
        in x's dtype the multiply runs there, two to a register."""
        dtype = xt_gmem.dtype
        if scale_ref is None:  # one scale row: the codes themselves, the scale after the dot
            return _exactly(w, dtype)
        if scale_ref.dtype == dtype:
            return _exactly(w, dtype) * column(scale_ref, dtype)
        return (w.astype(jnp.float32) * column(scale_ref, jnp.float32)).astype(dtype)

    # per step: the zeros (asymmetric) and, with group scales, the scales
    stepped = zero_gmem + [scale_gmem] * per_group

    def gemm(a_smem, vector_smem, barriers, acc):
        def step(index, xt_smem, codes_smem, *vector_refs):
            c = _load(codes_smem, plgpu.Layout.WGMMA_UPCAST_4X, hardware)  # int4: u - 8
            if hardware:  # into the layout of a 16-bit wgmma operand, then widened below
                c = plgpu.layout_cast(c, plgpu.Layout.WGMMA)
            # exact (|u - 8| <= 8); Mosaic unpacks int4 to bfloat16 with integer ops (the nibble
            # XOR-ed into a bfloat16's mantissa, the bias subtracted), where float32 takes a
            # convert per code
            w = c.astype(jnp.bfloat16)
            if zero_gmem:  # u - 8 - (zero - 8): exact in bfloat16 (|u - zero| <= 15)
                w = w - column(vector_refs[0], jnp.bfloat16)
            w = dequantized(w, vector_refs[-1] if per_group else None)
            if a_smem is None:  # [bn, bk] @ [bk, mp]: W^T x^T, W^T from registers
                plgpu.wgmma(acc, w, xt_smem)
                plgpu.wgmma_wait(0)  # the next step's tile takes these registers
                return
            tile_smem = a_smem.at[index[0] % config.slots]
            tile_smem[...] = w
            plgpu.commit_smem()  # the store above, visible to the tensor cores
            plgpu.wgmma(acc, tile_smem, xt_smem)  # [bn, bk] @ [bk, mp]: W^T x^T
            plgpu.wgmma_wait(config.in_flight)  # a tile is rewritten once its wgmma is done

        plgpu.emit_pipeline(
            step,
            grid=(steps,),
            in_specs=[
                plgpu.BlockSpec(
                    (bk, mp),
                    lambda k: (first + k, 0),
                    transforms=_tiled(mp, 16, swizzle),
                    delay_release=config.in_flight,
                ),
                plgpu.BlockSpec((bn, bk), lambda k: (j, first + k), transforms=_tiled(bk, 4)),
            ]
            + [plgpu.BlockSpec((bn,), vector)] * len(stepped),
            max_concurrent_steps=config.stages,
        )(xt_gmem, codes_gmem, *stepped)
        plgpu.wgmma_wait(0)
        y = acc[...]
        if not per_group:  # one scale row: codes exact in 16 bits, the scale after the dot (xla)
            (scale,) = _load_vectors(blocks, vector_smem, barriers, (rows,), hardware)
            y = y * lax.broadcast_in_dim(scale.astype(jnp.float32), (bn, mp), [0])
        out_gmem[part, pl.ds(j * bn, bn), :] = y

    blocks = [(scale_gmem, j * bn, bn)]

    def scoped(vector_smem, barriers, a_smem=None):  # registers get a scope of their own
        gemm_ = functools.partial(gemm, a_smem, vector_smem, barriers)
        pl.run_scoped(gemm_, plgpu.ACC((bn, mp), jnp.float32))

    tiles = []  # the unpacked tiles in shared memory, unless wgmma reads registers
    if not (config.registers and hardware):  # (the interpreter takes no register operand)
        tiles = [
            plgpu.SMEM((config.slots, bn, bk), xt_gmem.dtype, transforms=_tiled(bk, 16, swizzle))
        ]
    pl.run_scoped(scoped, *_vector_scratch(blocks), *tiles)


@functools.partial(jax.jit, static_argnames=("config", "interpret"))
def w4a16_mosaic(
    x: jax.Array,
    w: QTensor,
    *,
    config: MosaicConfig = W4A16_MOSAIC_DEFAULT,
    interpret: bool = False,
) -> jax.Array:
    """W4A16 for a few rows (``M <= 64``) of 16-bit ``x[M, K]`` times a 4-bit weight (best laid
    out ``"kmajor"`` once), as ``(W^T x^T)^T``: the weight is wgmma's left operand, unpacked
    and scaled one group a step, into shared memory or (``registers=True``) registers (float32
    ``[M, N]``). Rows of x are wgmma's N, padded to 16, 32 or 64 (the widths of a 32-, 64- or
    128-byte swizzle)."""
    m = x.shape[0]
    reason = unsupported(w, m, config, w4a4=False)
    if reason:
        raise ValueError(f"w4a16_mosaic cannot run this weight: {reason}")
    if x.dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(f"w4a16_mosaic multiplies 16-bit x (bfloat16, float16), got {x.dtype}")
    w = relayout(w, "kmajor")
    mp = max(16, 1 << (m - 1).bit_length())  # 16, 32 or 64 x^T columns: a swizzle's width
    xt = jnp.pad(permuted_input(x, w), ((0, mp - m), (0, 0))).T  # [K, Mp]
    scale = _column_scales(w)
    zeros = [] if w.zero is None else [_column_zeros(w, jnp.bfloat16).reshape(-1)]
    kernel = functools.partial(_w4a16_kernel, config=config, hardware=not interpret)
    parts = plgpu.kernel(
        kernel,
        out_type=jax.ShapeDtypeStruct((config.split_k, w.n, mp), jnp.float32),
        grid=(w.n // config.block_n, config.split_k),
        grid_names=("n", "k"),
        interpret=_interpreter() if interpret else None,
    )(xt, _int4(w), scale.reshape(-1), *zeros)
    return jnp.sum(parts, axis=0).T[:m]


def _exactly(w: jax.Array, dtype) -> jax.Array:
    """Small integers held in bfloat16 as ``dtype`` (exact: through float32 unless bfloat16)."""
    return w if dtype == jnp.bfloat16 else w.astype(jnp.float32).astype(dtype)


def _column_scales(w: QTensor) -> jax.Array:
    """The scales ``[G, N]`` as stored; a per-tensor scale repeated per column."""
    return jnp.broadcast_to(w.scale, (w.scale.shape[0], w.n))


def _column_zeros(w: QTensor, dtype) -> jax.Array:
    """``zero - 8`` ``[G, N]`` in ``dtype``: what the kernels subtract from codes read as
    ``u - 8``."""
    zero = w.int_zero() - KMAJOR_OFFSET
    return jnp.broadcast_to(zero, (w.scale.shape[0], w.n)).astype(dtype)


def _int4(w: QTensor) -> jax.Array:
    """The K-major codes as the kernels read them, int4 ``[N, K]`` (XLA reads the low nibble
    first). Whether XLA holds this bit cast without a copy on a GPU is for a device run to show.
    The barrier keeps XLA from folding the cast of constant codes, which it folds wrongly
    (`q4lab.core.packing.unpack`)."""
    codes = lax.optimization_barrier(w.codes)
    return lax.bitcast_convert_type(codes, jnp.int4).reshape(w.n, w.k)


def _interpreter():
    """Mosaic GPU's CPU interpreter (simulated shared memory, barriers and wgmma)."""
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams

    return InterpretGPUParams()
