"""Integer-code matmuls: W4A16 (weight-only) and W4A4 (both operands integer codes).

Shapes: activations ``x[M, K]``, weight `QTensor` ``[K, N]`` with scale ``[G, N]`` (groups of g
along K). W4A4 multiplies *centered* codes ``x_q - z_x`` and ``w_q - z_w``: each lies in
[-(2^b - 1), 2^b - 1], so 4-bit codes fit int8 and the product runs as an int8 ``dot_general``
with int32 accumulation (XLA cannot compile int4 x int4 dots on CPU; int8 units are what GPUs
without int4 tensor cores have). The float scales are applied after the integer dot:

    y[m, n] = s_x[m] * sum_g s_w[g, n] * sum_{k in g} xc[m, k] * wc[k, n]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from q4lab.core import QTensor, QuantSpec, affine, dequantize_matrix


def w4a16_matmul(x: jax.Array, qt: QTensor) -> jax.Array:
    """``x[M, K] @ dequantize(qt)[K, N]`` in float32, dequantizing the packed codes inside jit."""
    return jnp.dot(x.astype(jnp.float32), dequantize_matrix(qt))


def centered_weight_codes(qt: QTensor) -> jax.Array:
    """``w_q - z_w`` as int8 ``[K, N]`` in stored row order (see `QTensor.perm`)."""
    codes = qt.int_codes().astype(jnp.int32)
    zero = qt.int_zero()
    if zero is not None:
        codes = affine.group_view(codes, qt.spec) - zero[:, None, :]
        codes = codes.reshape(qt.k, qt.n)
    return codes.astype(jnp.int8)


def quantize_rows(
    x: jax.Array, scale: jax.Array, zero: jax.Array | None, spec: QuantSpec
) -> jax.Array:
    """Centered activation codes ``x_q - z_x`` (int8) of ``x[M, K]``; scale/zero ``[M, 1]`` or
    ``[1, 1]``. Same arithmetic as `q4lab.core.affine`, viewed with rows as channels."""
    codes = affine.to_codes(x.T[None], scale.T[:, None, :], _t(zero), spec)[0].T
    if zero is not None:
        codes = codes - zero.astype(jnp.float32)
    return codes.astype(jnp.int8)


def fake_quantize_rows(
    x: jax.Array, scale: jax.Array, zero: jax.Array | None, spec: QuantSpec
) -> jax.Array:
    """The float values `quantize_rows` stands for: ``(x_q - z_x) * s_x``."""
    return affine.round_trip(x.T[None], scale.T[:, None, :], _t(zero), spec)[0].T


def _t(zero: jax.Array | None) -> jax.Array | None:
    return None if zero is None else zero.T[:, None, :]


def int_matmul(xc: jax.Array, x_scale: jax.Array, qt: QTensor) -> jax.Array:
    """W4A4: centered int8 activation codes ``xc[M, K]`` (row scales ``x_scale[M or 1, 1]``) times
    the weight's centered codes, int32 accumulation per group, then both scales. Float32 ``[M, N]``.
    Rows of ``xc`` are in logical order; an act-order permutation is applied here."""
    if qt.perm is not None:
        xc = xc[:, qt.perm]
    wc = centered_weight_codes(qt)
    groups = qt.scale.shape[0]
    m = xc.shape[0]
    acc = jnp.einsum(
        "mgk,gkn->mgn",
        xc.reshape(m, groups, qt.k // groups),
        wc.reshape(groups, qt.k // groups, qt.n),
        preferred_element_type=jnp.int32,
    )
    y = jnp.sum(acc.astype(jnp.float32) * qt.scale.astype(jnp.float32)[None], axis=1)
    return y * x_scale.astype(jnp.float32)
