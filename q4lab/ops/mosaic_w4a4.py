"""W4A4 with per-channel weights on Hopper's 8-bit tensor cores, written for Pallas' Mosaic GPU
backend (TMA loads, ``wgmma``): the QuaRot layout, one int8 GEMM with both scales in the epilogue.

The Triton kernels of `q4lab.ops.pallas_gpu` leave tensor-core scheduling to Triton; a plain
int8 GEMM in Triton reached 1.43x of XLA's bf16 dot on an H200 and the fused W4A4 kernels
0.33-0.47x (RESULTS.md, 2026-11-28), short of the 1.5x asked for. Mosaic GPU exposes the
instructions Hopper's fast GEMMs are built from: TMA copies into swizzled shared memory,
pipelined over K (``emit_pipeline``), and ``wgmma`` reading both operands from shared memory.

Layout: 8-bit ``wgmma`` takes both operands K-major, so the codes are read packed along K
(`signed_codes`: the bytes of `pallas_kmajor.kmajor_codes`, two rows of one column each, read as
int4 ``[N, K]`` holding ``u - 8``); x ``[M, K]`` is K-major as it is. One pipeline step:

    TMA: x tile [block_m, block_k] and code tile [block_n, block_k] (int4) -> shared memory
    code tile -> registers (int4 -> int8) -> shared memory -> acc += x @ codes.T (int32)

so no unpacked weight is written to global memory. The epilogue subtracts ``(zero - 8) * sum x``
(asymmetric weights) from the int32 sums and applies the weight scale, then the row scale, in the
order of `q4lab.ops.matmul`'s xla form: the result is that form's, bit for bit.

A first form: each step waits for its ``wgmma`` before the next unpack overwrites the one int8
tile (double-buffering it, or a producer warpgroup, would overlap the two).

Checked on CPU through Mosaic GPU's interpreter (``interpret=True``) and lowered for CUDA from
the CPU. The interpreter (jax 0.10.2) cannot read a transposed ``wgmma`` operand and takes no
register layouts, so there the unpacked tile is stored N-major and handed over as it is, and the
int4 tile and the epilogue's vectors are loaded without the tensor-core fragment layouts the
hardware path names; everything else is the same code. Not yet run or timed on a GPU
(``benchmarks/gpu_check.sh``: step "tests" runs it against the xla form, step "w4a4" times it);
`auto` does not run it.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from q4lab.core import QTensor
from q4lab.ops import halves
from q4lab.ops.pallas_gpu import SYMMETRIC_ZERO
from q4lab.ops.pallas_kmajor import kmajor_codes


@dataclasses.dataclass(frozen=True, kw_only=True)
class MosaicConfig:
    """Tiling of the Mosaic GPU W4A4 kernel; hashable (a static jit argument)."""

    block_m: int = 128  # rows of x per program (a multiple of 64: one warpgroup's wgmma)
    block_n: int = 128  # output columns per program
    block_k: int = 128  # rows of the weight per pipeline step (one wgmma of that depth)
    stages: int = 4  # pipeline steps in flight (TMA loads ahead of the dots)


MOSAIC_DEFAULT = MosaicConfig()


def unsupported(qt: QTensor, m: int, config: MosaicConfig = MOSAIC_DEFAULT) -> str | None:
    """Why the kernel cannot take this weight and M under ``config``; None when it can."""
    if not qt.spec.nibbles:
        return f"{qt.spec.bits}-bit codes are not nibbles; allowed widths: 4"
    if qt.scale.shape[0] != 1:
        return "group scales: the kernel takes per-channel or per-tensor weights only"
    if config.block_m % 64 or config.block_n % 64 or config.block_k % 64:
        return f"{config} is not a multiple of 64 in every block"
    if qt.n % config.block_n or qt.k % config.block_k:
        return (
            f"[K, N] = [{qt.k}, {qt.n}] is not a multiple of [{config.block_k}, {config.block_n}]"
        )
    return None


def _tiled(columns: int, bits: int = 8) -> tuple:
    """The swizzled shared-memory layout of a tile whose rows hold ``columns`` elements."""
    swizzle = plgpu.find_swizzle(columns * bits)
    return (plgpu.TilingTransform((8, swizzle * 8 // bits)), plgpu.SwizzleTransform(swizzle))


def _kernel(x_gmem, codes_gmem, x_sum_gmem, x_scale_gmem, zero_gmem, w_scale_gmem,
            out_gmem, *, config, k_major, asymmetric):  # fmt: skip
    bm, bn, bk = config.block_m, config.block_n, config.block_k
    i, j = lax.axis_index("m"), lax.axis_index("n")
    # the unpacked codes as wgmma's right operand: [bn, bk] read transposed (K-major, what the
    # hardware takes for 8 bits), or [bk, bn] (what the interpreter takes)
    tile = (bn, bk) if k_major else (bk, bn)
    vectors = (
        (x_sum_gmem, i, bm),
        (x_scale_gmem, i, bm),
        (zero_gmem, j, bn),
        (w_scale_gmem, j, bn),
    )

    def scoped(w_smem, vector_smem, barriers):
        pl.run_scoped(
            functools.partial(gemm, w_smem, vector_smem, barriers),
            plgpu.ACC((bm, bn), jnp.int32),  # registers: a scope of their own
        )

    def gemm(w_smem, vector_smem, barriers, acc):
        def step(_, x_smem, codes_smem):
            if k_major:  # int4 loads only into the tensor-core fragment layouts
                w = plgpu.load(codes_smem, (), layout=plgpu.Layout.WGMMA_UPCAST_4X)
            else:
                w = codes_smem[...]
            w = w.astype(jnp.int8)  # [bn, block_k] int4 -> int8: u - 8
            w_smem[...] = w if k_major else w.T
            plgpu.commit_smem()  # the store above, visible to the tensor cores
            plgpu.wgmma(acc, x_smem, plgpu.transpose_ref(w_smem, (1, 0)) if k_major else w_smem)
            plgpu.wgmma_wait(0)  # the tile is rewritten by the next step

        plgpu.emit_pipeline(
            step,
            grid=(x_gmem.shape[1] // bk,),
            in_specs=[
                plgpu.BlockSpec((bm, bk), lambda k: (i, k), transforms=_tiled(bk)),
                plgpu.BlockSpec((bn, bk), lambda k: (j, k), transforms=_tiled(bk, bits=4)),
            ],
            max_concurrent_steps=config.stages,
        )(x_gmem, codes_gmem)

        for t, (gmem, block, size) in enumerate(vectors):
            plgpu.copy_gmem_to_smem(
                gmem.at[pl.ds(block * size, size)], vector_smem[t], barriers.at[t]
            )
        for t in range(len(vectors)):
            plgpu.barrier_wait(barriers.at[t])
        rows, cols = plgpu.Layout.WGMMA.reduce(1), plgpu.Layout.WGMMA.reduce(0)
        x_sum, x_scale, zero, w_scale = (
            plgpu.load(ref, (), layout=rows if t < 2 else cols) if k_major else ref[...]
            for t, ref in enumerate(vector_smem)
        )
        sums = acc[...]  # int32 [bm, bn]
        if asymmetric:  # sum x (u - 8) - (zero - 8) sum x = sum x (u - zero), exactly
            sums -= lax.broadcast_in_dim(x_sum, (bm, bn), [0]) * lax.broadcast_in_dim(
                zero, (bm, bn), [1]
            )
        y = sums.astype(jnp.float32) * lax.broadcast_in_dim(w_scale, (bm, bn), [1])
        out_gmem[pl.ds(i * bm, bm), pl.ds(j * bn, bn)] = y * lax.broadcast_in_dim(
            x_scale, (bm, bn), [0]
        )

    pl.run_scoped(
        scoped,
        plgpu.SMEM(tile, jnp.int8, transforms=_tiled(tile[1])),
        [plgpu.SMEM((size,), gmem.dtype) for gmem, _, size in vectors],
        plgpu.Barrier(num_barriers=len(vectors)),
    )


@functools.partial(jax.jit, static_argnames=("config", "interpret"))
def w4a4_mosaic(
    xc: jax.Array,
    x_scale: jax.Array,
    qt: QTensor,
    *,
    config: MosaicConfig = MOSAIC_DEFAULT,
    interpret: bool = False,
) -> jax.Array:
    """W4A4: centered int8 codes ``xc[M, K]`` (logical order) with row scales ``x_scale[M or 1,
    1]`` times a per-channel 4-bit weight; float32 ``[M, N]`` (`q4lab.ops.matmul.int_matmul`)."""
    m = xc.shape[0]
    reason = unsupported(qt, m, config)
    if reason:
        raise ValueError(f"w4a4_mosaic cannot run this weight: {reason}")
    bm = config.block_m
    mp = -(-m // bm) * bm
    xc = jnp.pad(halves.permuted_input(xc, qt).astype(jnp.int8), ((0, mp - m), (0, 0)))
    x_scale = jnp.broadcast_to(x_scale.astype(jnp.float32), (m, 1))[:, 0]
    x_scale = jnp.pad(x_scale, (0, mp - m))
    w_scale = jnp.broadcast_to(qt.scale.astype(jnp.float32)[0], (qt.n,))
    zero = qt.int_zero()
    asymmetric = zero is not None
    zero = jnp.zeros(qt.n, jnp.int32) if zero is None else zero[0].astype(jnp.int32)
    zero = jnp.broadcast_to(zero, (qt.n,))  # per-tensor: one zero
    x_sum = jnp.sum(xc.astype(jnp.int32), axis=1) if asymmetric else jnp.zeros(mp, jnp.int32)
    kernel = functools.partial(_kernel, config=config, k_major=not interpret, asymmetric=asymmetric)
    y = plgpu.kernel(
        kernel,
        out_type=jax.ShapeDtypeStruct((mp, qt.n), jnp.float32),
        grid=(mp // bm, qt.n // config.block_n),
        grid_names=("m", "n"),
        interpret=_interpreter() if interpret else None,
    )(xc, signed_codes(qt), x_sum, x_scale, zero - SYMMETRIC_ZERO, w_scale)
    return y[:m]


def signed_codes(qt: QTensor) -> jax.Array:
    """int4 ``[N, K]``: ``u - 8`` of each code (two's complement), K contiguous: the K-major
    bytes of `kmajor_codes` with each nibble's top bit flipped, read as int4 (low nibble first,
    as XLA packs int4)."""
    signed = kmajor_codes(qt) ^ jnp.uint8(0x88)
    return lax.bitcast_convert_type(signed, jnp.int4).reshape(qt.n, qt.k)


def _interpreter():
    """Mosaic GPU's CPU interpreter (simulated shared memory, barriers and wgmma)."""
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams

    return InterpretGPUParams()
