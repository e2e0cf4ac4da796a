"""A packed 4-bit weight seen as two halves, its even and its odd output columns, or in general
as *phases*: the output columns ``i, i + P, i + 2P, ...`` of nibble position ``i`` in a loaded
element (P = 2 for bytes; the GPU kernels also read 32-bit words, P = 8).

A 4-bit `QTensor` stores byte ``[k, j]`` = code ``[k, 2j]`` (low nibble) and code
``[k, 2j + 1]`` (high nibble), see `q4lab.core.packing`; 2- and 3-bit codes are packed otherwise
and are refused here (`split`). Unpacking a whole byte row into interleaved columns is a shuffle
that XLA (and Triton) do slowly; instead the CPU blocked path and the Pallas kernels multiply by
each phase separately and interleave only the ``[M, N]`` result. Scales and zero points are split
the same way (packed zero points already hold the even columns in their low nibbles).

Symmetric codes are two's-complement nibbles; xor-ing a byte with 0x88 turns both into
``code + 8`` (offset binary), so every path computes ``(u - zero) * scale`` from unsigned nibbles
``u``, with zero = 8 for symmetric weights. The xor is applied to each block as it is read.

Glossary: ``h = ceil(N / 2)`` columns per half; ``rows_per_scale`` = g for per-group weights,
K otherwise (one scale row covers the whole contraction).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from q4lab.core import QTensor

_SIGN_FLIP = 0x88  # xor on a byte of two's-complement nibbles: each becomes (code + 8)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Halves:
    """What a half-column kernel reads: the packed codes as stored, and the scale and zero grids
    split into ``[G, h]`` even and odd columns (small; the codes are never rewritten)."""

    codes: jax.Array  # uint8 [K, h], as stored; `offset_codes` per block for symmetric codes
    scale_even: jax.Array  # [G, h], the stored scale dtype
    scale_odd: jax.Array  # [G, h]
    zero_even: jax.Array | None  # uint8 [G, h] zero points (None: symmetric, zero 8 after offset)
    zero_odd: jax.Array | None  # uint8 [G, h]
    rows_per_scale: int = dataclasses.field(metadata={"static": True})
    n: int = dataclasses.field(metadata={"static": True})

    @property
    def symmetric(self) -> bool:
        return self.zero_even is None


def rows_per_scale(qt: QTensor) -> int:
    """Rows of K that one scale row covers: g per-group, K otherwise."""
    return qt.k // qt.scale.shape[0]


def offset_codes(codes: jax.Array, symmetric: bool) -> jax.Array:
    """Packed bytes (or uint32 words) whose nibbles ``u`` satisfy ``code = u - zero`` (zero = 8
    when symmetric)."""
    if not symmetric:
        return codes
    flip = 0x88888888 if codes.dtype == jnp.uint32 else _SIGN_FLIP
    return codes ^ jnp.asarray(flip, codes.dtype)


SYMMETRIC_ZERO = 8.0  # the zero of `offset_codes`' nibbles for two's-complement codes


def nibble(w: jax.Array, i: int) -> jax.Array:
    """Nibble ``i`` (bits 4i..4i+3) of unsigned ints ``w``: 0..15 in ``w``'s dtype (no shift for
    the lowest, no mask for the highest: the CPU path runs this on every byte)."""
    if i == 2 * w.dtype.itemsize - 1:
        return w >> (4 * i)
    shifted = w >> (4 * i) if i else w
    return shifted & jnp.asarray(0xF, w.dtype)


def low_nibbles(b: jax.Array) -> jax.Array:
    return nibble(b, 0)


def high_nibbles(b: jax.Array) -> jax.Array:
    return nibble(b, 1)


def phases(grid: jax.Array, n: int, count: int) -> list[jax.Array]:
    """A ``[G, N]`` (or ``[G, 1]``) grid as ``count`` grids ``[G, ceil(N / count)]``: phase i
    holds columns ``i, i + count, ...`` (N padded to a multiple of ``count``)."""
    width = -(-n // count) * count
    grid = jnp.broadcast_to(grid, (grid.shape[0], n))
    grid = jnp.pad(grid, ((0, 0), (0, width - n))).reshape(grid.shape[0], -1, count)
    return [grid[..., i] for i in range(count)]


def split(qt: QTensor) -> Halves:
    """The halves of a 4-bit `QTensor` (rows in stored order: apply ``qt.perm`` to the input)."""
    if not qt.spec.nibbles:
        raise ValueError(
            f"half-column paths read 4-bit nibbles only; got {qt.spec.bits}-bit codes "
            f"({qt.spec.describe()}); allowed widths: 4"
        )
    if qt.layout != "rows":
        raise ValueError(
            f"half-column paths read codes packed along N; this QTensor's layout is "
            f"{qt.layout!r}; allowed: 'rows' (q4lab.core.relayout(qt, 'rows'))"
        )
    h = qt.codes.shape[1]
    scale_even, scale_odd = phases(qt.scale, qt.n, 2)
    zero_even = zero_odd = None
    if qt.zero is not None:
        if qt.spec.granularity == "per_tensor":  # one zero point for every column
            zero_even = zero_odd = jnp.broadcast_to(low_nibbles(qt.zero), (1, h))
        else:
            zero_even, zero_odd = low_nibbles(qt.zero), high_nibbles(qt.zero)
    return Halves(
        codes=qt.codes,
        scale_even=scale_even,
        scale_odd=scale_odd,
        zero_even=zero_even,
        zero_odd=zero_odd,
        rows_per_scale=rows_per_scale(qt),
        n=qt.n,
    )


def interleave(*outputs: jax.Array, n: int) -> jax.Array:
    """Phase outputs ``[..., columns]`` (even and odd, or P of them) -> ``[..., n]`` in logical
    column order."""
    stacked = jnp.stack(outputs, axis=-1)
    lead, columns = outputs[0].shape[:-1], outputs[0].shape[-1] * len(outputs)
    return stacked.reshape(*lead, columns)[..., :n]  # (-1 is ambiguous for an empty batch)


def permuted_input(x: jax.Array, qt: QTensor) -> jax.Array:
    """Input columns in the weight's stored row order (GPTQ act-order, see `QTensor.perm`).

    The ops take inputs already transformed: `q4lab.layer_quant.quantized_dot` applies a
    `QTensor.transform` before activation quantization, and passes the weight without it."""
    if qt.transform is not None:
        raise ValueError(
            "this QTensor has an input transform; apply it first (q4lab.layer_quant.quantized_dot)"
        )
    return x if qt.perm is None else x[:, qt.perm]
