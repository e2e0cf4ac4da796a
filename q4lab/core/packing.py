"""Storage of integer codes: 2-, 3- and 4-bit codes as a bit stream, wider codes a byte each.

Codes are packed along the **last** axis, each row on its own. For ``bits`` in 2..4 a row is a
little-endian bit stream of ``bits``-bit fields: code ``i`` takes stream bits
``[bits*i, bits*(i+1))`` and byte ``j`` holds stream bits ``[8j, 8j+8)``, least significant first.
The row is padded with zero codes to a whole number of *words*, the smallest run of codes that
fills whole bytes (`codes_per_word`, `word_bytes`):

  bits  word                     layout of one word
  2     4 codes in 1 byte        code ``4j + i`` in bits ``2i .. 2i+1`` of byte ``j``
  3     8 codes in 3 bytes       a 24-bit little-endian word: code ``8j + i`` in bits ``3i .. 3i+2``
  4     2 codes in 1 byte        code ``2j`` in the low nibble of byte ``j``, ``2j + 1`` in the high
  5..8  1 code in 1 byte         ``int8`` (signed) / ``uint8`` (unsigned)

A row of ``n`` codes therefore takes ``word_bytes * ceil(n / codes_per_word)`` bytes
(`packed_length`): ``ceil(n * bits / 8)`` when ``n`` fills whole words. The 4-bit layout is the one
XLA uses for its native ``int4``/``uint4`` types, so ``lax.bitcast_convert_type(packed, jnp.int4)``
turns ``uint8[..., n/2]`` into ``int4[..., n/2, 2]`` without moving a byte; the nibble kernels of
`q4lab.ops` rely on it. The logical length ``n`` is kept by the caller.

Signed codes (symmetric quantization) are stored in two's complement within their width, unsigned
codes (asymmetric, and zero points) as plain fields. `pack`/`unpack` are jit-able jnp (shifts and
masks, vectorised); `pack_numpy`/`unpack_numpy` are an independent reference (``np.packbits`` of
the bit stream) for files and tests.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# bits -> (codes per word, bytes per word) for the sub-byte layouts
_WORDS = {2: (4, 1), 3: (8, 3), 4: (2, 1)}


def codes_per_word(bits: int) -> int:
    """Codes in one packed word: 4 (2-bit), 8 (3-bit), 2 (4-bit), 1 (5..8-bit)."""
    return _WORDS.get(bits, (1, 1))[0]


def word_bytes(bits: int) -> int:
    """Bytes of one packed word: 3 for 3-bit codes, else 1."""
    return _WORDS.get(bits, (1, 1))[1]


def stored_bits(bits: int) -> int:
    """Bits one code takes in storage, padding aside: ``bits`` for 2..4, 8 for 5..8."""
    return 8 * word_bytes(bits) // codes_per_word(bits)


def packed_length(n: int, bits: int) -> int:
    """Bytes of a packed row of ``n`` codes: ``word_bytes * ceil(n / codes_per_word)``."""
    return word_bytes(bits) * -(-n // codes_per_word(bits))


def nibble_dtype(signed: bool) -> jnp.dtype:
    return jnp.dtype(jnp.int4 if signed else jnp.uint4)


def byte_dtype(signed: bool) -> jnp.dtype:
    return jnp.dtype(jnp.int8 if signed else jnp.uint8)


def _check_bits(bits: int) -> None:
    if not 2 <= bits <= 8:
        raise ValueError(f"bits={bits!r} is invalid; allowed: an int in 2..8")


def _pad_to_words(codes, per: int, xp):
    extra = -codes.shape[-1] % per
    if not extra:
        return codes
    return xp.pad(codes, [(0, 0)] * (codes.ndim - 1) + [(0, extra)])


@functools.partial(jax.jit, static_argnames=("bits", "signed"))  # one program, not op by op
def pack(codes: jax.Array, *, bits: int, signed: bool) -> jax.Array:
    """Store integer ``codes[..., n]`` in their container (module docstring).

    bits 2..4: ``uint8[..., packed_length(n, bits)]``.
    bits 5..8: ``int8[..., n]`` when signed, ``uint8[..., n]`` otherwise.
    """
    _check_bits(bits)
    if bits > 4:
        return codes.astype(byte_dtype(signed))
    per, nbytes = _WORDS[bits]
    codes = _pad_to_words(codes, per, jnp)
    if bits == 4:
        pairs = codes.astype(nibble_dtype(signed)).reshape(*codes.shape[:-1], -1, 2)
        return lax.bitcast_convert_type(pairs, jnp.uint8)
    fields = (codes.astype(jnp.int32) & (2**bits - 1)).astype(jnp.uint32)  # two's complement
    fields = fields.reshape(*codes.shape[:-1], -1, per)
    shifts = jnp.arange(per, dtype=jnp.uint32) * bits
    words = jnp.sum(fields << shifts, axis=-1, dtype=jnp.uint32)  # disjoint bits: sum == or
    out = (words[..., None] >> (jnp.arange(nbytes, dtype=jnp.uint32) * 8)) & 0xFF
    out = out.astype(jnp.uint8)
    return out.reshape(*codes.shape[:-1], -1)


@functools.partial(jax.jit, static_argnames=("bits", "signed", "n"))
def unpack(packed: jax.Array, *, bits: int, signed: bool, n: int) -> jax.Array:
    """Inverse of `pack`: codes ``[..., n]`` in a narrow dtype: XLA's native int4/uint4 at 4
    bits, int8/uint8 otherwise.

    The result keeps the narrow dtype so XLA can fuse the widening into its consumer; callers
    ``astype`` it to what they compute in.
    """
    _check_bits(bits)
    if bits > 4:
        return packed
    if bits == 4:  # the barrier keeps XLA from folding the cast of constant codes, which it
        # folds wrongly (jax 0.10.2, CPU): codes a jitted closure holds came out shuffled
        codes = lax.bitcast_convert_type(lax.optimization_barrier(packed), nibble_dtype(signed))
        codes = codes.reshape(*packed.shape[:-1], -1)
    else:
        per, nbytes = _WORDS[bits]
        lead = packed.shape[:-1]
        words = packed.reshape(*lead, -1, nbytes).astype(jnp.uint32)
        if nbytes > 1:
            shifts = jnp.arange(nbytes, dtype=jnp.uint32) * 8
            words = jnp.sum(words << shifts, axis=-1, dtype=jnp.uint32)
        else:
            words = words[..., 0]
        fields = words[..., None] >> (jnp.arange(per, dtype=jnp.uint32) * bits)
        codes = (fields & (2**bits - 1)).astype(jnp.uint8)
        if signed:  # two's complement within the width: flip the sign bit, subtract it
            sign = 2 ** (bits - 1)
            codes = (codes ^ jnp.uint8(sign)).astype(jnp.int8) - jnp.int8(sign)
        codes = codes.reshape(*lead, -1)
    return codes[..., :n] if codes.shape[-1] != n else codes


def pack_numpy(codes: np.ndarray, *, bits: int = 4, signed: bool) -> np.ndarray:
    """Reference packer in plain numpy (for files and tests): the layout of `pack`, built as the
    little-endian bit stream of the module docstring."""
    _check_bits(bits)
    codes = np.asarray(codes, dtype=np.int64)
    if bits > 4:
        return codes.astype(np.int8 if signed else np.uint8)
    codes = _pad_to_words(codes, codes_per_word(bits), np)
    fields = (codes & (2**bits - 1)).astype(np.uint8)  # two's complement within the width
    stream = np.unpackbits(fields[..., None], axis=-1, count=bits, bitorder="little")
    stream = stream.reshape(*codes.shape[:-1], -1)
    return np.packbits(stream, axis=-1, bitorder="little")


def unpack_numpy(packed: np.ndarray, *, bits: int = 4, signed: bool, n: int) -> np.ndarray:
    """Reference unpacker in plain numpy: codes ``int64[..., n]``."""
    _check_bits(bits)
    packed = np.asarray(packed)
    if bits > 4:
        return packed.astype(np.int64)[..., :n]
    stream = np.unpackbits(packed.astype(np.uint8), axis=-1, bitorder="little")
    fields = stream.reshape(*packed.shape[:-1], -1, bits).astype(np.int64)
    codes = np.sum(fields << np.arange(bits), axis=-1)
    if signed:
        codes = np.where(codes >= 2 ** (bits - 1), codes - 2**bits, codes)
    return codes[..., :n]
