"""Learned step size quantization (LSQ, Esser et al., ICLR 2020): fake quantization whose step
(scale) gets a gradient, for weights and activations alike.

In the group view of `q4lab.core.affine` (values ``v[G, g, N]``, steps ``s[G, 1, N]``, integer
zero points ``z`` or None), the forward value is exactly `q4lab.core.affine.round_trip`:

    v_hat = (clip(round(v / s) + z, qmin, qmax) - z) * s

With ``-Q_N = qmin - z`` and ``Q_P = qmax - z`` (symmetric 4-bit: -8 and 7), the paper's
gradients are

    d v_hat / d v = 1                       if -Q_N <= v / s <= Q_P, else 0
    d v_hat / d s = round(v / s) - v / s    if -Q_N <= v / s <= Q_P
                  = -Q_N or Q_P             where v / s saturates

and the step's gradient is multiplied by ``g = 1 / sqrt(N * qmax)`` (`lsq_grad_scale`), N being
the number of values one step covers, so that steps and values learn at comparable rates:
the paper's ``Q_P`` for symmetric codes; with zero points ``qmax``, the codes' top, one constant
per spec rather than ``Q_P`` per group.
Zero points are integers and get no gradient. Under Adam the constant ``g`` mostly cancels (each
parameter's update is normalised); it matters for SGD, as in the paper.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from q4lab.core import affine
from q4lab.core.spec import QuantSpec


def lsq_grad_scale(values_per_step: int, spec: QuantSpec) -> float:
    """LSQ's gradient scale ``1 / sqrt(N * qmax)`` for a step covering ``values_per_step`` values
    (the module docstring)."""
    return 1.0 / math.sqrt(values_per_step * spec.qmax)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def stored_scale(scale: jax.Array, spec: QuantSpec) -> jax.Array:
    """``scale`` rounded to ``spec.scale_dtype`` (as a `QTensor` stores it), back in float32;
    the gradient passes straight through the rounding. A positive step that the dtype rounds to
    0 (a learned step of tiny weights, in float16) is its smallest positive value instead, one
    that float32 holds as a normal number (XLA:CPU flushes float32 subnormals to 0): a step of 0
    made the group's values NaN (0 / 0) and froze into a QTensor of scale 0."""
    dtype = spec.jnp_scale_dtype
    least = max(float(jnp.finfo(dtype).smallest_subnormal), float(jnp.finfo(jnp.float32).tiny))
    stored = jnp.maximum(scale.astype(dtype), jnp.asarray(least, dtype))
    return stored.astype(jnp.float32)


@stored_scale.defjvp
def _stored_scale_jvp(spec, primals, tangents):
    return stored_scale(primals[0], spec), tangents[0]


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def lsq_round_trip(
    v: jax.Array, scale: jax.Array, zero: jax.Array | None, spec: QuantSpec, grad_scale: float
) -> jax.Array:
    """Quantize-dequantize grouped values ``v[G, g, N]`` with float32 steps ``scale`` (broadcast
    over the view) and integer ``zero`` (or None); gradients to ``v`` and ``scale`` as in the
    module docstring, the step's multiplied by ``grad_scale``."""
    return affine.round_trip(v, scale, zero, spec)


@lsq_round_trip.defjvp
def _lsq_jvp(spec, grad_scale, primals, tangents):
    v, scale, zero = primals
    dv, ds = tangents[0], tangents[1]
    s = scale.astype(jnp.float32)
    ratio = v.astype(jnp.float32) / s
    offset = 0.0 if zero is None else zero.astype(jnp.float32)
    lo, hi = spec.qmin - offset, spec.qmax - offset  # -Q_N and Q_P
    inside = (ratio >= lo) & (ratio <= hi)  # the paper's bounds, on v / s before rounding
    step_slope = jnp.where(inside, jnp.round(ratio) - ratio, jnp.where(ratio < lo, lo, hi))
    out = affine.round_trip(v, scale, zero, spec)
    return out, dv * inside + ds * (grad_scale * step_slope)


__all__ = ["lsq_grad_scale", "lsq_round_trip", "stored_scale"]
