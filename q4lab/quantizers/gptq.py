"""GPTQ: round columns one at a time and push each rounding error onto the columns not yet
quantized, weighted by the inverse Hessian of the layer's inputs (Frantar et al., "GPTQ:
Accurate Post-Training Quantization for Generative Pre-trained Transformers", ICLR 2023, Alg. 1).

In q4lab's ``[K, N]`` layout the paper's columns are the K rows of the weight matrix. With
``H = 2 X^T X / n`` (+ dampening) and ``U`` the upper Cholesky factor of ``H^-1``:

    for each row i:   q_i = quant(w_i);   e_i = (w_i - q_i) / U_ii;   w_j -= U_ij e_i  (j > i)

Rows run in blocks of ``block_size`` whose updates to the later rows are applied once per block
(the paper's lazy batch updates). Both loops are `lax.fori_loop`s over dynamic slices, so one
compile serves every layer shape's width: compile time does not grow with K.

Options beyond the paper, as in its reference implementation:
- dead inputs (zero Hessian diagonal: an input that is always 0) get ``H_ii = 1`` and a zero weight;
- groups: the scales of a group are chosen when the loop reaches its first row, from the
  error-updated rows of that group, by any registered clipping quantizer (``clipping``);
- ``act_order``: rows run by decreasing ``H_ii``; with groups, groups are consecutive in that
  order and the `QTensor` stores the permutation so dequantization is exact;
- ``static_groups``: group scales are chosen up front from the original weights, so groups stay
  contiguous in the logical order and act-order needs no stored permutation.

``float_target``, GPTAQ's objective (Li et al., "GPTAQ: Efficient Finetuning-Free Quantization
for Asymmetric Calibration", ICML 2025): with sequential calibration the layer's inputs ``X`` come
from the model whose earlier layers are quantized, while the float model saw ``X_f``. Plain GPTQ
fits ``X W``; this fits the float output ``X_f W``. With ``C = 2 X^T X_f / n`` the least-squares
weight ``W* = H^-1 C W`` splits the error exactly, ``|X_f W - X Q|^2 = |X_f W - X W*|^2 +
|X (W* - Q)|^2``, so q4lab runs plain GPTQ on ``W*`` under ``H`` (the paper folds the same term
into GPTQ's update instead; dampened here as in `float_target_weight`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from q4lab.core import (
    QTensor,
    QuantSpec,
    affine,
    from_matrix,
    quantize,
)
from q4lab.core.qtensor import InAxes
from q4lab.quantizers.base import (
    CROSS,
    HESSIAN,
    Quantizer,
    RangeQuantizer,
    Stats,
    get_quantizer,
    range_params,
    register,
    weight_matrix,
)

_HIGHEST = lax.Precision.HIGHEST


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class GPTQ(Quantizer):
    """Hessian-aware rounding with error feedback; needs calibration (``stats["hessian"]``)."""

    name = "gptq"
    takes_float_zero = False  # its error feedback rounds with integer zero points

    percdamp: float = 0.01  # dampening added to diag(H), as a fraction of its mean
    block_size: int = 128  # rows per lazy batch update (adjusted to align with groups)
    act_order: bool = False  # process rows by decreasing Hessian diagonal
    static_groups: bool = False  # group scales from the original weights, before any update
    clipping: str = "minmax"  # the clipping quantizer choosing each group's range
    clipping_options: tuple[tuple[str, Any], ...] | Mapping[str, Any] = ()
    float_target: bool = False  # fit the float model's outputs (GPTAQ; sequential only)

    def __post_init__(self) -> None:
        options = tuple(sorted(dict(self.clipping_options).items()))
        object.__setattr__(self, "clipping_options", options)
        if not (isinstance(self.percdamp, int | float) and self.percdamp >= 0):
            raise ValueError(f"GPTQ.percdamp={self.percdamp!r} is invalid; allowed: a float >= 0")
        if isinstance(self.block_size, bool) or not (
            isinstance(self.block_size, int) and self.block_size >= 1
        ):
            raise ValueError(
                f"GPTQ.block_size={self.block_size!r} is invalid; allowed: an int >= 1"
            )
        for flag in ("act_order", "static_groups", "float_target"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(
                    f"GPTQ.{flag}={getattr(self, flag)!r} is invalid; allowed: True or False"
                )
        if not isinstance(self.clipper(), RangeQuantizer):
            raise ValueError(
                f"GPTQ.clipping={self.clipping!r} is invalid; allowed: a clipping quantizer "
                "(one that picks a range without calibration statistics)"
            )

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset({HESSIAN, CROSS}) if self.float_target else frozenset({HESSIAN})

    def clipper(self) -> Quantizer:
        return get_quantizer(self.clipping, **dict(self.clipping_options))

    def inner(self) -> tuple[Quantizer, ...]:
        return (self.clipper(),)

    def quantize(
        self,
        w: jax.Array,
        spec: QuantSpec,
        *,
        in_axes: InAxes = 0,
        stats: Stats | None = None,
        name: str = "",
    ) -> QTensor:
        where = f"layer {name!r}" if name else "this weight"
        if spec.float_zero:
            raise ValueError(
                f"gptq rounds with integer zero points; {spec.describe()} for {where} has "
                "real-valued ones; allowed: zero_point='int'"
            )
        axes, w2d = weight_matrix(w, spec, in_axes, name)
        k = w2d.shape[0]
        if not stats or HESSIAN not in stats:
            raise ValueError(
                f"gptq needs the Hessian of {where}'s inputs (stats['hessian']); quantize the "
                "model with calibration data (quantize_model(..., calibration=batches))"
            )
        hessian = np.asarray(stats[HESSIAN], np.float32)
        check_hessian(hessian, k, where)
        if self.float_target:
            if CROSS not in stats:
                raise ValueError(
                    f"gptq with float_target=True needs the cross moment of {where}'s inputs "
                    "(stats['cross']); quantize the model with calibration data and "
                    "sequential=True"
                )
            w2d = float_target_weight(w2d, jnp.asarray(hessian), stats[CROSS], self.percdamp)
        q2d, scale, zero, perm, finite = gptq_matrix(self, w2d, jnp.asarray(hessian), spec)
        if not bool(finite):
            raise ValueError(
                f"the Hessian of {where} is not positive definite after dampening "
                f"(percdamp={self.percdamp}): its inputs are (nearly) linearly dependent. "
                "Raise percdamp (e.g. 0.1) or give more calibration data."
            )
        if perm is not None:  # stored: the narrowest index type holding K
            perm = perm.astype(jnp.uint16 if k <= 2**16 else jnp.int32)
        w_hat = from_matrix(q2d, tuple(jnp.shape(w)), axes)
        return quantize(w_hat, spec, scale, zero, in_axes=axes, perm=perm)


def check_hessian(hessian: np.ndarray, k: int, where: str) -> None:
    """Raise a ValueError naming the layer for a Hessian GPTQ cannot use."""
    if hessian.shape != (k, k):
        raise ValueError(f"Hessian of {where} has shape {hessian.shape}; expected ({k}, {k})")
    if not np.isfinite(hessian).all():
        raise ValueError(
            f"the Hessian of {where} holds NaN/Inf: its calibration inputs are not finite "
            "(check the float model on the calibration data)"
        )
    if not np.any(np.diag(hessian) > 0):
        raise ValueError(
            f"the calibration inputs of {where} are all zero, so GPTQ has no error to minimise "
            "(every weight would be zeroed as a dead input). Check the calibration data, or "
            "quantize this layer with a clipping quantizer (a recipe rule for its path)."
        )


@jax.jit
def float_target_weight(
    w2d: jax.Array, hessian: jax.Array, cross: jax.Array, percdamp: float
) -> jax.Array:
    """GPTAQ's least-squares weight ``W*``: its output on the quantized model's inputs best
    fits the float model's output. The dampening pulls ``W*`` towards ``W`` (a ridge on
    ``W* - W``): ``W* = W + (H + damp I)^-1 (C - H) W``, which is ``W`` when the inputs did not
    drift (``C = H``). Dead inputs (``H_ii = 0``) keep ``W``."""
    w2d = w2d.astype(jnp.float32)
    h, dead = _live_hessian(hessian)
    h = _dampened(h, percdamp)
    drift = jnp.dot(cross - hessian, w2d, precision=_HIGHEST)
    fitted = w2d + jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(h), True), drift)
    return jnp.where(dead[:, None], w2d, fitted)


def output_error(w2d: jax.Array, w_hat2d: jax.Array, hessian: jax.Array) -> jax.Array:
    """Mean squared output error over the calibration rows, ``||X (W - W_hat)||^2 / n``,
    from ``H = 2 X^T X / n``: ``tr(D^T H D) / 2`` with ``D = W - W_hat``."""
    d = (w2d - w_hat2d).astype(jnp.float32)
    return 0.5 * jnp.sum(d * jnp.dot(hessian, d, precision=_HIGHEST))


def _block_size(gptq: GPTQ, spec: QuantSpec, k: int, dynamic_groups: bool) -> int:
    """Rows per block: a multiple or a divisor of the group size, so that a group's scales are
    chosen from rows that have received every earlier update."""
    b = min(gptq.block_size, k)
    if not dynamic_groups:
        return b
    g = spec.group_size
    return g * max(1, b // g) if g <= b else math.gcd(g, b)


def _live_hessian(hessian: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The Hessian with ``H_ii = 1`` for dead inputs (zero diagonal: always 0), and their mask."""
    dead = jnp.diag(hessian) == 0
    return hessian + jnp.diag(dead.astype(jnp.float32)), dead


def _dampened(h: jax.Array, percdamp: float) -> jax.Array:
    """``H + damp I`` with ``damp = percdamp * mean(diag H)``."""
    return h + percdamp * jnp.mean(jnp.diag(h)) * jnp.eye(h.shape[0], dtype=h.dtype)


def _upper_cholesky_of_inverse(h: jax.Array, percdamp: float) -> jax.Array:
    """``U`` upper triangular with ``(H + damp I)^-1 = U^T U``."""
    eye = jnp.eye(h.shape[0], dtype=h.dtype)
    hinv = jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(_dampened(h, percdamp)), True), eye)
    return jnp.linalg.cholesky(hinv).T


@functools.partial(jax.jit, static_argnums=(0, 3))
def gptq_matrix(gptq: GPTQ, w2d: jax.Array, hessian: jax.Array, spec: QuantSpec):
    """GPTQ of ``w2d[K, N]`` with Hessian ``[K, K]``.

    Returns ``(w_hat[K, N] logical order, scale grid, zero grid | None, perm | None, finite)``;
    ``perm`` is set only when the grid refers to permuted rows (act-order with dynamic groups).
    """
    k, n = w2d.shape
    per_group = spec.granularity == "per_group"
    dynamic_groups = per_group and not gptq.static_groups
    clipper = gptq.clipper()
    zero_point = not spec.symmetric

    hessian, dead = _live_hessian(hessian)
    w2d = jnp.where(dead[:, None], 0.0, w2d.astype(jnp.float32))

    if gptq.act_order:
        perm = jnp.argsort(-jnp.diag(hessian), stable=True)
        hessian = hessian[perm][:, perm]
    else:
        perm = jnp.arange(k)
    u = _upper_cholesky_of_inverse(hessian, gptq.percdamp)
    finite = jnp.all(jnp.isfinite(u))

    b = _block_size(gptq, spec, k, dynamic_groups)
    kp = -(-k // b) * b  # pad with zero rows (identity Hessian): they change nothing
    w_rows = jnp.zeros((kp, n), jnp.float32).at[:k].set(w2d[perm])
    u = jnp.eye(kp, dtype=jnp.float32).at[:k, :k].set(u)
    stored_to_logical = jnp.concatenate([perm, jnp.arange(k, kp)])

    if dynamic_groups:
        g = spec.group_size
        group_of_row = jnp.arange(kp) // g
        scale = jnp.zeros((kp // g, n), spec.jnp_scale_dtype)
        zero = jnp.zeros((kp // g, n), jnp.int32)
        slab_spec = dataclasses.replace(spec, granularity="per_channel", group_size=None)
    else:
        scale, zero = range_params(clipper, w2d, spec)  # from the original (dead-zeroed) weights
        zero = jnp.zeros(scale.shape, jnp.int32) if zero is None else zero
        groups = scale.shape[0]
        group_of_row = jnp.minimum(stored_to_logical * groups // k, groups - 1)

    def block(bi, carry):
        w_all, q_all, scale, zero = carry
        start = bi * b
        u_rows = lax.dynamic_slice_in_dim(u, start, b, 0)  # [b, kp], zero left of the block
        u_blk = lax.dynamic_slice_in_dim(u_rows, start, b, 1)

        def row(i, c):
            w_blk, q_blk, e_blk, scale, zero = c
            r = start + i
            if dynamic_groups:

                def refresh(sz):
                    src = w_blk if g <= b else w_all  # rows up to date with every update
                    at = i if g <= b else start
                    s, z = range_params(clipper, lax.dynamic_slice_in_dim(src, at, g, 0), slab_spec)
                    z = jnp.zeros_like(s, jnp.int32) if z is None else z
                    return (
                        lax.dynamic_update_slice_in_dim(sz[0], s, r // g, 0),
                        lax.dynamic_update_slice_in_dim(sz[1], z, r // g, 0),
                    )

                scale, zero = lax.cond(r % g == 0, refresh, lambda sz: sz, (scale, zero))
            s = lax.dynamic_index_in_dim(scale, group_of_row[r], 0, keepdims=False)
            z = lax.dynamic_index_in_dim(zero, group_of_row[r], 0, keepdims=False)
            w = w_blk[i]
            q = affine.round_trip(w, s, z if zero_point else None, spec)
            err = (w - q) / u_blk[i, i]
            w_blk = w_blk - u_blk[i][:, None] * err[None, :]
            return w_blk, q_blk.at[i].set(q), e_blk.at[i].set(err), scale, zero

        w_blk = lax.dynamic_slice_in_dim(w_all, start, b, 0)
        zeros = jnp.zeros_like(w_blk)
        _, q_blk, e_blk, scale, zero = lax.fori_loop(0, b, row, (w_blk, zeros, zeros, scale, zero))
        w_all = w_all - jnp.dot(u_rows.T, e_blk, precision=_HIGHEST)
        q_all = lax.dynamic_update_slice_in_dim(q_all, q_blk, start, 0)
        return w_all, q_all, scale, zero

    init = (w_rows, jnp.zeros_like(w_rows), scale, zero)
    _, q_rows, scale, zero = lax.fori_loop(0, kp // b, block, init)
    w_hat = jnp.zeros((k, n), jnp.float32).at[perm].set(q_rows[:k])
    if dynamic_groups:
        scale, zero = scale[: k // g], zero[: k // g]
    stored_perm = perm if (gptq.act_order and dynamic_groups) else None
    return w_hat, scale, zero if zero_point else None, stored_perm, finite
