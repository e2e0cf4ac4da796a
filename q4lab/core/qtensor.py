"""`QTensor`: a quantized weight held as packed integer codes plus scales and zero points.

Any weight is stored as a matrix ``[K, N]``: its input (contraction) axes moved to the front and
flattened into K, the rest flattened into N. ``in_axes`` and ``shape`` restore the logical tensor.
A Flax ``Dense`` kernel ``[in, out]`` has ``in_axes=(0,)``; a ``Conv`` kernel ``[kh, kw, in, out]``
has ``in_axes=(0, 1, 2)`` (K = kh*kw*in, groups then run along that flattened axis).

The codes of that matrix are packed in one of two layouts (`LAYOUTS`, `QTensor.layout`):
``"rows"``, each row of N codes packed along N (what `quantize` makes, every width), or
``"kmajor"`` (4-bit only, made by `relayout`), each column packed along K: the operand layout of
Hopper's tensor cores (`q4lab.ops.mosaic_gpu`). Both hold the same bytes of codes (but for the
padding of an odd N in rows), and the size ledger counts whichever is held.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from q4lab.core import affine
from q4lab.core.packing import pack, unpack
from q4lab.core.spec import QuantSpec
from q4lab.core.transforms import InputTransform

InAxes = int | Sequence[int]
LAYOUTS: tuple[str, ...] = ("rows", "kmajor")


def normalize_in_axes(in_axes: InAxes, ndim: int) -> tuple[int, ...]:
    """Positive, sorted input axes; raises a ValueError naming ``in_axes`` if they do not fit."""
    axes = (in_axes,) if isinstance(in_axes, int | np.integer) else tuple(in_axes)
    if ndim < 2:
        raise ValueError(f"a weight needs at least 2 dims (inputs and outputs), got ndim={ndim}")
    if not axes or any(not -ndim <= int(a) < ndim for a in axes):
        norm: tuple[int, ...] = ()
    else:
        norm = tuple(sorted({int(a) % ndim for a in axes}))
    if not norm or len(norm) != len(axes) or len(norm) == ndim:
        raise ValueError(
            f"in_axes={in_axes!r} is invalid for a weight of ndim={ndim}; allowed: distinct axes "
            f"in [-{ndim}, {ndim}) leaving at least one output axis"
        )
    return norm


def _perm(in_axes: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    return in_axes + tuple(a for a in range(ndim) if a not in in_axes)


def to_matrix(w: jax.Array, in_axes: tuple[int, ...]) -> jax.Array:
    """Logical weight -> ``[K, N]`` (input axes first, flattened)."""
    perm = _perm(in_axes, w.ndim)
    k = math.prod(w.shape[a] for a in in_axes)
    return jnp.transpose(w, perm).reshape(k, -1)


def from_matrix(w2d: jax.Array, shape: tuple[int, ...], in_axes: tuple[int, ...]) -> jax.Array:
    """``[K, N]`` -> the logical weight of ``shape``; inverse of `to_matrix`."""
    perm = _perm(in_axes, len(shape))
    moved = w2d.reshape(tuple(shape[a] for a in perm))
    return jnp.transpose(moved, np.argsort(perm))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class QTensor:
    """A quantized weight. A pytree: the arrays are leaves, the rest is static.

    codes: layout ``"rows"``: each row of N codes packed at its width (`q4lab.core.packing`):
        ``uint8[K, L]`` with ``L = spec.packed_length(N)``, i.e. ``ceil(N/4)`` bytes at 2 bits
        (four codes per byte), ``3 * ceil(N/8)`` at 3 bits (eight codes per 24-bit word),
        ``ceil(N/2)`` at 4 bits (XLA int4 nibbles); ``int8`` (symmetric) / ``uint8``
        (asymmetric) ``[K, N]`` at 5..8 bits. Layout ``"kmajor"`` (4 bits, even K):
        ``uint8[N, K/2]``, byte ``[n, j]`` holding stored rows 2j (low nibble) and 2j + 1 of
        column n as two's-complement nibbles: the code itself when symmetric, ``code - 8`` when
        not (so every nibble reads as a signed int4; XLA's int4 ``[N, K]`` by a bit cast).
    scale: ``[G, N]`` (per-group), ``[1, N]`` (per-channel) or ``[1, 1]`` (per-tensor), in
        ``spec.scale_dtype``.
    zero: integer zero points, same grid as ``scale``, packed along N (unsigned, as codes in
        the rows layout: ``uint8[G, spec.packed_length(N)]``, whatever the layout); with
        ``spec.float_zero`` real-valued ones ``[G, N]`` in the scale dtype (HQQ); None if
        symmetric.
    perm: optional int row permutation of the ``[K, N]`` matrix (GPTQ act-order): row ``i`` of the
        stored codes is row ``perm[i]`` of the logical matrix. None when rows are in order.
    transform: the layer's input transform (`q4lab.core.transforms`), or None. With one, the
        codes are those of ``transform.fold(W)`` and meet ``transform.apply(x)``;
        `dequantize` gives the folded weight.
    layout: how ``codes`` are laid out, one of `LAYOUTS` (see ``codes``; `relayout` converts).
    """

    codes: jax.Array
    scale: jax.Array
    zero: jax.Array | None
    perm: jax.Array | None
    spec: QuantSpec = dataclasses.field(metadata={"static": True})
    shape: tuple[int, ...] = dataclasses.field(metadata={"static": True})
    in_axes: tuple[int, ...] = dataclasses.field(metadata={"static": True})
    transform: InputTransform | None = None
    layout: str = dataclasses.field(default="rows", metadata={"static": True})

    def __post_init__(self) -> None:
        _check_layout(self.layout, self.spec, self.k)

    @property
    def k(self) -> int:
        return math.prod(self.shape[a] for a in self.in_axes)

    @property
    def n(self) -> int:
        return math.prod(self.shape) // self.k

    @property
    def size(self) -> int:
        """Number of logical weights."""
        return math.prod(self.shape)

    def int_codes(self) -> jax.Array:
        """Codes as ``[K, N]`` in their narrow integer dtype (stored row order): int4/uint4 at 4
        bits, int8/uint8 otherwise."""
        if self.layout == "kmajor":  # signed nibbles along K: the codes, or code - 8
            signed = unpack(self.codes, bits=4, signed=True, n=self.k).T
            if self.spec.symmetric:
                return signed
            return (signed.astype(jnp.int8) + KMAJOR_OFFSET).astype(jnp.uint4)
        return unpack(self.codes, bits=self.spec.bits, signed=self.spec.symmetric, n=self.n)

    def int_zero(self) -> jax.Array | None:
        """Zero points as ``[G, N]`` integers, or None. Float zero points (``spec.float_zero``)
        are not integers: `zero_points` gives either kind."""
        if self.zero is None:
            return None
        if self.spec.float_zero:
            raise ValueError(
                f"int_zero() of {self.spec.describe()}: its zero points are real numbers; "
                "allowed: zero_points() (float32), or a path that takes them"
            )
        return unpack(self.zero, bits=self.spec.bits, signed=False, n=self.scale.shape[-1]).astype(
            jnp.int32
        )

    def zero_points(self) -> jax.Array | None:
        """Zero points as float32 ``[G, N]`` (integer or real-valued), or None."""
        if self.zero is None:
            return None
        if self.spec.float_zero:
            return self.zero.astype(jnp.float32)
        return self.int_zero().astype(jnp.float32)

    def arrays(self) -> dict[str, jax.Array]:
        """The arrays actually held, by role (what `stored_bytes` and the ledger count)."""
        held = {"codes": self.codes, "scale": self.scale, "zero": self.zero, "perm": self.perm}
        if self.transform is not None:
            held |= self.transform.arrays()
        return {name: a for name, a in held.items() if a is not None}


KMAJOR_OFFSET = 8  # unsigned 4-bit codes are held K-major as code - 8 (a signed nibble)


def relayout(qt: QTensor, layout: str) -> QTensor:
    """``qt`` with its codes in ``layout`` (one of `LAYOUTS`; see `QTensor.codes`): the same
    weight in as many bytes (rows pad an odd N to whole bytes per row). Done once, offline: a
    kernel that reads the layout it needs then reads only the bytes it multiplies."""
    _check_layout(layout, qt.spec, qt.k)
    return qt if layout == qt.layout else _relaid(qt, layout)


def _check_layout(layout: str, spec: QuantSpec | None = None, k: int = 0) -> None:
    """Raises a ValueError naming ``layout`` if it is unknown, or cannot hold ``spec``'s codes
    along ``k``."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r} is unknown; allowed: {', '.join(LAYOUTS)}")
    reason = None if spec is None else _cannot_hold(layout, spec, k)
    if reason:
        raise ValueError(reason)


def _cannot_hold(layout: str, spec: QuantSpec, k: int) -> str | None:
    """Why a known ``layout`` cannot hold ``spec``'s codes along ``k``; None when it can."""
    if layout == "kmajor" and (not spec.nibbles or k % 2):
        return (
            f"layout='kmajor' holds 4-bit codes along an even K; this weight has "
            f"{spec.bits}-bit codes and K={k}; allowed: bits=4 and even K"
        )
    return None


@functools.partial(jax.jit, static_argnums=1)
def _relaid(qt: QTensor, layout: str) -> QTensor:
    codes = qt.int_codes().astype(jnp.int32)
    if layout == "rows":
        packed = pack(codes, bits=qt.spec.bits, signed=qt.spec.symmetric)
    else:  # signed nibbles along K: the codes, or code - 8
        if not qt.spec.symmetric:
            codes = codes - KMAJOR_OFFSET
        packed = pack(codes.T, bits=4, signed=True)
    return dataclasses.replace(qt, codes=packed, layout=layout)


def relayout_tree(tree, layout: str):
    """Every `QTensor` in a pytree (e.g. a quantized model's params) in ``layout`` where it can
    hold it (4-bit codes, even K; others are left as they are)."""

    _check_layout(layout)

    def convert(leaf):
        if not isinstance(leaf, QTensor):
            return leaf
        if _cannot_hold(layout, leaf.spec, leaf.k):
            return leaf
        return relayout(leaf, layout)

    return jax.tree_util.tree_map(convert, tree, is_leaf=lambda x: isinstance(x, QTensor))


def scale_grid(spec: QuantSpec, k: int, n: int) -> tuple[int, int]:
    """The ``[G, N]`` grid of a weight's scales (and zeros) for ``spec``: ``[1, 1]`` per-tensor."""
    return spec.num_groups(k), 1 if spec.granularity == "per_tensor" else n


def held_arrays(qt: QTensor) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """The dtype and shape each array of ``qt`` must have for its spec, logical shape and layout
    (the ``QTensor`` docstring), by role; a transform's arrays aside."""
    spec, k, n = qt.spec, qt.k, qt.n
    grid = scale_grid(spec, k, n)
    if qt.layout == "kmajor":
        codes = (np.dtype(np.uint8), (n, k // 2))
    elif spec.bits > 4:
        codes = (np.dtype(np.int8 if spec.symmetric else np.uint8), (k, n))
    else:
        codes = (np.dtype(np.uint8), (k, spec.packed_length(n)))
    held = {"codes": codes, "scale": (np.dtype(spec.jnp_scale_dtype), grid)}
    if spec.float_zero:
        held["zero"] = (np.dtype(spec.jnp_scale_dtype), grid)
    elif not spec.symmetric:  # unsigned codes: uint8 whether packed (2..4 bits) or not
        held["zero"] = (np.dtype(np.uint8), (grid[0], spec.packed_length(grid[1])))
    if qt.perm is not None:
        held["perm"] = (np.dtype(qt.perm.dtype), (k,))
    return held


def check_arrays(qt: QTensor) -> None:
    """Raise a ValueError naming the first array of ``qt`` whose dtype or shape is not what its
    spec and layout hold (`held_arrays`): a zero point missing or extra, per-channel scales for a
    per-group spec, int32 codes where packed bytes belong."""
    want = held_arrays(qt)
    held = {r: a for r, a in qt.arrays().items() if r in ("codes", "scale", "zero", "perm")}
    label = f"a QTensor of {qt.spec.describe()}, shape {qt.shape}, layout {qt.layout!r}"
    for role in sorted(set(want) | set(held)):
        if role not in held:
            raise ValueError(f"{label}: it has no {role}, and needs one")
        if role not in want:
            raise ValueError(f"{label}: it has a {role}, which symmetric codes do not take")
        a, (dtype, shape) = held[role], want[role]
        if role == "perm" and not jnp.issubdtype(a.dtype, jnp.integer):
            raise ValueError(f"{label}: its perm is {a.dtype}; allowed: integers")
        if np.dtype(a.dtype) != dtype or tuple(a.shape) != shape:
            raise ValueError(
                f"{label}: its {role} is {np.dtype(a.dtype)}{list(a.shape)}; allowed: "
                f"{dtype}{list(shape)}"
            )


def stored_bytes(qt: QTensor) -> int:
    """Bytes of every array a QTensor holds (codes, scales, zeros, permutation, transform)."""
    return sum(int(a.nbytes) for a in qt.arrays().values())


def _grid(a: jax.Array) -> jax.Array:
    """``[G, 1, N]`` view of a scale/zero grid ``[G, N]``."""
    return a[:, None, :]


def quantize(
    w: jax.Array,
    spec: QuantSpec,
    scale: jax.Array,
    zero: jax.Array | None = None,
    *,
    in_axes: InAxes = 0,
    perm: jax.Array | None = None,
) -> QTensor:
    """Quantize ``w`` with given scales (and zeros) into a packed `QTensor`.

    ``scale``/``zero`` have the grid shape of `QTensor` (``[G, N]``, ``[1, N]`` or ``[1, 1]``).
    With ``perm``, ``scale``/``zero`` refer to the rows of ``w[perm]`` (see `QTensor.perm`).
    """
    axes = normalize_in_axes(in_axes, w.ndim)
    w2d = to_matrix(jnp.asarray(w), axes)
    spec.check_input_size(w2d.shape[0])
    if perm is not None:
        w2d = w2d[perm]
    if spec.symmetric != (zero is None):
        raise ValueError(
            f"zero must be {'None' if spec.symmetric else 'given'} for symmetric={spec.symmetric}"
        )
    grid = scale_grid(spec, *w2d.shape)
    for role, a in (("scale", scale), ("zero", zero)):
        if a is not None and tuple(jnp.shape(a)) != grid:  # broadcasting would hide the slip
            raise ValueError(
                f"{role} has shape {tuple(jnp.shape(a))}; allowed: {grid}, the grid [G, N] of "
                f"{spec.describe()} for a weight of K={w2d.shape[0]} inputs, N={w2d.shape[1]}"
            )
    scale = scale.astype(spec.jnp_scale_dtype)
    if spec.float_zero:  # held in the scale dtype, and the codes meet them as held
        zero = packed_zero = zero.astype(spec.jnp_scale_dtype)
    else:
        packed_zero = None if zero is None else pack(zero, bits=spec.bits, signed=False)
    return QTensor(
        codes=_packed_codes(w2d, scale, zero, spec),
        scale=scale,
        zero=packed_zero,
        perm=perm,
        spec=spec,
        shape=tuple(w.shape),
        in_axes=axes,
    )


@functools.partial(jax.jit, static_argnums=3)  # one program when called eagerly
def _packed_codes(
    w2d: jax.Array, scale: jax.Array, zero: jax.Array | None, spec: QuantSpec
) -> jax.Array:
    zero_grid = None if zero is None else _grid(zero)
    codes = affine.to_codes(affine.group_view(w2d, spec), _grid(scale), zero_grid, spec)
    return pack(codes.reshape(w2d.shape).astype(jnp.int32), bits=spec.bits, signed=spec.symmetric)


@jax.jit
def dequantize_matrix(qt: QTensor) -> jax.Array:
    """The float32 ``[K, N]`` matrix of a QTensor, rows in logical order."""
    codes = affine.group_view(qt.int_codes(), qt.spec)
    zero = qt.zero_points()
    w2d = affine.from_codes(codes, _grid(qt.scale), None if zero is None else _grid(zero))
    w2d = w2d.reshape(qt.k, qt.n)
    if qt.perm is not None:
        w2d = w2d[jnp.argsort(qt.perm)]
    return w2d


def dequantize(qt: QTensor, dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """The weight a QTensor stands for, in its logical shape: ``(codes - zero) * scale`` (with a
    `QTensor.transform`, the folded weight that meets ``transform.apply(x)``)."""
    return from_matrix(dequantize_matrix(qt), qt.shape, qt.in_axes).astype(dtype)
