"""Min-max (round-to-nearest, RTN): the range of each group is its full min..max.

Symmetric: ``scale = max|w| / (2^(b-1) - 1)``. Asymmetric: ``scale = (max - min) / (2^b - 1)``
with the range widened to contain zero. No clipping, so no value is ever saturated.
"""

from __future__ import annotations

import dataclasses

import jax

from q4lab.core import QuantSpec
from q4lab.quantizers.base import RangeQuantizer, minmax_range, register


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class MinMax(RangeQuantizer):
    """Round-to-nearest over the full range of each group."""

    name = "minmax"
    full_range = True

    def weight_range(self, wg: jax.Array, spec: QuantSpec) -> tuple[jax.Array, jax.Array]:
        return minmax_range(wg, spec)
