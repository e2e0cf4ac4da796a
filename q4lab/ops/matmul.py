"""Integer-code matmuls: W4A16 (weight-only) and W4A4 (both operands integer codes), with the
choice of implementation.

Shapes: activations ``x[M, K]``, weight `QTensor` ``[K, N]`` with scale ``[G, N]`` (groups of g
along K). W4A4 multiplies *centered* codes ``x_q - z_x`` and ``w_q - z_w``: each lies in
[-(2^b - 1), 2^b - 1], so 4-bit codes fit int8 and the product runs as an int8 dot with int32
accumulation (int8 units are what GPUs without int4 tensor cores have). The float scales are
applied after the integer sums:

    y[m, n] = s_x[m] * sum_g s_w[g, n] * sum_{k in g} xc[m, k] * wc[k, n]

Implementations (``impl=``), all equal to the reference up to the order of float sums, but the
xla form with group scales and 16-bit x (and the Mosaic W4A16 kernel), which rounds
``code * scale`` to x's dtype:
  reference  ``x @ dequantize(qt)`` (W4A16) / one einsum over groups (W4A4): the definition.
  xla        the fastest plain XLA form measured on GPU: per-channel and per-tensor weights take
             the int codes into the dot and the scale after it; per-group weights are
             dequantized, to x's dtype when that is bfloat16/float16 (a 16-bit GEMM, weights
             rounded to it), else as the reference.
  blocked    K walked in cache-sized blocks, see `q4lab.ops.blocked` (the CPU path).
  pallas     the Triton kernels of `q4lab.ops.pallas_gpu` (GPU only; ``pallas_interpret`` runs
             them through Pallas' interpreter anywhere, for tests).
  mosaic     the Mosaic GPU kernels of `q4lab.ops.mosaic_gpu` (Hopper GPUs; W4A16 up to 64 rows
             of 16-bit x, per-channel W4A4), which read codes K-major: a QTensor laid out
             ``"kmajor"`` once (`q4lab.core.relayout`), or re-laid on every call. Not yet run on
             a GPU.
  auto       for 4-bit codes in the rows layout: on GPU the path measured fastest for the
             operation, dtype and M (`GPU_CHOICES`), blocked on CPU, else xla. K-major codes
             (laid out for the Mosaic kernels, the caller's choice): those kernels on a Hopper GPU
             where they take the weight, M and dtype, else xla. Other widths: xla on GPU,
             reference elsewhere. With an autotuning table in use (`q4lab.ops.autotune`;
             ``Q4LAB_AUTOTUNE=1``), 4-bit codes take the fastest of `candidates` measured on
             this device where it is more than 10 % faster than that pick.

Widths (`WIDTHS`): reference and xla read codes through `QTensor.int_codes` and take every width
(2..8); blocked and the Pallas kernels read the stored bytes as 4-bit nibbles
(`q4lab.ops.halves`) and take only ``bits=4``. Asked for by name with another width, they raise.
Layouts (`READS`): blocked and the Triton kernels read codes packed along N (``"rows"``) only;
the rest read either (through `QTensor.int_codes`, or re-laid).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from q4lab.core import LAYOUTS, QTensor, affine, dequantize_matrix
from q4lab.ops import autotune, blocked, halves, pallas_gpu
from q4lab.ops.lowering import on_gpu

IMPLEMENTATIONS: tuple[str, ...] = (
    "auto",
    "reference",
    "xla",
    "blocked",
    "pallas",
    "pallas_interpret",
    "mosaic",
)


# The code widths each implementation reads correctly ("auto" picks one that does).
WIDTHS: dict[str, tuple[int, ...]] = {
    "reference": tuple(range(2, 9)),
    "xla": tuple(range(2, 9)),
    "blocked": (4,),
    "pallas": (4,),
    "pallas_interpret": (4,),
    "mosaic": (4,),
}


# The code layouts each implementation reads (`q4lab.core.relayout` converts).
READS: dict[str, tuple[str, ...]] = {
    "reference": LAYOUTS,
    "xla": LAYOUTS,
    "blocked": ("rows",),
    "pallas": ("rows",),
    "pallas_interpret": ("rows",),
    "mosaic": LAYOUTS,
}


# What ``auto`` runs on a GPU, by operation and operands: the first (max_rows, impl) whose bound
# covers M (None: any M). From `benchmarks/bench_ops.py --check --tune` on an H200
# (benchmarks/RESULTS.md: "Matmul paths and what `auto` picks", and the 2026-11-28 section); a
# kernel ("pallas", "mosaic") that cannot take the weight falls back to "xla". W4A4 with group
# scales at large M: XLA's einsum holds an [M, G, N] int32 intermediate (6.1 ms at 8192x8192,
# M=4096; the kernel 2.4 ms). Float32 x up to 64 rows takes XLA's float32 dot: at 8192x8192 and
# 8192x28672, M=16, it ran in half blocked's time (0.325 vs 0.648 ms, 0.89 vs 1.97 ms; blocked
# then rounded its products as TF32, and asks for float32 products since). Above 64 rows,
# blocked: at the harness' 384x1536, M=360, it took 0.075 ms to xla's 0.121 (TF32 then too).
GPU_CHOICES: dict[tuple[str, str], tuple[tuple[int | None, str], ...]] = {
    ("w4a16", "16-bit"): ((64, "pallas"), (None, "xla")),
    ("w4a16", "float32"): ((64, "xla"), (None, "blocked")),
    ("w4a4", "int8 per-channel"): ((1, "xla"), (64, "pallas"), (None, "xla")),
    ("w4a4", "int8 grouped"): ((1, "xla"), (None, "pallas")),
}


def _operand_class(qt: QTensor, dtype, w4a4: bool) -> str:
    """The `GPU_CHOICES` column: activation dtype (W4A16); one scale row (per-channel or
    per-tensor) or group scales (W4A4)."""
    if w4a4:
        return "int8 grouped" if qt.scale.shape[0] > 1 else "int8 per-channel"
    return "16-bit" if jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) else "float32"


def choose(
    qt: QTensor,
    m: int,
    *,
    w4a4: bool = False,
    backend: str | None = None,
    dtype=jnp.float32,
) -> str:
    """The implementation ``impl="auto"`` runs for this weight, M rows of ``dtype`` activations
    and backend: the rules (`GPU_CHOICES` on a GPU, blocked on CPU), or, with an autotuning
    table in use and the default backend, what was measured here (`q4lab.ops.autotune`: a call
    not yet in the table compiles and times its `candidates` first)."""
    backend = backend or jax.default_backend()
    rules = _rules(qt, m, w4a4=w4a4, backend=backend, dtype=dtype)
    table = autotune.current()
    if table is None or backend != jax.default_backend() or not qt.spec.nibbles:
        return rules
    if qt.spec.float_zero:  # one path takes them
        return rules
    names = candidates(qt, m, w4a4=w4a4, dtype=dtype)
    if len(names) < 2:  # nothing to choose between
        return rules
    named = candidate_name(rules, names)
    entry_key = autotune.key(qt, m, w4a4=w4a4, dtype=dtype)
    paths = functools.partial(tuning_paths, names, qt, m, w4a4=w4a4, dtype=dtype)
    impl = autotune.pick(table, entry_key, names, named, paths)
    return rules if impl is None or impl == named else impl


_SAME_FORM = {"xla": "reference"}  # W4A16 with group scales and float32 x: one computation


def candidate_name(impl: str, names: tuple[str, ...]) -> str | None:
    """``impl`` as `candidates` names its computation among ``names`` (None: not among them)."""
    return impl if impl in names else _SAME_FORM.get(impl)


def _rules(qt: QTensor, m: int, *, w4a4: bool, backend: str, dtype) -> str:
    """What ``auto`` runs without measuring (module docstring)."""
    gpu = on_gpu(backend)
    if qt.spec.float_zero:  # real-valued zero points (HQQ): the dequantized weight's product
        return "reference"
    if not qt.spec.nibbles:  # 2-, 3- and 5..8-bit codes: the paths that unpack any width
        return "xla" if gpu else "reference"
    if qt.layout != "rows":  # K-major: laid out for the Mosaic kernels, which run where they can
        return "mosaic" if gpu and _mosaic_runs(qt, m, w4a4=w4a4, dtype=dtype) else "xla"
    if gpu:
        rows = GPU_CHOICES[("w4a4" if w4a4 else "w4a16", _operand_class(qt, dtype, w4a4))]
        impl = next(impl for bound, impl in rows if bound is None or m <= bound)
        if impl == "pallas" and pallas_gpu.unsupported(qt, m, w4a4=w4a4):
            return "xla"
        if impl == "mosaic" and not _mosaic_runs(qt, m, w4a4=w4a4, dtype=dtype):
            return "xla"
        return impl
    return "blocked" if backend == "cpu" else "xla"


_EINSUM_LIMIT = 2 << 30  # bytes of W4A4's [M, G, N] int32 einsum intermediate worth timing


def candidates(qt: QTensor, m: int, *, w4a4: bool = False, dtype=jnp.float32) -> tuple[str, ...]:
    """The implementations that can run this call (4-bit codes) on the default backend, each
    computation named once: what autotuning (`q4lab.ops.autotune`) checks and times. W4A4's
    reference and xla forms are one einsum, named "xla"; W4A16's xla form with group scales and
    float32 x is the reference's, named "reference". The Mosaic kernels only for K-major codes
    (where the rules run them; on codes in rows they would re-lay the weight on every call);
    W4A4's einsum not where its intermediate passes `_EINSUM_LIMIT` and blocked can run."""
    sixteen_bit = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
    if w4a4:
        names = ["xla"]
    else:
        names = ["reference"] + (["xla"] if qt.scale.shape[0] == 1 or sixteen_bit else [])
    if qt.layout == "rows":
        names.append("blocked")
        if on_gpu() and not pallas_gpu.unsupported(qt, m, w4a4=w4a4):
            names.append("pallas")
    elif on_gpu() and _mosaic_runs(qt, m, w4a4=w4a4, dtype=dtype):
        names.append("mosaic")
    if w4a4 and "blocked" in names and m * qt.scale.shape[0] * qt.n * 4 > _EINSUM_LIMIT:
        names.remove("xla")
    return tuple(names)


def tuning_paths(
    names: tuple[str, ...], qt: QTensor, m: int, *, w4a4: bool = False, dtype=jnp.float32
) -> tuple[dict[str, Callable], list[tuple], Callable]:
    """What `autotune.measure` takes for this call: each of ``names`` compiled, the arguments
    (stand-in operands of the call's shapes, one tuple per weight copy) and the trusted path (the
    reference form; W4A4's einsum, or blocked where that was left out of ``names``)."""
    activations = autotune.activation_stand_ins(qt.k, m, w4a4=w4a4, dtype=dtype)
    args = [(*activations, w) for w in autotune.weight_copies(qt)]
    op = int_matmul if w4a4 else w4a16_matmul
    paths = {name: jax.jit(functools.partial(op, impl=name)) for name in names}
    trusted = "reference" if not w4a4 else "xla" if "xla" in names else "blocked"
    return paths, args, paths.get(trusted) or jax.jit(functools.partial(op, impl=trusted))


def _mosaic_runs(qt: QTensor, m: int, *, w4a4: bool, dtype) -> bool:
    """Whether the Mosaic kernel for this operation runs here on this weight, M and dtype."""
    mosaic = _mosaic()
    sixteen_bit = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
    return mosaic.on_hopper() and (w4a4 or sixteen_bit) and not mosaic.unsupported(qt, m, w4a4=w4a4)


def _resolve(x: jax.Array, qt: QTensor, impl: str, *, w4a4: bool) -> str:
    if x.ndim != 2 or x.shape[1] != qt.k:
        raise ValueError(
            f"{'xc' if w4a4 else 'x'} has shape {tuple(x.shape)}; allowed: [M, K] with K={qt.k}, "
            "the weight's inputs (reshape other leading axes into M)"
        )
    m, dtype = x.shape[0], x.dtype
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"impl={impl!r} is unknown; allowed: {', '.join(IMPLEMENTATIONS)}")
    if qt.spec.float_zero and (w4a4 or impl not in ("auto", "reference")):
        raise ValueError(
            f"impl={impl!r}{' (W4A4)' if w4a4 else ''} multiplies integer codes less integer zero "
            f"points; {qt.spec.describe()} has real-valued ones (HQQ); allowed: W4A16 with "
            "impl='reference' or 'auto' (x times the dequantized weight)"
        )
    if impl == "auto":
        return choose(qt, m, w4a4=w4a4, dtype=dtype)
    if qt.spec.bits not in WIDTHS[impl]:
        allowed = ", ".join(map(str, WIDTHS[impl]))
        raise ValueError(
            f"impl={impl!r} cannot read {qt.spec.bits}-bit codes ({qt.spec.describe()}); "
            f"allowed widths: {allowed} (reference and xla take 2..8)"
        )
    if qt.layout not in READS[impl]:
        allowed = ", ".join(name for name, layouts in READS.items() if qt.layout in layouts)
        raise ValueError(
            f"impl={impl!r} cannot read codes laid out {qt.layout!r}; allowed for them: {allowed} "
            f"(or q4lab.core.relayout(qt, {READS[impl][0]!r}))"
        )
    if impl in ("pallas", "mosaic") and not on_gpu():
        raise ValueError(
            f"impl={impl!r} needs a GPU (backend is {jax.default_backend()!r}); "
            "'pallas_interpret' runs the Triton kernels through the Pallas interpreter"
        )
    return impl


def w4a16_matmul(x: jax.Array, qt: QTensor, *, impl: str = "auto") -> jax.Array:
    """``x[M, K] @ dequantize(qt)[K, N]`` in float32 without a stored float weight; ``impl``
    picks the implementation (module docstring)."""
    impl = _resolve(x, qt, impl, w4a4=False)
    if impl == "blocked":
        return blocked.w4a16_blocked(x, qt)
    if impl in ("pallas", "pallas_interpret"):
        return pallas_gpu.w4a16_pallas(x, qt, interpret=impl == "pallas_interpret")
    if impl == "mosaic":
        return _mosaic().w4a16_mosaic(x, qt)
    if impl == "xla" and qt.scale.shape[0] == 1:  # one scale row: scale after the dot
        codes = centered_weight_codes(qt).astype(x.dtype)
        y = jnp.dot(
            halves.permuted_input(x, qt),
            codes,
            preferred_element_type=jnp.float32,
            precision=_FLOAT32_PRECISION if x.dtype == jnp.float32 else None,
        )
        return y * qt.scale.astype(jnp.float32)
    if impl == "xla" and x.dtype in (jnp.bfloat16, jnp.float16):  # a 16-bit GEMM, as the model
        w = dequantize_matrix(qt).astype(x.dtype)  # rounds code * scale to x's precision
        return jnp.dot(x, w, preferred_element_type=jnp.float32)
    return jnp.dot(x.astype(jnp.float32), dequantize_matrix(qt), precision=_FLOAT32_PRECISION)


def _mosaic():
    """`q4lab.ops.mosaic_gpu`, imported when first used: Mosaic GPU's import adds 0.3 s to every
    process that imports q4lab (1.2 s -> 1.45 s here), and only a GPU run needs it."""
    from q4lab.ops import mosaic_gpu

    return mosaic_gpu


# float32 inputs get float32 products (a GPU's default would round them, as TF32 does)
_FLOAT32_PRECISION = jax.lax.Precision.HIGHEST


def _int32_rows(x_dtype, spec) -> int:
    """The most rows of K whose products of centered codes sum within int32, at the largest
    magnitudes: int8 activation codes 128 (int16: 8-bit asymmetric ones, 255); weight codes
    ``2^(b-1)`` symmetric, ``2^b - 1`` with zero points."""
    x_most = 128 if jnp.dtype(x_dtype) == jnp.int8 else 255
    w_most = 2 ** (spec.bits - 1) if spec.symmetric else 2**spec.bits - 1
    return (2**31 - 1) // (x_most * w_most)


def centered_weight_codes(qt: QTensor) -> jax.Array:
    """``w_q - z_w`` ``[K, N]`` (`q4lab.core.affine.centered_dtype`) in stored row order (see
    `QTensor.perm`)."""
    codes = qt.int_codes().astype(jnp.int32)
    zero = qt.int_zero()
    if zero is not None:
        codes = affine.group_view(codes, qt.spec) - zero[:, None, :]
        codes = codes.reshape(qt.k, qt.n)
    return codes.astype(affine.centered_dtype(qt.spec))


def int_matmul(xc: jax.Array, x_scale: jax.Array, qt: QTensor, *, impl: str = "auto") -> jax.Array:
    """W4A4: centered activation codes ``xc[M, K]`` (`q4lab.core.act_codes`: int8; int16 for
    8-bit asymmetric ones, which only the reference and xla forms take) with row scales
    ``x_scale[M or 1, 1]`` times the weight's centered codes, int32 accumulation per group, then
    both scales. Float32 ``[M, N]``.
    Rows of ``xc`` are in logical order; an act-order permutation is applied here."""
    if xc.dtype != jnp.int8 and impl == "auto":
        impl = "xla"
    impl = _resolve(xc, qt, impl, w4a4=True)
    if xc.dtype != jnp.int8 and impl not in ("reference", "xla"):
        raise ValueError(f"impl={impl!r} needs int8 activation codes, got {xc.dtype}")
    if impl == "blocked":
        return blocked.w4a4_blocked(xc, x_scale, qt)
    if impl in ("pallas", "pallas_interpret"):
        return pallas_gpu.w4a4_pallas(xc, x_scale, qt, interpret=impl == "pallas_interpret")
    if impl == "mosaic":
        return _mosaic().w4a4_mosaic(xc, x_scale, qt)
    xc = halves.permuted_input(xc, qt)
    wc = centered_weight_codes(qt)
    groups = qt.scale.shape[0]
    m, g = xc.shape[0], qt.k // groups
    # a group's int32 sums in chunks of rows that cannot overflow (one chunk but for 8-bit
    # codes past K ~ 33k), padded with zero codes; the chunks summed in float32
    chunks = -(-g // _int32_rows(xc.dtype, qt.spec))
    rows = -(-g // chunks)
    pad = chunks * rows - g
    xg = jnp.pad(xc.reshape(m, groups, g), [(0, 0), (0, 0), (0, pad)])
    wg = jnp.pad(wc.reshape(groups, g, qt.n), [(0, 0), (0, pad), (0, 0)])
    acc = jnp.einsum(
        "mgck,gckn->mgcn",
        xg.reshape(m, groups, chunks, rows),
        wg.reshape(groups, chunks, rows, qt.n),
        preferred_element_type=jnp.int32,
    )
    acc = jnp.sum(acc.astype(jnp.float32), axis=2)
    y = jnp.sum(acc * qt.scale.astype(jnp.float32)[None], axis=1)
    return y * x_scale.astype(jnp.float32)
