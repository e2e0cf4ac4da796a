import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from q4lab.core import (
    QuantSpec,
    dequantize,
    fake_quant,
    quantize,
    relayout,
    relayout_tree,
    size_ledger,
    stored_bytes,
)
from q4lab.quantizers import get_quantizer

SHAPES = [(8, 4), (16, 3), (32, 6)]
GRANULARITIES = [
    {"granularity": "per_tensor"},
    {"granularity": "per_channel"},
    {"group_size": 4},
    {"group_size": 8},
]


@st.composite
def weights_and_specs(draw):
    shape = draw(st.sampled_from(SHAPES))
    w = draw(
        hnp.arrays(
            np.float32, shape, elements=st.floats(-100, 100, width=32, allow_subnormal=False)
        )
    )
    spec = QuantSpec(
        bits=draw(st.integers(2, 8)),
        symmetric=draw(st.booleans()),
        scale_dtype=draw(st.sampled_from(["float32", "bfloat16", "float16"])),
        **draw(st.sampled_from(GRANULARITIES)),
    )
    return w, spec


def _codes(qt):
    return np.asarray(qt.int_codes().astype(jnp.int32))


def _grid(a, spec, k):
    """Expand a [G, N] scale/zero grid to [K, N]."""
    a = np.asarray(jnp.asarray(a, jnp.float32))
    return np.repeat(a, k // a.shape[0], axis=0) if a.shape[0] > 1 else a


@given(weights_and_specs())
def test_codes_lie_in_the_valid_range(args):
    w, spec = args
    qt = get_quantizer("minmax").quantize(w, spec)
    codes = _codes(qt)
    assert codes.min() >= spec.qmin and codes.max() <= spec.qmax
    k, n = w.shape
    assert qt.codes.shape == (k, spec.packed_length(n) if spec.bits <= 4 else n)
    if qt.zero is not None:
        zero = np.asarray(qt.int_zero())
        assert zero.min() >= spec.qmin and zero.max() <= spec.qmax


@given(weights_and_specs())
def test_minmax_error_is_at_most_half_a_step(args):
    w, spec = args
    qt = get_quantizer("minmax").quantize(w, spec)
    err = np.abs(np.asarray(dequantize(qt)) - w)
    scale = _grid(qt.scale, spec, w.shape[0])
    # min-max never clips, so every value is inside the range; a scale rounded to a 16-bit dtype
    # may leave the extreme value a hair beyond the last code (relative 2^-8 of the range).
    slack = {"float32": 1e-6, "float16": 2**-10, "bfloat16": 2**-7}[spec.scale_dtype]
    bound = scale / 2 + slack * scale * (2**spec.bits) + 1e-6 * np.abs(w)
    assert np.all(err <= bound)


@given(weights_and_specs())
def test_fake_quant_equals_dequant_of_quant_exactly(args):
    w, spec = args
    qt = get_quantizer("minmax").quantize(w, spec)
    fake = fake_quant(jnp.asarray(w), spec, qt.scale, qt.int_zero())
    np.testing.assert_array_equal(np.asarray(fake), np.asarray(dequantize(qt)))


@given(weights_and_specs())
def test_per_group_specs_quantize_every_group_independently(args):
    w, spec = args
    if spec.granularity != "per_group":
        spec = dataclasses.replace(spec, granularity="per_group", group_size=4)
    whole = np.asarray(dequantize(get_quantizer("minmax").quantize(w, spec)))
    per_channel = dataclasses.replace(spec, granularity="per_channel", group_size=None)
    g = spec.group_size
    for start in range(0, w.shape[0], g):
        part = get_quantizer("minmax").quantize(w[start : start + g], per_channel)
        np.testing.assert_array_equal(whole[start : start + g], np.asarray(dequantize(part)))


@pytest.mark.parametrize("bits", [2, 3])
def test_2_and_3_bit_weights_are_packed_at_their_width_and_dequantize_as_fake_quant(bits):
    w = np.asarray(jax.random.normal(jax.random.key(bits), (16, 3)))
    for symmetric in (True, False):
        spec = QuantSpec(bits=bits, symmetric=symmetric, group_size=8)
        qt = get_quantizer("minmax").quantize(w, spec)
        assert qt.codes.shape == (16, {2: 1, 3: 3}[bits])  # one word per row: 4 or 8 codes
        if not symmetric:
            assert qt.zero.shape == (2, qt.codes.shape[1])  # zero points packed like the codes
        fake = fake_quant(jnp.asarray(w), spec, qt.scale, qt.int_zero())
        np.testing.assert_array_equal(np.asarray(fake), np.asarray(dequantize(qt)))
        assert _codes(qt).min() >= spec.qmin and _codes(qt).max() <= spec.qmax


def test_fake_quant_gradient_is_straight_through_inside_the_range_and_zero_outside():
    spec = QuantSpec(bits=4)
    w = jnp.array([[-3.0, 0.2], [0.5, 0.1], [2.0, -0.05]])
    scale = jnp.array([[0.25, 0.01]])  # column 0 covers [-2, 1.75]; column 1 covers [-0.08, 0.07]
    grad = jax.grad(
        lambda w: jnp.sum(fake_quant(w, spec, scale) * jnp.arange(1.0, 7.0).reshape(3, 2))
    )(w)
    inside = np.array([[0, 0], [1, 0], [0, 1]], bool)
    expected = np.where(inside, np.arange(1.0, 7.0).reshape(3, 2), 0.0)
    np.testing.assert_array_equal(np.asarray(grad), expected)


def test_constant_and_zero_groups_quantize_without_division_by_zero():
    w = np.zeros((8, 3), np.float32)
    w[:, 1] = 0.7
    w[:, 2] = -2.5
    for symmetric in (True, False):
        spec = QuantSpec(bits=4, symmetric=symmetric, group_size=4)
        for name in ("minmax", "percentile", "mse"):
            qt = get_quantizer(name).quantize(w, spec)
            assert np.all(np.isfinite(np.asarray(qt.scale)))
            np.testing.assert_allclose(np.asarray(dequantize(qt)), w, rtol=1e-6)


@pytest.mark.parametrize(
    ("shape", "in_axes"), [((3, 4, 8), (0, 1)), ((2, 2, 4, 6), (0, 1, 2)), ((5, 8), 0), ((6, 5), 1)]
)
def test_any_rank_round_trips_through_the_matrix_layout(shape, in_axes):
    w = jax.random.normal(jax.random.key(1), shape)
    spec = QuantSpec(bits=8)
    qt = get_quantizer("minmax").quantize(w, spec, in_axes=in_axes)
    assert qt.shape == shape
    out = dequantize(qt)
    assert out.shape == shape
    np.testing.assert_allclose(np.asarray(out), np.asarray(w), atol=float(jnp.abs(w).max()) / 100)


def test_row_permutation_is_undone_by_dequantize():
    w = jax.random.normal(jax.random.key(2), (8, 4))
    perm = jnp.array([3, 0, 7, 1, 6, 2, 5, 4], jnp.int16)
    spec = QuantSpec(bits=8, group_size=4)
    scale = jnp.full((2, 4), float(jnp.abs(w).max()) / 127)
    plain = dequantize(quantize(w, spec, scale))
    permuted = quantize(w, spec, scale, perm=perm)
    np.testing.assert_array_equal(np.asarray(dequantize(permuted)), np.asarray(plain))
    assert stored_bytes(permuted) == stored_bytes(quantize(w, spec, scale)) + 16


@settings(max_examples=8)  # a compile per spec and shape; the layout does not depend on values
@given(weights_and_specs())
def test_kmajor_layout_holds_the_same_codes_in_as_many_bytes(args):
    w, spec = args
    qt = get_quantizer("minmax").quantize(w, dataclasses.replace(spec, bits=4))
    k, n = w.shape
    kmajor = relayout(qt, "kmajor")
    assert kmajor.layout == "kmajor" and kmajor.codes.shape == (n, k // 2)
    assert kmajor.codes.nbytes == n * k // 2  # rows pad an odd N to whole bytes; K is even
    if n % 2 == 0:
        assert kmajor.codes.nbytes == qt.codes.nbytes and stored_bytes(kmajor) == stored_bytes(qt)
    # byte [n, j]: rows 2j (low nibble) and 2j + 1 of column n, signed: code, or code - 8
    signed = _codes(qt) - (0 if qt.spec.symmetric else 8)
    nibbles = (signed & 0xF).T
    np.testing.assert_array_equal(
        np.asarray(kmajor.codes), nibbles[:, 0::2] | nibbles[:, 1::2] << 4
    )
    assert kmajor.int_codes().dtype == qt.int_codes().dtype
    np.testing.assert_array_equal(_codes(kmajor), _codes(qt))
    np.testing.assert_array_equal(dequantize(kmajor), dequantize(qt))
    back = relayout(kmajor, "rows")
    assert back.layout == "rows" and back.codes.dtype == qt.codes.dtype
    np.testing.assert_array_equal(back.codes, qt.codes)


def test_a_model_is_laid_out_where_its_weights_allow_and_the_ledger_is_unchanged():
    w = jax.random.normal(jax.random.key(0), (16, 6))
    params = {
        "a": {"kernel": quantize(w, QuantSpec(group_size=8), jnp.ones((2, 6)))},
        "b": {"kernel": quantize(w, QuantSpec(bits=3), jnp.ones((1, 6))), "bias": jnp.ones(6)},
        "odd": {"kernel": quantize(w[:15], QuantSpec(), jnp.ones((1, 6)))},
    }
    laid = relayout_tree(params, "kmajor")
    assert laid["a"]["kernel"].layout == "kmajor"
    assert laid["b"]["kernel"] is params["b"]["kernel"]  # 3-bit codes stay in rows
    assert laid["odd"]["kernel"] is params["odd"]["kernel"]  # odd K: no whole bytes along K
    assert size_ledger(laid) == size_ledger(params)
    with pytest.raises(ValueError, match="bits=4 and even K"):
        relayout(params["odd"]["kernel"], "kmajor")
    with pytest.raises(ValueError, match="layout='nmajor' is unknown; allowed: rows, kmajor"):
        relayout(params["a"]["kernel"], "nmajor")
    with pytest.raises(ValueError, match="layout='KMAJOR' is unknown"):  # a QTensor checks its own
        dataclasses.replace(params["a"]["kernel"], layout="KMAJOR")
    with pytest.raises(ValueError, match="has 3-bit codes and K=16; allowed: bits=4 and even K"):
        dataclasses.replace(params["b"]["kernel"], layout="kmajor")


def test_qtensor_is_a_pytree_that_jit_accepts():
    w = jax.random.normal(jax.random.key(3), (16, 4))
    qt = get_quantizer("minmax").quantize(w, QuantSpec(group_size=8, symmetric=False))
    leaves = jax.tree_util.tree_leaves(qt)
    assert {leaf.dtype for leaf in leaves} == {jnp.dtype(jnp.uint8), jnp.dtype(jnp.float32)}
    np.testing.assert_array_equal(np.asarray(jax.jit(dequantize)(qt)), np.asarray(dequantize(qt)))


def test_zero_must_match_symmetry():
    w = jnp.ones((4, 2))
    with pytest.raises(ValueError, match="zero must be None"):
        quantize(w, QuantSpec(), jnp.ones((1, 2)), jnp.zeros((1, 2), jnp.int32))


def test_scales_and_zeros_off_the_grid_are_named_not_broadcast():
    w = jnp.ones((8, 3))
    with pytest.raises(ValueError, match=r"scale has shape \(1, 3\); allowed: \(2, 3\), .*g4"):
        quantize(w, QuantSpec(group_size=4), jnp.ones((1, 3)))
    spec = QuantSpec(symmetric=False, group_size=4)
    with pytest.raises(ValueError, match=r"zero has shape \(2, 1, 3\); allowed: \(2, 3\)"):
        quantize(w, spec, jnp.ones((2, 3)), jnp.zeros((2, 1, 3), jnp.int32))


def test_bad_in_axes_are_named():
    with pytest.raises(ValueError, match=r"in_axes=\(0, 1\) is invalid .*ndim=2"):
        get_quantizer("minmax").quantize(jnp.ones((4, 2)), QuantSpec(), in_axes=(0, 1))
