"""A packed 4-bit weight seen as two halves: its even and its odd output columns.

A 4-bit `QTensor` stores byte ``[k, j]`` = code ``[k, 2j]`` (low nibble) and code
``[k, 2j + 1]`` (high nibble), see `q4lab.core.packing`; 2- and 3-bit codes are packed otherwise
and are refused here (`split`). Unpacking a whole byte row into
interleaved columns is a shuffle that XLA (and Triton) do slowly; instead the fast paths multiply
by the low nibbles and by the high nibbles separately, producing the even and the odd output
columns, and interleave only the ``[M, N]`` result. Scales and zero points are split the same way
(packed zero points already hold the even columns in their low nibbles).

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
    """Packed bytes whose nibbles ``u`` satisfy ``code = u - zero`` (zero = 8 when symmetric)."""
    return codes ^ jnp.uint8(_SIGN_FLIP) if symmetric else codes


SYMMETRIC_ZERO = 8.0  # the zero of `offset_codes`' nibbles for two's-complement codes


def low_nibbles(b: jax.Array) -> jax.Array:
    return b & 0xF


def high_nibbles(b: jax.Array) -> jax.Array:
    return b >> 4


def split(qt: QTensor) -> Halves:
    """The halves of a 4-bit `QTensor` (rows in stored order: apply ``qt.perm`` to the input)."""
    if not qt.spec.nibbles:
        raise ValueError(
            f"half-column paths read 4-bit nibbles only; got {qt.spec.bits}-bit codes "
            f"({qt.spec.describe()}); allowed widths: 4"
        )
    h = qt.codes.shape[1]

    def columns(grid: jax.Array) -> jax.Array:  # [G, N] (or [.., 1]) -> [G, h, 2]
        grid = jnp.broadcast_to(grid, (grid.shape[0], qt.n))
        return jnp.pad(grid, ((0, 0), (0, 2 * h - qt.n))).reshape(-1, h, 2)

    scale = columns(qt.scale)
    zero_even = zero_odd = None
    if qt.zero is not None:
        if qt.scale.shape[-1] == 1:  # per-tensor: one zero point for every column
            zero_even = zero_odd = jnp.broadcast_to(low_nibbles(qt.zero), (1, h))
        else:
            zero_even, zero_odd = low_nibbles(qt.zero), high_nibbles(qt.zero)
    return Halves(
        codes=qt.codes,
        scale_even=scale[..., 0],
        scale_odd=scale[..., 1],
        zero_even=zero_even,
        zero_odd=zero_odd,
        rows_per_scale=rows_per_scale(qt),
        n=qt.n,
    )


def interleave(even: jax.Array, odd: jax.Array, n: int) -> jax.Array:
    """``[..., h]`` even and odd output columns -> ``[..., n]`` in logical order."""
    both = jnp.stack([even, odd], axis=-1)
    return both.reshape(*even.shape[:-1], -1)[..., :n]


def permuted_input(x: jax.Array, qt: QTensor) -> jax.Array:
    """Input columns in the weight's stored row order (GPTQ act-order, see `QTensor.perm`).

    The ops take inputs already transformed: `q4lab.layer_quant.quantized_dot` applies a
    `QTensor.transform` before activation quantization, and passes the weight without it."""
    if qt.transform is not None:
        raise ValueError(
            "this QTensor has an input transform; apply it first (q4lab.layer_quant.quantized_dot)"
        )
    return x if qt.perm is None else x[:, qt.perm]
