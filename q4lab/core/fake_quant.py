"""Fake quantization: round in the forward pass, straight-through gradient in the backward pass.

The forward values are exactly ``dequantize(quantize(w, spec, scale, zero))`` (same arithmetic,
`q4lab.core.affine`). The gradient with respect to ``w`` is the straight-through estimator of
Bengio et al. (2013): identity where ``w`` lies inside the representable range, zero where it is
clipped. Scales and zeros get no gradient here (learned step sizes come with QAT).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from q4lab.core import affine
from q4lab.core.qtensor import InAxes, from_matrix, normalize_in_axes, to_matrix
from q4lab.core.spec import QuantSpec


def fake_quant(
    w: jax.Array,
    spec: QuantSpec,
    scale: jax.Array,
    zero: jax.Array | None = None,
    *,
    in_axes: InAxes = 0,
) -> jax.Array:
    """Quantize-dequantize ``w`` (any rank) with a straight-through gradient; float32 result.

    ``scale``/``zero``: the grid of `QTensor` (``[G, N]``, ``[1, N]`` or ``[1, 1]``).
    """
    axes = normalize_in_axes(in_axes, w.ndim)
    w2d = to_matrix(jnp.asarray(w, jnp.float32), axes)
    spec.check_input_size(w2d.shape[0])
    wg = affine.group_view(w2d, spec)
    scale_g = jax.lax.stop_gradient(scale.astype(spec.jnp_scale_dtype))[:, None, :]
    zero_g = None if zero is None else jax.lax.stop_gradient(zero)[:, None, :]
    inside = affine.in_range(wg, scale_g, zero_g, spec)
    w_hat = jax.lax.stop_gradient(affine.round_trip(wg, scale_g, zero_g, spec))
    straight_through = (wg - jax.lax.stop_gradient(wg)) * inside
    return from_matrix((w_hat + straight_through).reshape(w2d.shape), w.shape, axes)
