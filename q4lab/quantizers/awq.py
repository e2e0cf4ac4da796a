"""AWQ: activation-aware weight quantization (Lin et al., "AWQ: Activation-aware Weight
Quantization for LLM Compression and Acceleration", MLSys 2024).

Input channels that carry large activations hold the salient weights. AWQ scales them up before
rounding, ``W' = diag(s) W``, and divides the layer's input by ``s`` at run time (a smoothing
`q4lab.core.transforms.InputTransform`, stored on the `QTensor` and counted by the ledger), so
their relative rounding error shrinks. The scales are ``s = mean|x|^alpha`` (normalised so
``max(s) * min(s) = 1``) with ``alpha`` from a grid search that minimises the layer's output error
on the calibration data, ``||X (W - diag(1/s) Q(diag(s) W))||^2``, computed from the Hessian
``H = 2 X^T X / n`` (`q4lab.quantizers.output_error`) rather than by re-running the inputs.

The final rounding is any registered quantizer (``quantizer``): ``minmax`` (AWQ's round to
nearest), ``mse`` (with a clipping search), or ``gptq`` (AWQ + GPTQ: GPTQ on the scaled weight
with the Hessian of the scaled input). The grid search rounds with that quantizer when it picks
ranges only, else with min-max.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from q4lab.core import QTensor, QuantSpec, fake_quant, from_matrix
from q4lab.core.qtensor import InAxes
from q4lab.core.transforms import InputTransform
from q4lab.quantizers.base import (
    ACTIVATIONS,
    CROSS,
    HESSIAN,
    Quantizer,
    RangeQuantizer,
    Stats,
    check_quantized,
    get_quantizer,
    range_params,
    register,
    weight_matrix,
)
from q4lab.quantizers.gptq import output_error
from q4lab.quantizers.minmax import MinMax


def awq_scales(magnitude: jax.Array, alpha: jax.Array) -> jax.Array:
    """``mean|x|^alpha`` per input channel, normalised to ``max * min = 1`` (float32 ``[K]``)."""
    s = jnp.power(jnp.maximum(magnitude.astype(jnp.float32), 1e-4), alpha)
    return s / jnp.sqrt(jnp.max(s) * jnp.min(s))


@functools.partial(jax.jit, static_argnums=(0, 5))
def _search_errors(quantizer, w2d, hessian, magnitude, alphas, spec) -> jax.Array:
    """Output error of each ``alpha`` (rounding by the range ``quantizer``)."""

    def error(alpha):
        s = awq_scales(magnitude, alpha)
        scaled = w2d * s[:, None]
        scale, zero = range_params(quantizer, scaled, spec)
        w_hat = fake_quant(scaled, spec, scale, zero) / s[:, None]
        return output_error(w2d, w_hat, hessian)

    return jax.lax.map(error, alphas)


@register
@dataclasses.dataclass(frozen=True, kw_only=True)
class AWQ(Quantizer):
    """Activation-aware per-channel scaling searched on calibration data, then ``quantizer``."""

    name = "awq"

    grid: int = 20  # alphas 0, 1/grid, ..., (grid-1)/grid, as in the reference implementation
    quantizer: str = "minmax"  # the final rounding: a registered quantizer other than awq
    quantizer_options: tuple[tuple[str, Any], ...] | Mapping[str, Any] = ()

    def __post_init__(self) -> None:
        options = tuple(sorted(dict(self.quantizer_options).items()))
        object.__setattr__(self, "quantizer_options", options)
        if isinstance(self.grid, bool) or not isinstance(self.grid, int) or self.grid < 1:
            raise ValueError(f"awq grid={self.grid!r} is invalid; allowed: an int >= 1")
        if self.quantizer == self.name:
            raise ValueError("awq quantizer='awq' is invalid; allowed: any other quantizer")
        self.final()  # validates the name and options

    @property
    def zero_point(self) -> str:  # type: ignore[override]
        """The final quantizer's: AWQ then HQQ takes real-valued zero points."""
        return self.final().zero_point

    @property
    def takes_float_zero(self) -> bool:  # type: ignore[override]
        return self.final().takes_float_zero

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        """The search's statistics and the final quantizer's (GPTAQ's cross moment)."""
        return frozenset({HESSIAN, ACTIVATIONS}) | self.final().needs

    def inner(self) -> tuple[Quantizer, ...]:
        return (self.final(),)

    def final(self) -> Quantizer:
        """The quantizer of the final rounding."""
        return get_quantizer(self.quantizer, **dict(self.quantizer_options))

    def search(self, w2d: jax.Array, stats: Stats, spec: QuantSpec) -> tuple[float, np.ndarray]:
        """The chosen ``alpha`` and the output error of every grid point."""
        final = self.final()
        rounding = final if isinstance(final, RangeQuantizer) else MinMax()
        alphas = jnp.arange(self.grid, dtype=jnp.float32) / self.grid
        errors = np.asarray(
            _search_errors(rounding, w2d, stats[HESSIAN], stats[ACTIVATIONS], alphas, spec)
        )
        return float(alphas[int(np.nanargmin(errors))]), errors

    def quantize(
        self,
        w: jax.Array,
        spec: QuantSpec,
        *,
        in_axes: InAxes = 0,
        stats: Stats | None = None,
        name: str = "",
    ) -> QTensor:
        axes, w2d = weight_matrix(w, spec, in_axes, name)
        missing = sorted(self.needs - set(stats or {}))
        if missing:
            where = f" of {name!r}" if name else ""
            raise ValueError(f"awq needs the calibration statistics {missing}{where}")
        alpha, _ = self.search(w2d, stats, spec)
        transform = InputTransform(smooth=awq_scales(stats[ACTIVATIONS], jnp.float32(alpha)))
        scaled = from_matrix(transform.fold(w2d), jnp.shape(w), axes)
        final_stats = {HESSIAN: transform.covariance(stats[HESSIAN])}
        if CROSS in stats:  # X^T X_float of the scaled inputs (as `transform_stats`)
            final_stats[CROSS] = transform.covariance(stats[CROSS].T)
        final = self.final()
        qt = final.quantize(scaled, spec, in_axes=axes, stats=final_stats, name=name)
        qt = check_quantized(qt, final, spec, scaled, axes, name)  # names the inner quantizer
        return dataclasses.replace(qt, transform=transform)


__all__ = ["AWQ", "awq_scales"]
