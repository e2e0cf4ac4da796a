"""The affine quantization arithmetic shared by real and fake quantization.

A weight is seen as a matrix ``w[K, N]`` (K: inputs, N: outputs) and viewed as groups
``[G, g, N]`` along K. Scales and zeros have shape ``[G, 1, N]`` in that view (``[1, 1, 1]`` for
per-tensor). Every path (``quantize``/``dequantize``, fake quantization, the quantizers' searches)
goes through these functions, so they agree bit for bit:

    codes = clip(round(w / scale) + zero, qmin, qmax)
    w_hat = (codes - zero) * scale          (float32)

A float zero point (``QuantSpec.zero_point="float"``, HQQ) shifts before rounding:
``codes = clip(round(w / scale + zero), qmin, qmax)``; with an integer zero that form would
differ from the one above on ties (half to even), so each kind keeps its own.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from q4lab.core.spec import QuantSpec


def group_view(w2d: jax.Array, spec: QuantSpec) -> jax.Array:
    """``[K, N] -> [G, g, N]``; one group spanning K unless the spec is per-group."""
    k, n = w2d.shape
    groups = spec.num_groups(k)
    return w2d.reshape(groups, k // groups, n)


def reduce_axes(spec: QuantSpec) -> tuple[int, ...]:
    """Axes of the ``[G, g, N]`` view that one scale covers."""
    return (0, 1, 2) if spec.granularity == "per_tensor" else (1,)


def scale_zero_from_range(
    lo: jax.Array, hi: jax.Array, spec: QuantSpec
) -> tuple[jax.Array, jax.Array | None]:
    """Scale (in ``spec.scale_dtype``) and zero point: int32, in the scale dtype when
    ``spec.float_zero`` (``-lo / scale``, unrounded), or None if symmetric.

    Symmetric: ``scale = max(|lo|, |hi|) / (2^(b-1) - 1)``, codes signed (with
    ``spec.symmetric_grid == "half_step"``: ``/ (2^(b-1) - 1/2)``, GPTQ's reference grid).
    Asymmetric: the range is widened to contain 0 (so 0 is exact, as in GPTQ's quantizer),
    ``scale = (hi - lo) / (2^b - 1)``, ``zero = round(-lo / scale)``; with float zero points
    ``zero = -lo / scale`` unrounded.
    A zero range (constant or all-zero group) gets scale 1 instead of a division by zero; a scale
    that underflows the scale dtype gets the same treatment.
    """
    lo = lo.astype(jnp.float32)
    hi = hi.astype(jnp.float32)
    if spec.symmetric:
        scale = jnp.maximum(jnp.abs(lo), jnp.abs(hi)) / spec.range_steps
    else:  # widened to contain 0 with float zeros too: their start stays in [0, qmax], so a
        # group far from 0 and narrow cannot put its zero beyond float16's range
        lo = jnp.minimum(lo, 0.0)
        hi = jnp.maximum(hi, 0.0)
        scale = (hi - lo) / spec.qmax
    scale = scale.astype(spec.jnp_scale_dtype)
    scale = jnp.where(scale == 0, jnp.ones_like(scale), scale)
    if spec.symmetric:
        return scale, None
    if spec.float_zero:  # held in the scale dtype, as HQQ keeps it
        return scale, (-lo / scale.astype(jnp.float32)).astype(spec.jnp_scale_dtype)
    zero = jnp.clip(jnp.round(-lo / scale.astype(jnp.float32)), spec.qmin, spec.qmax)
    return scale, zero.astype(jnp.int32)


def _unclipped_codes(
    wg: jax.Array, scale: jax.Array, zero: jax.Array | None, spec: QuantSpec
) -> jax.Array:
    q = wg.astype(jnp.float32) / scale.astype(jnp.float32)
    if zero is None:
        return jnp.round(q)
    if spec.float_zero:
        return jnp.round(q + zero.astype(jnp.float32))
    return jnp.round(q) + zero.astype(jnp.float32)


def to_codes(wg: jax.Array, scale: jax.Array, zero: jax.Array | None, spec: QuantSpec) -> jax.Array:
    """Integer codes (float32 holding integers) of grouped weights ``wg[G, g, N]``."""
    return jnp.clip(_unclipped_codes(wg, scale, zero, spec), spec.qmin, spec.qmax)


def in_range(wg: jax.Array, scale: jax.Array, zero: jax.Array | None, spec: QuantSpec) -> jax.Array:
    """Boolean mask of ``wg``: True where the code before clipping lies in [qmin, qmax], i.e.
    where `to_codes` does not saturate (the support of a straight-through gradient)."""
    raw = _unclipped_codes(wg, scale, zero, spec)
    return (raw >= spec.qmin) & (raw <= spec.qmax)


def from_codes(codes: jax.Array, scale: jax.Array, zero: jax.Array | None) -> jax.Array:
    """Float32 reconstruction ``(codes - zero) * scale`` (broadcasting over the group view)."""
    q = codes.astype(jnp.float32)
    if zero is not None:
        q = q - zero.astype(jnp.float32)
    return q * scale.astype(jnp.float32)


def round_trip(wg: jax.Array, scale: jax.Array, zero: jax.Array | None, spec: QuantSpec):
    """``from_codes(to_codes(wg))``: the values a quantized weight takes, in float32."""
    return from_codes(to_codes(wg, scale, zero, spec), scale, zero)


def centered_dtype(spec: QuantSpec) -> jnp.dtype:
    """The narrowest integer type of ``code - zero``: int8, except 8-bit asymmetric codes, whose
    centered values span [-255, 255] (int16)."""
    return jnp.dtype(jnp.int16 if spec.bits == 8 and not spec.symmetric else jnp.int8)
