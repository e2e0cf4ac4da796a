"""Storage of integer codes: two 4-bit codes per byte, or one wider code per byte.

Nibble order: codes are packed along the **last** axis. The code at even index ``2j`` sits in the
low nibble of byte ``j`` and the code at ``2j + 1`` in its high nibble. This is the order XLA uses
for its native ``int4``/``uint4`` types, so ``lax.bitcast_convert_type(packed, jnp.int4)`` turns a
``uint8[..., n/2]`` array into ``int4[..., n/2, 2]`` without moving a byte, and a reshape gives the
codes. An odd last axis is padded with one zero code; the logical size is kept by the caller.

Signed codes (symmetric quantization) are stored as two's-complement nibbles, unsigned codes
(asymmetric) as plain nibbles. Codes of 5..8 bits are stored one per byte (int8 / uint8).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def nibble_dtype(signed: bool) -> jnp.dtype:
    return jnp.dtype(jnp.int4 if signed else jnp.uint4)


def byte_dtype(signed: bool) -> jnp.dtype:
    return jnp.dtype(jnp.int8 if signed else jnp.uint8)


def pack(codes: jax.Array, *, bits: int, signed: bool) -> jax.Array:
    """Store integer ``codes[..., n]`` in their container.

    bits <= 4: ``uint8[..., ceil(n/2)]`` (two nibbles per byte, see the module docstring).
    bits > 4: ``int8[..., n]`` when signed, ``uint8[..., n]`` otherwise.
    """
    if bits > 4:
        return codes.astype(byte_dtype(signed))
    n = codes.shape[-1]
    if n % 2:
        codes = jnp.pad(codes, [(0, 0)] * (codes.ndim - 1) + [(0, 1)])
    pairs = codes.astype(nibble_dtype(signed)).reshape(*codes.shape[:-1], -1, 2)
    return lax.bitcast_convert_type(pairs, jnp.uint8)


def unpack(packed: jax.Array, *, bits: int, signed: bool, n: int) -> jax.Array:
    """Inverse of `pack`: codes ``[..., n]`` in XLA's native int4/uint4 (bits <= 4) or int8/uint8.

    The result keeps the narrow dtype so XLA can fuse the widening into its consumer; callers
    ``astype`` it to what they compute in.
    """
    if bits > 4:
        return packed
    nibbles = lax.bitcast_convert_type(packed, nibble_dtype(signed))
    codes = nibbles.reshape(*packed.shape[:-1], -1)
    return codes[..., :n] if codes.shape[-1] != n else codes


def pack_numpy(codes: np.ndarray, *, signed: bool) -> np.ndarray:
    """Reference packer in plain numpy (for files and tests): same layout as `pack` at 4 bits."""
    codes = np.asarray(codes, dtype=np.int64)
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros((*codes.shape[:-1], 1), np.int64)], axis=-1)
    nib = codes & 0xF if signed else codes
    return (nib[..., 0::2] | (nib[..., 1::2] << 4)).astype(np.uint8)


def unpack_numpy(packed: np.ndarray, *, signed: bool, n: int) -> np.ndarray:
    """Reference unpacker in plain numpy: codes ``int64[..., n]``."""
    packed = np.asarray(packed, dtype=np.int64)
    both = np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)
    if signed:
        both = np.where(both >= 8, both - 16, both)
    return both[..., :n]
