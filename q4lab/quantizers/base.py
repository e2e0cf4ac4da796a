"""The quantizer interface, the clipping-range family, and the registry by name.

A quantizer turns one float weight into a `QTensor` for a given `QuantSpec`. It declares which
calibration statistics it needs (``needs``) so calibration collects only those:
  HESSIAN      the proxy ``H = 2 X^T X / n`` of the layer's inputs ``X[n, K]`` (GPTQ)
  ACTIVATIONS  the mean ``|x|`` of each input channel (activation-aware scaling, AWQ)
  CROSS        ``C = 2 X^T X_float / n``: the inputs against the float model's inputs on the same
               rows (GPTQ's float target; sequential quantization only)
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from q4lab.core import QTensor, QuantSpec, affine, normalize_in_axes, quantize, to_matrix
from q4lab.core.qtensor import InAxes

HESSIAN = "hessian"
ACTIVATIONS = "act_absmean"
CROSS = "cross"
Stats = Mapping[str, jax.Array]


def check_finite(w: jax.Array, name: str = "") -> None:
    """Raise a ValueError if a concrete weight holds NaN or Inf (it would give NaN scales).

    Under ``jit`` the values are unknown and the check is skipped: validate before tracing.
    """
    if isinstance(w, jax.core.Tracer):
        return
    arr = np.asarray(w)
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        where = f" {name!r}" if name else ""
        raise ValueError(
            f"weight{where} of shape {arr.shape} holds {int(bad.sum())} NaN/Inf value(s), first at "
            f"index {first}; quantizing it would give NaN scales. Fix the weight (or exclude the "
            "layer from the recipe)."
        )


def weight_matrix(
    w: jax.Array, spec: QuantSpec, in_axes: InAxes, name: str = ""
) -> tuple[tuple[int, ...], jax.Array]:
    """Checked input of every quantizer: ``(in_axes normalised, w as float32 [K, N])``.

    Raises a ValueError (naming ``name``) for NaN/Inf weights, bad ``in_axes`` or a group size
    that does not divide K.
    """
    check_finite(w, name)
    axes = normalize_in_axes(in_axes, jnp.ndim(w))
    w2d = to_matrix(jnp.asarray(w, jnp.float32), axes)
    spec.check_input_size(w2d.shape[0], where=repr(name) if name else "")
    return axes, w2d


class Quantizer(abc.ABC):
    """A named quantization strategy. Subclasses are frozen dataclasses holding their options."""

    name: ClassVar[str]
    # the statistics `quantize` reads; read it from an instance (options may add to it)
    needs: ClassVar[frozenset[str]] = frozenset()

    @abc.abstractmethod
    def quantize(
        self,
        w: jax.Array,
        spec: QuantSpec,
        *,
        in_axes: InAxes = 0,
        stats: Stats | None = None,
        name: str = "",
    ) -> QTensor:
        """Quantize ``w`` (inputs along ``in_axes``) to ``spec``; ``stats`` holds ``needs``."""


class RangeQuantizer(Quantizer):
    """Quantizers that pick a clipping range ``[lo, hi]`` per scale group, then round to nearest.

    Subclasses implement `weight_range` on the group view ``wg[G, g, N]``; the shared code turns the
    range into scales and zeros (`q4lab.core.affine`) and the codes. GPTQ reuses `params` for the
    scale search of each of its groups.
    """

    @abc.abstractmethod
    def weight_range(self, wg: jax.Array, spec: QuantSpec) -> tuple[jax.Array, jax.Array]:
        """Clipping range ``(lo, hi)`` of grouped weights ``wg[G, g, N]``; each ``[G, 1, N]``
        (``[1, 1, 1]`` per-tensor). Pure jnp, jit-compatible."""

    def params(self, w2d: jax.Array, spec: QuantSpec) -> tuple[jax.Array, jax.Array | None]:
        """Scale ``[G, N]`` (and zero) for a weight matrix ``w2d[K, N]``; jit-compiled."""
        spec.check_input_size(w2d.shape[0])
        return _params_jit(self, w2d, spec)

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
        scale, zero = self.params(w2d, spec)
        return quantize(w, spec, scale, zero, in_axes=axes)


def range_params(
    quantizer: RangeQuantizer, w2d: jax.Array, spec: QuantSpec
) -> tuple[jax.Array, jax.Array | None]:
    """`RangeQuantizer.params` without its jit and checks, for use inside traced code."""
    wg = affine.group_view(w2d.astype(jnp.float32), spec)
    lo, hi = quantizer.weight_range(wg, spec)
    scale, zero = affine.scale_zero_from_range(lo, hi, spec)
    return scale[:, 0, :], None if zero is None else zero[:, 0, :]


_params_jit = jax.jit(range_params, static_argnums=(0, 2))


def minmax_range(wg: jax.Array, spec: QuantSpec) -> tuple[jax.Array, jax.Array]:
    """The full range of each group: ``(min, max)`` over the group's axes."""
    axes = affine.reduce_axes(spec)
    return wg.min(axis=axes, keepdims=True), wg.max(axis=axes, keepdims=True)


_REGISTRY: dict[str, type[Quantizer]] = {}


def register(cls: type[Quantizer]) -> type[Quantizer]:
    """Class decorator: make a quantizer available by ``cls.name`` to recipes and experiments."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(
            f"quantizer name {cls.name!r} is already registered by {_REGISTRY[cls.name]}"
        )
    _REGISTRY[cls.name] = cls
    return cls


def available() -> tuple[str, ...]:
    """Registered quantizer names, sorted."""
    return tuple(sorted(_REGISTRY))


def range_quantizers() -> tuple[str, ...]:
    """Registered names of the quantizers that choose a range from the tensor alone (no
    calibration statistics): activation clipping, and weights where no inputs are seen."""
    return tuple(n for n in available() if issubclass(_REGISTRY[n], RangeQuantizer))


def quantizer_class(name: str) -> type[Quantizer]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown quantizer {name!r}; registered: {', '.join(available())}")
    return _REGISTRY[name]


def get_quantizer(name: str, **options: object) -> Quantizer:
    """Build a registered quantizer by name; unknown names or options raise a ValueError."""
    cls = quantizer_class(name)
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(
            f"quantizer {name!r} has no option(s) {unknown}; allowed: {sorted(fields) or 'none'}"
        )
    return cls(**options)
