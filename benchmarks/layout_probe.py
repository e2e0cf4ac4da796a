"""What limits the Pallas (Triton) INT4 kernels on a GPU: how codes are loaded, and the int8 GEMM.

    python benchmarks/layout_probe.py [loads] [gemm]     # GPU only; one table per probe

loads  a kernel that only reads packed codes (117 MB: 8192 x 14336 bytes) block by block, as
       the W4A16 kernel walks them, and xors them together: bytes as stored ("rows": a column
       block is K strided rows of its bytes), the same bytes re-laid so each column block is
       contiguous ("tiles"), and the stored bytes read as uint32 ("words", four bytes an
       element). XLA's own reduction over the bytes is the reference.
gemm   int8 x int8 -> int32 at 4096 x 8192 x 8192 (pre-unpacked operands): XLA's dot, and a plain
       Pallas tile loop with the weight stored [K, N] ("n-major") or [N, K] ("k-major", what
       Hopper's 8-bit MMA reads), beside the same loop in bf16, against XLA's bf16 dot: the
       ceiling of a fused W4A4 kernel.

Times: `timing.median_seconds` (median after warm-up; the codes rotate through 512 MiB of copies).
"""

from __future__ import annotations

import functools
import itertools
import sys

import jax
import jax.numpy as jnp
import pandas as pd
from jax import lax
from jax.experimental import pallas as pl
from timing import copy_count, median_seconds, replicate

from q4lab.ops import on_gpu

K, N = 8192, 28672


def _triton(warps: int, stages: int):
    from jax.experimental.pallas import triton as pl_triton

    return pl_triton.CompilerParams(num_warps=warps, num_stages=stages)


def _load_kernel(codes_ref, out_ref, *, step, steps, bn):
    part = pl.program_id(1)

    def body(t, acc):
        return acc ^ codes_ref[pl.ds((part * steps + t) * step, step), :]

    acc = lax.fori_loop(0, steps, body, jnp.zeros((step, bn), codes_ref.dtype))
    out_ref[...] = jnp.sum(acc.astype(jnp.int32), axis=0, keepdims=True)


@functools.partial(jax.jit, static_argnames=("bn", "step", "split", "warps", "stages"))
def read_codes(codes, *, bn, step, split, warps, stages):
    """xor of every ``step``-row block of each ``bn``-element column block: reads ``codes`` once."""
    if codes.ndim == 3:
        tiles, k, _ = codes.shape
        h = tiles * bn
        spec = pl.BlockSpec((None, k, bn), lambda j, s: (j, 0, 0))
    else:
        k, h = codes.shape
        spec = pl.BlockSpec((k, bn), lambda j, s: (0, j))
    kernel = functools.partial(_load_kernel, step=step, steps=k // step // split, bn=bn)
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((split, 1, h), jnp.int32),
        grid=(h // bn, split),
        in_specs=[spec],
        out_specs=pl.BlockSpec((None, 1, bn), lambda j, s: (s, 0, j)),
        compiler_params=_triton(warps, stages),
    )(codes)


def _layout(codes: jax.Array, layout: str, bn: int) -> jax.Array:
    k, h = codes.shape
    if layout == "tiles":
        return codes.reshape(k, h // bn, bn).transpose(1, 0, 2)
    if layout == "words":
        return lax.bitcast_convert_type(codes.reshape(k, h // 4, 4), jnp.uint32)
    return codes


def loads() -> list[dict]:
    codes = jax.random.bits(jax.random.key(0), (K, N // 2), jnp.uint8)
    copies = replicate(codes, copy_count(codes.nbytes))
    rows = []
    xor = jax.jit(lambda c: jnp.bitwise_xor.reduce(c, axis=0))
    xla = median_seconds(xor, [(c,) for c in copies], 0.2)
    rows.append({"layout": "xla reduce", "config": "", "ms": xla * 1e3})
    for block_bytes, step, layout in itertools.product(
        (128, 256, 512), (64, 128), ("rows", "tiles", "words")
    ):
        bn = block_bytes // 4 if layout == "words" else block_bytes
        args = [(_layout(c, layout, bn),) for c in copies]
        fn = functools.partial(read_codes, bn=bn, step=step, split=8, warps=4, stages=4)
        config = f"{block_bytes} bytes x {step} rows"
        try:
            t = median_seconds(fn, args, 0.2)
        except Exception as err:
            print(f"loads {layout} {config}: failed {err!r:.200}", file=sys.stderr)
            continue
        rows.append({"layout": layout, "config": config, "ms": t * 1e3})
        print(f"loads {layout} {config}: {t * 1e3:.4g} ms", file=sys.stderr, flush=True)
    for row in rows:
        row["GB/s"] = codes.nbytes / row["ms"] * 1e3 / 1e9
    return rows


def _gemm_kernel(a_ref, b_ref, o_ref, *, bk, steps, acc_dtype, k_major):
    def body(t, acc):
        a = a_ref[:, pl.ds(t * bk, bk)]
        b = b_ref[:, pl.ds(t * bk, bk)].T if k_major else b_ref[pl.ds(t * bk, bk), :]
        return acc + jnp.dot(a, b, preferred_element_type=acc_dtype)

    acc = lax.fori_loop(0, steps, body, jnp.zeros(o_ref.shape, acc_dtype))
    o_ref[...] = acc.astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("bm", "bn", "bk", "warps", "stages", "k_major"))
def pallas_gemm(a, b, *, bm, bn, bk, warps, stages, k_major=False):
    """``a[M, K] @ b``, b stored ``[K, N]`` or (``k_major``) ``[N, K]``."""
    m, k = a.shape
    n = b.shape[0] if k_major else b.shape[1]
    acc = jnp.int32 if a.dtype == jnp.int8 else jnp.float32
    out = jnp.int32 if a.dtype == jnp.int8 else a.dtype
    kernel = functools.partial(_gemm_kernel, bk=bk, steps=k // bk, acc_dtype=acc, k_major=k_major)
    if k_major:
        b_spec = pl.BlockSpec((bn, k), lambda i, j: (j, 0))
    else:
        b_spec = pl.BlockSpec((k, bn), lambda i, j: (0, j))
    return pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((m, n), out),
        grid=(m // bm, n // bn),
        in_specs=[pl.BlockSpec((bm, k), lambda i, j: (i, 0)), b_spec],
        out_specs=pl.BlockSpec((bm, bn), lambda i, j: (i, j)),
        compiler_params=_triton(warps, stages),
    )(a, b)


GEMM_TILES = [  # bm, bn, bk, warps, stages
    (128, 128, 64, 4, 3),
    (128, 128, 128, 8, 3),
    (128, 256, 64, 8, 3),
    (256, 128, 64, 8, 3),
    (128, 256, 128, 8, 4),
]


def gemm() -> list[dict]:
    m, k, n = 4096, 8192, 8192
    a8 = jax.random.randint(jax.random.key(2), (m, k), -7, 8, jnp.int8)
    b8 = jax.random.randint(jax.random.key(3), (k, n), -7, 8, jnp.int8)
    a16, b16 = a8.astype(jnp.bfloat16), b8.astype(jnp.bfloat16)
    t_dense = median_seconds(jax.jit(lambda a, b: a @ b), [(a16, b16)], 0.2)
    rows = [{"path": "xla bf16", "ms": t_dense * 1e3}]
    xla8 = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.int32))
    rows.append({"path": "xla int8", "ms": median_seconds(xla8, [(a8, b8)], 0.2) * 1e3})
    operands = {
        "int8 n-major": (a8, b8, False),
        "int8 k-major": (a8, jnp.array(b8.T, copy=True), True),
        "bf16 n-major": (a16, b16, False),
    }
    for (bm, bn, bk, warps, stages), (kind, (a, b, k_major)) in itertools.product(
        GEMM_TILES, operands.items()
    ):
        name = f"pallas {kind} bm{bm} bn{bn} bk{bk} w{warps} s{stages}"
        fn = functools.partial(
            pallas_gemm, bm=bm, bn=bn, bk=bk, warps=warps, stages=stages, k_major=k_major
        )
        try:
            t = median_seconds(fn, [(a, b)], 0.2)
        except Exception as err:
            print(f"gemm {name}: failed {err!r:.200}", file=sys.stderr)
            continue
        rows.append({"path": name, "ms": t * 1e3})
        print(f"gemm {name}: {t_dense / t:.3g}x", file=sys.stderr, flush=True)
    for row in rows:
        row["x bf16"] = t_dense * 1e3 / row["ms"]
        row["TOP/s"] = 2 * m * k * n / row["ms"] / 1e9
    return rows


def main() -> None:
    if not on_gpu():
        raise SystemExit("layout_probe.py measures GPU kernels; this backend has none")
    device = jax.devices()[0]
    print(f"{device.platform} ({device.device_kind}), jax {jax.__version__}")
    for name, probe in (("loads", loads), ("gemm", gemm)):
        if len(sys.argv) > 1 and name not in sys.argv[1:]:
            continue
        print(f"\n## {name}\n")
        print(pd.DataFrame(probe()).to_markdown(index=False, floatfmt=".3g"), flush=True)


if __name__ == "__main__":
    main()
