import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from q4lab.core import pack, pack_numpy, unpack, unpack_numpy
from q4lab.core.packing import codes_per_word, packed_length, word_bytes


def _range(bits, signed):
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


@st.composite
def code_arrays(draw):
    bits = draw(st.integers(2, 8))
    signed = draw(st.booleans())
    lo, hi = _range(bits, signed)
    rows = draw(st.sampled_from([1, 3]))
    n = draw(st.sampled_from([1, 2, 5, 8, 11]))
    codes = draw(st.lists(st.integers(lo, hi), min_size=rows * n, max_size=rows * n))
    return np.array(codes, np.int32).reshape(rows, n), bits, signed


@given(code_arrays())
def test_pack_unpack_is_the_identity_and_matches_the_numpy_reference_byte_for_byte(args):
    codes, bits, signed = args
    rows, n = codes.shape
    packed = pack(jnp.asarray(codes), bits=bits, signed=signed)
    out = unpack(packed, bits=bits, signed=signed, n=n)
    np.testing.assert_array_equal(np.asarray(out.astype(jnp.int32)), codes)
    reference = pack_numpy(codes, bits=bits, signed=signed)
    assert packed.dtype == reference.dtype
    np.testing.assert_array_equal(np.asarray(packed), reference)
    np.testing.assert_array_equal(unpack_numpy(reference, bits=bits, signed=signed, n=n), codes)
    if bits <= 4:  # whole words of codes per row: ceil(n * bits / 8) bytes once n fills them
        per = codes_per_word(bits)
        assert packed.dtype == jnp.uint8
        assert packed.shape == (rows, packed_length(n, bits))
        assert packed_length(n, bits) == -(-n // per) * per * bits // 8
    else:
        assert packed.shape == (rows, n)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_every_code_round_trips_at_every_position_of_a_word_under_jit(bits):
    """Each value at each slot of a word, and a partial last word (the row is not a whole number
    of words), signed and unsigned, through `pack`/`unpack` compiled together."""
    per = codes_per_word(bits)
    n = 2 * per + 1
    for signed in (True, False):
        lo, hi = _range(bits, signed)
        values = np.arange(lo, hi + 1)
        codes = values[(np.arange(len(values))[:, None] + np.arange(n)) % len(values)]
        packed = jax.jit(lambda c, s=signed: pack(c, bits=bits, signed=s))(jnp.asarray(codes))
        assert packed.shape == (len(values), 3 * word_bytes(bits))  # three words, last padded
        out = jax.jit(lambda p, s=signed: unpack(p, bits=bits, signed=s, n=n))(packed)
        np.testing.assert_array_equal(np.asarray(out.astype(jnp.int32)), codes)


def test_the_documented_bit_layouts():
    # 4 bits: 1 | 2 << 4 = 0x21; -1 (0xF) | pad 0 << 4 = 0x0F
    np.testing.assert_array_equal(
        pack(jnp.array([[1, 2, -1]]), bits=4, signed=True), [[0x21, 0x0F]]
    )
    # 2 bits: code 4j + i in bits 2i..2i+1: 1 | 2 << 2 | 3 << 4 | (-1 = 0b11) << 6 = 0xF9
    np.testing.assert_array_equal(
        pack(jnp.array([[1, 2, 3, -1, 1]]), bits=2, signed=True), [[0xF9, 0x01]]
    )
    # 3 bits: codes 0..7 at bits 3i.. of a little-endian 24-bit word: 0o76543210 = 0xFAC688
    word = pack(jnp.arange(9)[None], bits=3, signed=False)
    np.testing.assert_array_equal(word, [[0x88, 0xC6, 0xFA, 0x00, 0x00, 0x00]])
    # signed 3-bit -4 is 0b100: the field keeps only its width
    np.testing.assert_array_equal(pack(jnp.array([[-4, -1]]), bits=3, signed=True), [[0x3C, 0, 0]])


def test_widths_outside_2_to_8_are_refused():
    for bits in (1, 9):
        with pytest.raises(ValueError, match=rf"bits={bits} is invalid; allowed: .*2\.\.8"):
            pack(jnp.zeros((1, 4), jnp.int32), bits=bits, signed=True)
        with pytest.raises(ValueError, match="allowed"):
            unpack_numpy(np.zeros((1, 1), np.uint8), bits=bits, signed=True, n=1)


@pytest.mark.parametrize("signed", [True, False])
def test_codes_a_jitted_closure_holds_unpack_as_passed_ones(signed):
    """XLA folded the int4 cast of constant codes wrongly: a model jitted as a closure over its
    packed weights (jax.jit(lambda x: qm.apply(x))) ran W4A16 convs on shuffled codes."""
    packed = jnp.asarray(np.arange(256, dtype=np.uint8).reshape(16, 16))
    passed = unpack(packed, bits=4, signed=signed, n=32)
    held = jax.jit(lambda: unpack(packed, bits=4, signed=signed, n=32))()
    np.testing.assert_array_equal(np.asarray(held), np.asarray(passed))
