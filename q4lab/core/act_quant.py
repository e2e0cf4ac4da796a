"""Activation quantization: ranges, integer codes, and fake quantization with a straight-through
gradient, for activation rows ``x[M, K]``.

Glossary:
  M  rows: the tokens of a dense layer's input (its contracting axes last), or the examples of a
     convolution's input (a per-position scale cannot be factored out of a conv).
  K  the values of one row (a dense layer's input size; a whole example for a conv).

An activation's `QuantSpec` sees rows as channels: ``granularity="per_channel"`` is one scale
per row, ``"per_tensor"`` one scale for all rows; scales (and int32 zeros) are ``[M, 1]`` or
``[1, 1]``. The kinds of range, all from `act_params`:
  dynamic per-row     `act_params` on each batch's rows at run time, a per-channel spec
  dynamic per-tensor  `act_params` on each batch's rows at run time, a per-tensor spec
  static              `act_params` once on calibration rows (per-tensor), stored, and passed to
                      `act_codes` / `act_fake_quant` at run time

The arithmetic is `q4lab.core.affine`'s, rows as the channels of a ``[K, M]`` weight, so the
integer and the simulated paths agree exactly: ``act_fake_quant(x) == act_codes(x) * scale``
(the fake value of a small negative input is -0.0 where the integer path has 0).
"""

from __future__ import annotations

import functools
from typing import Protocol

import jax
import jax.numpy as jnp

from q4lab.core import affine
from q4lab.core.lsq import lsq_grad_scale, lsq_round_trip
from q4lab.core.spec import QuantSpec

ACT_GRANULARITIES: tuple[str, ...] = ("per_channel", "per_tensor")


class Clipper(Protocol):
    """What picks a range: `q4lab.quantizers.RangeQuantizer.params` (``get_quantizer("mse")``,
    ...). Core cannot import the quantizers, so the caller passes one in."""

    def params(self, w2d: jax.Array, spec: QuantSpec) -> tuple[jax.Array, jax.Array | None]:
        """Scale ``[1 or G, N]`` (and zero) of a matrix ``w2d[K, N]``."""


def _check(x: jax.Array, spec: QuantSpec) -> None:
    if spec.granularity not in ACT_GRANULARITIES:
        raise ValueError(
            f"QuantSpec.granularity={spec.granularity!r} is invalid for activations; allowed: "
            f"{', '.join(ACT_GRANULARITIES)} (one scale per row, or per tensor)"
        )
    if jnp.ndim(x) != 2:
        raise ValueError(f"activation rows must be a matrix [M, K], got shape {jnp.shape(x)}")


def act_params(
    x: jax.Array, spec: QuantSpec, clipper: Clipper
) -> tuple[jax.Array, jax.Array | None]:
    """Scale ``[M, 1]`` (per-channel spec: one per row) or ``[1, 1]`` (per-tensor), in
    ``spec.scale_dtype``, and int32 zero of the same shape (None if symmetric), of rows
    ``x[M, K]`` by ``clipper``'s range. Static ranges are this, on calibration rows."""
    _check(x, spec)
    scale, zero = clipper.params(x.T.astype(jnp.float32), spec)
    return scale.T, None if zero is None else zero.T


def _as_groups(x: jax.Array, scale: jax.Array, zero: jax.Array | None):
    """Rows as the channels of one group: ``x[M, K] -> [1, K, M]``, scale/zero ``-> [1, 1, M]``
    (or ``[1, 1, 1]``), the layout of `q4lab.core.affine`."""
    return x.T[None], scale.T[:, None, :], None if zero is None else zero.T[:, None, :]


def act_codes(x: jax.Array, scale: jax.Array, zero: jax.Array | None, spec: QuantSpec) -> jax.Array:
    """Centered codes ``x_q - z_x`` ``[M, K]`` of rows ``x[M, K]``, in
    `q4lab.core.affine.centered_dtype` (int8; int16 for 8-bit asymmetric codes): the activation
    operand of `q4lab.ops.int_matmul`. ``scale``/``zero`` from `act_params`."""
    _check(x, spec)
    codes = affine.to_codes(*_as_groups(x, scale, zero), spec)[0].T
    if zero is not None:
        codes = codes - zero.astype(jnp.float32)
    return codes.astype(affine.centered_dtype(spec))


def act_fake_quant(
    x: jax.Array, scale: jax.Array, zero: jax.Array | None, spec: QuantSpec
) -> jax.Array:
    """Quantize-dequantize rows ``x[M, K]``: float32 ``(x_q - z_x) * s_x``, equal to
    ``act_codes(x) * scale``, with the clipped straight-through gradient.

    Backward: ``d out / d x`` is 1 where ``x``'s code before clipping lies in [qmin, qmax]
    (`q4lab.core.affine.in_range`) and 0 where it saturates: the straight-through estimator of
    Bengio et al. (2013), clipped to the representable range as LSQ (Esser et al. 2020) does for
    the data. ``scale`` and ``zero`` get no gradient, dynamic ones included (as
    `q4lab.core.fake_quant`; learned steps come with QAT).
    """
    _check(x, spec)
    return _fake_quant(jnp.asarray(x).astype(jnp.float32), scale, zero, spec)


# A custom JVP, not the ``w_hat + (x - stop_gradient(x)) * inside`` of `q4lab.core.fake_quant`:
# the forward stays the round trip itself (that sum turns -0.0 into +0.0 and an infinite input
# into NaN; harmless for weights, which are checked finite, not for activations).
@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def _fake_quant(x, scale, zero, spec):
    return affine.round_trip(*_as_groups(x, scale, zero), spec)[0].T


@_fake_quant.defjvp
def _fake_quant_jvp(spec, primals, tangents):
    x, scale, zero = primals
    inside = affine.in_range(*_as_groups(x, scale, zero), spec)[0].T
    return _fake_quant(x, scale, zero, spec), tangents[0] * inside


def act_lsq_fake_quant(
    x: jax.Array, scale: jax.Array, zero: jax.Array | None, spec: QuantSpec
) -> jax.Array:
    """`act_fake_quant`'s values with LSQ's gradients (`q4lab.core.lsq`): to ``x`` inside the
    range and to ``scale`` (float32 ``[M, 1]`` or ``[1, 1]``), scaled by ``1 / sqrt(K * Q_P)``
    (K values of a row per step, the paper's "features" of an activation)."""
    _check(x, spec)
    g = lsq_grad_scale(x.shape[1], spec)
    xg, sg, zg = _as_groups(jnp.asarray(x).astype(jnp.float32), scale, zero)
    return lsq_round_trip(xg, sg.astype(jnp.float32), zg, spec, g)[0].T
