"""HQQ: half-quadratic quantization (Badri & Shaji, 2023), calibration-free.

Per group, the scale is min-max's and the zero point is real-valued (``QuantSpec(symmetric=False,
zero_point="float")``, held in the scale dtype). The zero is fitted so that the rounded weight
matches the weight up to a sparse error: the problem ``min_z ||W - (Q(W; s, z) - z) s||_p^p`` with
``p < 1`` (an error of heavy-tailed outliers) is split half-quadratically into
  W_e = shrink_p(W - W_r, beta)            the sparse error, a generalised soft threshold
  z   = mean over the group of (W_q - (W - W_e) / s)     the zero's least-squares update
with ``W_q = clip(round(W / s + z))`` and ``W_r = (W_q - z) s``, ``beta`` growing by ``kappa``
per step. The paper stops at the first step whose mean ``|W - W_r|`` over the whole tensor grows;
here each group keeps the zero with its least mean ``|W - W_r|`` seen (min-max's zero is the
first candidate), so no group ends worse than min-max with a float zero point on that measure.
Every candidate is evaluated as stored (rounded to the scale dtype).

Only the zero moves: the range of each group is min-max's (no clipping), so HQQ's gain over
min-max is where rounding, not range, costs most (small groups, 2 and 3 bits).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import ClassVar

import jax
import jax.numpy as jnp

from q4lab.core import QTensor, QuantSpec, affine, quantize
from q4lab.core.qtensor import InAxes
from q4lab.quantizers.base import Quantizer, Stats, minmax_range, register, weight_matrix


def shrink(x: jax.Array, beta: jax.Array, p: float) -> jax.Array:
    """The proximal step of ``|x|^p / beta`` (a generalised soft threshold): ``sign(x) *
    max(|x| - |x|^(p-1) / beta, 0)``; p = 1 is the plain soft threshold."""
    ax = jnp.abs(x)
    shrunk = ax - jnp.where(ax > 0, ax, 1.0) ** (p - 1) / beta
    return jnp.sign(x) * jnp.maximum(shrunk, 0.0)


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class HQQ(Quantizer):
    """Min-max scales with zero points fitted by half-quadratic splitting (module docstring)."""

    name = "hqq"
    zero_point: ClassVar[str] = "float"  # rules give it asymmetric specs with float zero points

    lp_norm: float = 0.7  # p of the error norm; < 1 favours a sparse error (outliers)
    beta: float = 10.0  # the splitting's initial penalty
    kappa: float = 1.01  # beta's growth per step
    iters: int = 20  # steps

    def __post_init__(self) -> None:
        if not 0 < float(self.lp_norm) <= 1:
            raise ValueError(f"HQQ.lp_norm={self.lp_norm!r} is invalid; allowed: (0, 1]")
        if not float(self.beta) > 0:
            raise ValueError(f"HQQ.beta={self.beta!r} is invalid; allowed: > 0")
        if not float(self.kappa) >= 1:
            raise ValueError(f"HQQ.kappa={self.kappa!r} is invalid; allowed: >= 1")
        if not isinstance(self.iters, int) or self.iters < 0:
            raise ValueError(f"HQQ.iters={self.iters!r} is invalid; allowed: an int >= 0")

    def quantize(
        self,
        w: jax.Array,
        spec: QuantSpec,
        *,
        in_axes: InAxes = 0,
        stats: Stats | None = None,
        name: str = "",
    ) -> QTensor:
        if not spec.float_zero:
            where = f" for {name!r}" if name else ""
            raise ValueError(
                f"hqq fits real-valued zero points; {spec.describe()}{where} has none; allowed: "
                "QuantSpec(symmetric=False, zero_point='float') (a Rule with quantizer='hqq' "
                "sets zero_point itself)"
            )
        axes, w2d = weight_matrix(w, spec, in_axes, name)
        scale, zero = _fit(self, w2d, spec)
        return quantize(w, spec, scale, zero, in_axes=axes)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _fit(hqq: HQQ, w2d: jax.Array, spec: QuantSpec) -> tuple[jax.Array, jax.Array]:
    """Scale and fitted zero ``[G, N]`` (both in the scale dtype) of ``w2d[K, N]``."""
    wg = affine.group_view(w2d, spec)
    axes = affine.reduce_axes(spec)
    scale, zero0 = affine.scale_zero_from_range(*minmax_range(wg, spec), spec)
    s = scale.astype(jnp.float32)

    def stored(z):  # a zero as the QTensor will hold it
        return z.astype(spec.jnp_scale_dtype).astype(jnp.float32)

    def error(z):
        return jnp.abs(wg - affine.round_trip(wg, s, z, spec)).mean(axis=axes, keepdims=True)

    def step(i, carry):
        z, beta, best_z, best_err = carry
        z = stored(z)
        err = error(z)
        better = err < best_err
        best_z, best_err = jnp.where(better, z, best_z), jnp.where(better, err, best_err)
        w_q = affine.to_codes(wg, s, z, spec)
        w_e = shrink(wg - (w_q - z) * s, beta, hqq.lp_norm)
        z = jnp.mean(w_q - (wg - w_e) / s, axis=axes, keepdims=True)
        return z, beta * hqq.kappa, best_z, best_err

    z0 = stored(zero0)
    init = (z0, jnp.float32(hqq.beta), z0, error(z0))
    z, _, best_z, best_err = jax.lax.fori_loop(0, hqq.iters, step, init)
    z = stored(z)  # the last update is a candidate too
    best_z = jnp.where(error(z) < best_err, z, best_z)
    return scale[:, 0, :], best_z[:, 0, :].astype(spec.jnp_scale_dtype)


__all__ = ["HQQ", "shrink"]
