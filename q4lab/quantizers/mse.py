"""MSE-optimal clipping: per group, the shrink of the min-max range that minimises the Lp error.

For shrink factors ``a = 1, 1 - 1/grid, ..., 1 - (steps-1)/grid`` with ``steps = max_shrink*grid``
the range ``[a*lo, a*hi]`` is tried and, per group, the one with the least
``sum |w - dequant(quant(w))|^p`` is kept: the grid search of GPTQ's quantizer (Frantar et al.
2023, ``find_params`` with ``mse=True``; p=2.4 there) and of AQT's SNR calibration. ``a = 1`` (plain
min-max) is always a candidate and wins ties, so the error never exceeds min-max's.
Candidates run in a ``lax.scan`` that keeps the best so far: memory stays O(weight), and compile
time does not depend on the grid size.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from q4lab.core import QuantSpec, affine
from q4lab.quantizers.base import RangeQuantizer, minmax_range, register


def lp_error(wg: jax.Array, lo: jax.Array, hi: jax.Array, spec: QuantSpec, p: float) -> jax.Array:
    """``sum |w - round_trip(w)|^p`` per scale group for the range ``[lo, hi]``."""
    scale, zero = affine.scale_zero_from_range(lo, hi, spec)
    err = jnp.abs(affine.round_trip(wg, scale, zero, spec) - wg) ** p
    return err.sum(axis=affine.reduce_axes(spec), keepdims=True)


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class MSE(RangeQuantizer):
    """Grid search of the clipping ratio minimising the Lp reconstruction error per group."""

    name = "mse"

    p: float = 2.0  # the norm of the error; 2 is MSE, GPTQ uses 2.4
    grid: int = 100  # step of the shrink factor is 1/grid
    max_shrink: float = 0.8  # ranges down to (1 - max_shrink) of min-max's, less one grid step

    def __post_init__(self) -> None:
        if not float(self.p) > 0:
            raise ValueError(f"MSE.p={self.p!r} is invalid; allowed: a float > 0")
        if not isinstance(self.grid, int) or self.grid < 1:
            raise ValueError(f"MSE.grid={self.grid!r} is invalid; allowed: an int >= 1")
        if not 0.0 < float(self.max_shrink) < 1.0:
            raise ValueError(f"MSE.max_shrink={self.max_shrink!r} is invalid; allowed: (0, 1)")
        if int(self.max_shrink * self.grid) < 2:  # one candidate: min-max's range, named mse
            raise ValueError(
                f"MSE grid={self.grid} with max_shrink={self.max_shrink} tries min-max's range "
                "alone; allowed: int(max_shrink * grid) >= 2"
            )

    def shrink_factors(self) -> jax.Array:
        """``1, 1 - 1/grid, ..., 1 - (steps-1)/grid`` for ``steps = int(max_shrink * grid)``
        (the smallest is 0.21 by default, as in GPTQ's ``find_params``)."""
        steps = int(self.max_shrink * self.grid)
        return 1.0 - jnp.arange(steps, dtype=jnp.float32) / self.grid

    def weight_range(self, wg: jax.Array, spec: QuantSpec) -> tuple[jax.Array, jax.Array]:
        lo, hi = minmax_range(wg, spec)

        def step(best, a):
            best_err, best_lo, best_hi = best
            err = lp_error(wg, a * lo, a * hi, spec, self.p)
            better = err < best_err
            return (
                jnp.where(better, err, best_err),
                jnp.where(better, a * lo, best_lo),
                jnp.where(better, a * hi, best_hi),
            ), None

        init = (jnp.full(lo.shape, jnp.inf, jnp.float32), lo, hi)
        (_, best_lo, best_hi), _ = jax.lax.scan(step, init, self.shrink_factors())
        return best_lo, best_hi
