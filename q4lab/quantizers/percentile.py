"""Percentile clipping: the range of each group ends at a percentile of its values.

Symmetric: ``amax = quantile(|w|, p)``. Asymmetric: ``lo = quantile(w, 1 - p)``,
``hi = quantile(w, p)``. Values beyond are saturated; on heavy-tailed weights this trades a few
clipped outliers for a finer step for everything else (cf. McKinstry et al. 2018; Wu et al. 2020,
"Integer Quantization for Deep Learning Inference", percentile calibration).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from q4lab.core import QuantSpec, affine
from q4lab.quantizers.base import RangeQuantizer, register


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class Percentile(RangeQuantizer):
    """Clip each group at a percentile of its (absolute) values."""

    name = "percentile"

    percentile: float = 99.9  # in (50, 100]; 100 is min-max

    @property
    def full_range(self) -> bool:  # type: ignore[override]
        return float(self.percentile) >= 100.0

    def __post_init__(self) -> None:
        if not 50.0 < float(self.percentile) <= 100.0:
            raise ValueError(
                f"Percentile.percentile={self.percentile!r} is invalid; "
                "allowed: a float in (50, 100]"
            )

    def weight_range(self, wg: jax.Array, spec: QuantSpec) -> tuple[jax.Array, jax.Array]:
        axes = affine.reduce_axes(spec)
        q = self.percentile / 100.0
        if spec.symmetric:
            amax = jnp.quantile(jnp.abs(wg), q, axis=axes, keepdims=True)
            return -amax, amax
        lo = jnp.quantile(wg, 1.0 - q, axis=axes, keepdims=True)
        hi = jnp.quantile(wg, q, axis=axes, keepdims=True)
        return lo, hi
