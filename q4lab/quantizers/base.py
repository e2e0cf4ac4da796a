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
import hashlib
import inspect
import typing
from collections.abc import Mapping
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from q4lab.core import QTensor, QuantSpec, affine, normalize_in_axes, quantize, to_matrix
from q4lab.core.packing import pack_numpy, unpack_numpy
from q4lab.core.qtensor import InAxes, check_arrays

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


def check_quantized(
    qt: object, quantizer: Quantizer, spec: QuantSpec, w: jax.Array, in_axes: InAxes, name: str = ""
) -> QTensor:
    """``qt``, after checking that it is what ``quantizer.quantize(w, spec, in_axes=...)`` must
    return: a `QTensor` of that spec, shape and input axes whose arrays have the dtypes and
    shapes they must (`q4lab.core.qtensor.check_arrays`), with finite non-zero scales, codes and
    zeros in range and a true permutation. A ValueError names the quantizer and the layer, so a
    quantizer of one's own that errs fails at once instead of giving wrong scores."""
    where = f"quantizer {quantizer.name!r} ({type(quantizer).__qualname__})" + (
        f" on {name!r}" if name else ""
    )
    if not isinstance(qt, QTensor):
        raise ValueError(
            f"{where} returned an object of type {type(qt).__name__}; allowed: a QTensor"
        )
    axes = normalize_in_axes(in_axes, jnp.ndim(w))
    if qt.spec != spec:
        raise ValueError(f"{where} returned {qt.spec.describe()} ({qt.spec}); asked: {spec}")
    if qt.shape != tuple(jnp.shape(w)) or qt.in_axes != axes:
        raise ValueError(
            f"{where} returned a QTensor of shape {qt.shape}, in_axes {qt.in_axes}; asked: "
            f"shape {tuple(jnp.shape(w))}, in_axes {axes}"
        )
    try:
        check_arrays(qt)
    except ValueError as err:
        raise ValueError(f"{where} returned {err}") from None
    if any(isinstance(a, jax.core.Tracer) for a in qt.arrays().values()):
        return qt  # values unknown under jit
    scale = np.asarray(qt.scale, np.float32)
    if not np.all(np.isfinite(scale) & (scale != 0)):
        raise ValueError(
            f"{where} returned scales that are zero, NaN or Inf (in {spec.scale_dtype}, whose "
            "range a scale may leave: a weight too large for it, or a bug)"
        )
    if spec.bits > 4:  # held a byte each, so a code out of range is representable
        codes = np.asarray(qt.codes)
        if codes.min() < spec.qmin or codes.max() > spec.qmax:
            raise ValueError(
                f"{where} returned codes in [{codes.min()}, {codes.max()}]; allowed: "
                f"[{spec.qmin}, {spec.qmax}] at {spec.bits} bits"
            )
        if qt.zero is not None and not spec.float_zero and np.asarray(qt.zero).max() > spec.qmax:
            raise ValueError(f"{where} returned zero points above {spec.qmax}")
    if spec.float_zero and not np.isfinite(np.asarray(qt.zero, np.float32)).all():
        raise ValueError(f"{where} returned zero points that are NaN or Inf in {spec.scale_dtype}")
    if qt.perm is not None and not np.array_equal(np.sort(np.asarray(qt.perm)), np.arange(qt.k)):
        raise ValueError(f"{where} returned a perm that is not a permutation of the {qt.k} rows")
    if np.size(w) and _all_at_zero(qt) and _representable(w, spec):
        raise ValueError(
            f"{where} returned codes that all stand for 0, for a weight that is not all zero: an "
            "empty clipping range ([0, 0]) in every group, or a bug"
        )
    return qt


def _representable(w: jax.Array, spec: QuantSpec) -> bool:
    """Whether a step covering ``w``'s largest magnitude is non-zero in the scale dtype: weights
    too small for it (1e-8 under float16 scales) rightly quantize to 0."""
    step = float(np.abs(np.asarray(w, np.float32)).max()) / spec.range_steps
    return bool(jnp.asarray(step, jnp.float32).astype(spec.jnp_scale_dtype) != 0)


def _all_at_zero(qt: QTensor) -> bool:
    """True when every code of ``qt`` (layout rows) is its group's integer zero point, so the
    weight dequantizes to 0 everywhere; False for real-valued zero points. Compared as stored
    bytes (codes and zeros are packed alike along N), with no unpacking."""
    spec, codes = qt.spec, np.asarray(qt.codes)
    if spec.symmetric:  # code 0 is stored as zero bits at every width
        return not codes.any()
    if spec.float_zero or qt.layout != "rows":
        return False
    zero = np.asarray(qt.zero)
    if spec.granularity == "per_tensor":  # one zero point: a row of it, packed as a row is
        (z,) = unpack_numpy(zero, bits=spec.bits, signed=False, n=1).ravel()
        row = pack_numpy(np.full(qt.n, z), bits=spec.bits, signed=False)
        return bool((codes == row).all())
    groups = codes.reshape(zero.shape[0], -1, codes.shape[-1])
    return bool((groups == zero[:, None, :]).all())


class Quantizer(abc.ABC):
    """A named quantization strategy. Subclasses are frozen dataclasses holding their options."""

    name: ClassVar[str]
    # the statistics `quantize` reads; read it from an instance (options may add to it)
    needs: ClassVar[frozenset[str]] = frozenset()
    # "float": it fits real-valued zero points (HQQ); a Rule gives it asymmetric specs with them
    zero_point: ClassVar[str] = "int"
    # whether it rounds with real-valued zero points when a spec has them (GPTQ does not)
    takes_float_zero: ClassVar[bool] = True

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

    def inner(self) -> tuple[Quantizer, ...]:
        """The quantizers its options name and it runs (GPTQ's clipping, AWQ's final one)."""
        return ()


class RangeQuantizer(Quantizer):
    """Quantizers that pick a clipping range ``[lo, hi]`` per scale group, then round to nearest.

    Subclasses implement `weight_range` on the group view ``wg[G, g, N]``; the shared code turns the
    range into scales and zeros (`q4lab.core.affine`) and the codes. GPTQ reuses `params` for the
    scale search of each of its groups.
    """

    # its range is the data's whole range (min-max): a static activation range then takes the
    # bounds of every calibration row, not a sample (`q4lab.calibrate`, "act_bounds")
    full_range: ClassVar[bool] = False

    @abc.abstractmethod
    def weight_range(self, wg: jax.Array, spec: QuantSpec) -> tuple[jax.Array, jax.Array]:
        """Clipping range ``(lo, hi)`` of grouped weights ``wg[G, g, N]``; each ``[G, 1, N]``
        (``[1, 1, 1]`` per-tensor, where ``wg`` is the whole matrix as ``[1, K, N]``). Pure jnp,
        jit-compatible; other shapes are refused, naming the quantizer."""

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
    want = (1, 1, 1) if spec.granularity == "per_tensor" else (wg.shape[0], 1, wg.shape[2])
    got = tuple(jnp.shape(lo)), tuple(jnp.shape(hi))
    if got != (want, want):
        raise ValueError(
            f"quantizer {quantizer.name!r} ({type(quantizer).__qualname__}.weight_range) returned "
            f"ranges of shapes lo {got[0]}, hi {got[1]} for grouped weights {tuple(wg.shape)} "
            f"and {spec.describe()}; allowed: {want}, one (lo, hi) per scale group "
            "(reduce axis 1 of wg[G, g, N]; all axes per-tensor)"
        )
    scale, zero = affine.scale_zero_from_range(lo, hi, spec)
    return scale[:, 0, :], None if zero is None else zero[:, 0, :]


_params_jit = jax.jit(range_params, static_argnums=(0, 2))


def minmax_range(wg: jax.Array, spec: QuantSpec) -> tuple[jax.Array, jax.Array]:
    """The full range of each group: ``(min, max)`` over the group's axes."""
    axes = affine.reduce_axes(spec)
    return wg.min(axis=axes, keepdims=True), wg.max(axis=axes, keepdims=True)


_REGISTRY: dict[str, type[Quantizer]] = {}


def register(cls: type[Quantizer]) -> type[Quantizer]:
    """Class decorator: make a quantizer available by ``cls.name`` to recipes and experiments.

    ``cls``: a `Quantizer` subclass that is a frozen dataclass of its options, with a class
    attribute ``name``. A name another class holds is refused; the same class defined again
    (a notebook cell run twice: same module and qualified name) replaces the first.
    """
    how = (
        "a quantizer is a Quantizer (or RangeQuantizer) subclass, a frozen dataclass of its "
        "options with a class attribute name: @register above @dataclasses.dataclass(frozen=True)"
    )
    if not (isinstance(cls, type) and issubclass(cls, Quantizer)):
        raise ValueError(f"register({cls!r}): not a Quantizer subclass; {how}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"register({cls.__qualname__}): name={name!r} is invalid; {how}")
    if not dataclasses.is_dataclass(cls) or not cls.__dataclass_params__.frozen:
        raise ValueError(f"register({cls.__qualname__}): not a frozen dataclass; {how}")
    held = _REGISTRY.get(name)
    if held is not None and _origin(held) != _origin(cls):
        raise ValueError(f"quantizer name {name!r} is already registered by {held}")
    _REGISTRY[name] = cls
    return cls


def quantizer_identity(quantizer: Quantizer) -> str:
    """What a results row records of the quantizer that made it: its every option, defaults
    included (``MSE(p=2.0, grid=100, max_shrink=0.8)``), and for a class defined outside q4lab
    (whose code the manifest's git commit does not pin) a hash of its source, that of one
    named in its options too (GPTQ's clipping, in brackets). A row whose record differs from
    this now was made by other code or defaults (`q4lab run` says so)."""
    text = repr(quantizer)
    cls = type(quantizer)
    if not cls.__module__.startswith("q4lab.") and (source := _source(cls)):
        text += f" source sha256:{hashlib.sha256(source.encode()).hexdigest()[:12]}"
    for inner in quantizer.inner():  # one of one's own named in q4lab's options: its identity
        if (identity := quantizer_identity(inner)) != repr(inner):
            text += f" [{identity}]"
    return text


def _methods(cls: type) -> list:
    """The functions a class body defines, from files (not dataclass-made ones)."""
    return [
        f
        for f in vars(cls).values()
        if inspect.isfunction(f) and not f.__code__.co_filename.startswith("<")
    ]


def _source(cls: type) -> str | None:
    """A class's source; for one that `inspect` cannot find by its module (an experiment file's
    ``__experiment__``), its methods'. None where no source is kept (an interpreter prompt)."""
    try:
        return inspect.getsource(cls)
    except (OSError, TypeError):
        pass
    try:
        return "".join(inspect.getsource(f) for f in _methods(cls)) or None
    except (OSError, TypeError):
        return None


def _origin(cls: type) -> tuple[str, str, str]:
    """Where a class was defined: module and name, and for a class in an experiment file (every
    one runs as module ``__experiment__``) the file its methods come from."""
    files = {f.__code__.co_filename for f in _methods(cls)}
    where = ",".join(sorted(files)) if cls.__module__ == "__experiment__" else ""
    return cls.__module__, cls.__qualname__, where


_TYPE_WORDS = {bool: "True or False", int: "an int", float: "a number", str: "a string"}


def _check_option_types(cls: type[Quantizer], options: Mapping[str, object]) -> None:
    """Raise a ValueError naming an option whose value is not of its field's plain type (a
    string for a float, say), which would otherwise fail deep inside a traced computation."""
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):  # annotations that do not resolve: nothing to check
        return
    for key, value in options.items():
        hint = hints.get(key)
        if hint is bool:
            ok = isinstance(value, bool | np.bool_)
        elif hint is int:
            ok = isinstance(value, int | np.integer) and not isinstance(value, bool)
        elif hint is float:
            ok = isinstance(value, int | float | np.number) and not isinstance(value, bool)
        elif hint is str:
            ok = isinstance(value, str)
        else:
            continue
        if not ok:
            raise ValueError(
                f"quantizer {cls.name!r}: option {key}={value!r} is of type "
                f"{type(value).__name__}; allowed: {_TYPE_WORDS[hint]}"
            )


def available() -> tuple[str, ...]:
    """Registered quantizer names, sorted."""
    return tuple(sorted(_REGISTRY))


def range_quantizers() -> tuple[str, ...]:
    """Registered names of the quantizers that choose a range from the tensor alone (no
    calibration statistics): activation clipping, and weights where no inputs are seen."""
    return tuple(n for n in available() if issubclass(_REGISTRY[n], RangeQuantizer))


def quantizer_class(name: str) -> type[Quantizer]:
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown quantizer {name!r}; registered: {', '.join(available())} (a quantizer of "
            "one's own registers when its module is imported: import it in the experiment file, "
            "or name it with q4lab --plugin MODULE)"
        )
    return _REGISTRY[name]


def get_quantizer(name: str, **options: object) -> Quantizer:
    """Build a registered quantizer by name; unknown names or options raise a ValueError."""
    cls = quantizer_class(name)
    fields = {f.name for f in dataclasses.fields(cls)}  # `register` admits dataclasses only
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(
            f"quantizer {name!r} has no option(s) {unknown}; allowed: {sorted(fields) or 'none'}"
        )
    _check_option_types(cls, options)
    return cls(**options)
