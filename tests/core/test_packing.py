import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from q4lab.core import pack, pack_numpy, unpack, unpack_numpy


@st.composite
def code_arrays(draw):
    bits = draw(st.integers(2, 8))
    signed = draw(st.booleans())
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    rows = draw(st.sampled_from([1, 3]))
    n = draw(st.sampled_from([1, 2, 5, 8]))
    codes = draw(st.lists(st.integers(lo, hi), min_size=rows * n, max_size=rows * n))
    return np.array(codes, np.int32).reshape(rows, n), bits, signed


@given(code_arrays())
def test_pack_unpack_is_the_identity_for_every_code(args):
    codes, bits, signed = args
    packed = pack(jnp.asarray(codes), bits=bits, signed=signed)
    out = unpack(packed, bits=bits, signed=signed, n=codes.shape[-1])
    np.testing.assert_array_equal(np.asarray(out.astype(jnp.int32)), codes)
    if bits <= 4:
        assert packed.dtype == jnp.uint8
        assert packed.shape == (codes.shape[0], (codes.shape[1] + 1) // 2)
        np.testing.assert_array_equal(np.asarray(packed), pack_numpy(codes, signed=signed))
        np.testing.assert_array_equal(
            unpack_numpy(np.asarray(packed), signed=signed, n=codes.shape[1]), codes
        )


def test_every_signed_and_unsigned_nibble_round_trips():
    for signed, values in [(True, range(-8, 8)), (False, range(16))]:
        codes = np.array([[a, b] for a in values for b in values], np.int32)
        out = unpack(pack(jnp.asarray(codes), bits=4, signed=signed), bits=4, signed=signed, n=2)
        np.testing.assert_array_equal(np.asarray(out.astype(jnp.int32)), codes)


def test_nibble_order_is_low_nibble_first():
    packed = pack(jnp.array([[1, 2, -1]]), bits=4, signed=True)
    # 1 | 2 << 4 = 0x21; -1 (0xF) | pad 0 << 4 = 0x0F
    np.testing.assert_array_equal(np.asarray(packed), [[0x21, 0x0F]])
