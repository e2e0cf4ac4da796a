"""Input transforms: the fast Walsh-Hadamard transform, folding, and what the ledger counts."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from q4lab.core import QuantSpec, quantize, size_ledger, stored_bytes
from q4lab.core.transforms import (
    InputTransform,
    fwht,
    hadamard,
    hadamard_block,
    hadamard_factors,
    paley_hadamard,
    random_signs,
    smoothing_scales,
)


def _sylvester(n: int) -> np.ndarray:
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def _transform(k: int, seed: int, smooth: bool, rotate: bool) -> InputTransform:
    rng = np.random.default_rng(seed)
    return InputTransform(
        smooth=jnp.asarray(rng.uniform(0.2, 5.0, k), jnp.float32) if smooth else None,
        seed=jnp.asarray(seed, jnp.uint32) if rotate else None,
    )


def test_hadamard_block_is_the_largest_power_of_two_dividing_k():
    assert [hadamard_block(k) for k in (1, 64, 384, 1536, 96, 7)] == [1, 64, 128, 512, 32, 1]


@pytest.mark.parametrize("n", [4, 8, 12, 20, 24])
def test_paley_matrices_are_hadamard(n):
    h = paley_hadamard(n)
    assert set(np.unique(h)) == {-1, 1}
    np.testing.assert_array_equal(h @ h.T, n * np.eye(n))


def test_paley_orders_without_a_prime_are_refused():
    with pytest.raises(ValueError, match="order 16 is invalid"):
        paley_hadamard(16)


@pytest.mark.parametrize(
    "k,factors", [(64, (1, 64)), (384, (12, 32)), (1536, (12, 128)), (80, (20, 4)), (56, (1, 8))]
)
def test_hadamard_factors_rotate_whole_inputs_where_a_paley_factor_exists(k, factors):
    assert hadamard_factors(k) == factors


@pytest.mark.parametrize("k", [64, 96, 80, 56])
def test_hadamard_is_the_dense_kronecker_product(k):
    m, b = hadamard_factors(k)
    block = np.kron(paley_hadamard(m) if m > 1 else np.ones((1, 1)), _sylvester(b))
    dense = np.kron(np.eye(k // (m * b)), block) / np.sqrt(m * b)
    np.testing.assert_allclose(dense @ dense.T, np.eye(k), atol=1e-12)
    x = np.random.default_rng(1).normal(size=(3, k)).astype(np.float32)
    np.testing.assert_allclose(hadamard(jnp.asarray(x)), x @ dense, atol=1e-5)
    np.testing.assert_allclose(hadamard(jnp.asarray(x), transpose=True), x @ dense.T, atol=1e-5)


@pytest.mark.parametrize("k,block", [(8, 8), (64, 16), (384, 128)])
def test_fwht_matches_the_dense_hadamard_matrix(k, block):
    x = np.random.default_rng(0).normal(size=(5, k)).astype(np.float32)
    dense = np.kron(np.eye(k // block), _sylvester(block)) / np.sqrt(block)
    np.testing.assert_allclose(fwht(jnp.asarray(x), block), x @ dense, rtol=1e-5, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(st.sampled_from([2, 16, 48, 384]), st.integers(0, 2**31))
def test_fwht_is_orthogonal_and_its_own_inverse(k, seed):
    x = jnp.asarray(np.random.default_rng(seed).normal(size=(3, k)), jnp.float32)
    y = fwht(x, hadamard_block(k))
    np.testing.assert_allclose(jnp.linalg.norm(y, axis=1), jnp.linalg.norm(x, axis=1), rtol=1e-5)
    np.testing.assert_allclose(fwht(y, hadamard_block(k)), x, atol=1e-5)


def test_fwht_rejects_a_block_that_does_not_divide():
    with pytest.raises(ValueError, match="block=32 is invalid for size 48"):
        fwht(jnp.zeros((1, 48)), 32)


@settings(max_examples=12, deadline=None)
@given(
    st.sampled_from([8, 24, 64, 96]),
    st.integers(0, 2**31),
    st.booleans(),
    st.booleans(),
)
def test_folding_leaves_the_float_product_unchanged(k, seed, smooth, rotate):
    """``apply(x) @ fold(w) == x @ w`` and ``unfold(fold(w)) == w`` in float."""
    t = _transform(k, seed, smooth, rotate)
    rng = np.random.default_rng(seed + 1)
    x = jnp.asarray(rng.normal(size=(4, k)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, 6)), jnp.float32)
    ref = np.asarray(x, np.float64) @ np.asarray(w, np.float64)
    np.testing.assert_allclose(t.apply(x) @ t.fold(w), ref, atol=2e-4 * np.abs(ref).max())
    np.testing.assert_allclose(t.unfold(t.fold(w)), w, atol=1e-5 * float(jnp.abs(w).max()))


def test_covariance_is_the_second_moment_of_the_transformed_input():
    t = _transform(32, 3, smooth=True, rotate=True)
    x = jnp.asarray(np.random.default_rng(4).normal(size=(50, 32)), jnp.float32)
    xt = np.asarray(t.apply(x), np.float64)
    np.testing.assert_allclose(t.covariance(x.T @ x), xt.T @ xt, rtol=1e-4, atol=1e-3)


def test_random_signs_are_plus_minus_one_and_seeded():
    a, b = random_signs(jnp.uint32(5), 64), random_signs(jnp.uint32(5), 64)
    assert set(np.unique(np.asarray(a))) == {-1.0, 1.0}
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, random_signs(jnp.uint32(6), 64))


def test_smoothing_scales_follow_smoothquant_and_leave_dead_channels_alone():
    x_max = jnp.asarray([4.0, 1.0, 0.0, 9.0])
    w_max = jnp.asarray([1.0, 4.0, 2.0, 0.0])
    s = smoothing_scales(x_max, w_max, alpha=0.5)
    np.testing.assert_allclose(s, [2.0, 0.5, 1.0, 1.0], rtol=1e-6)


def test_the_ledger_counts_the_seed_and_the_smoothing_scales():
    spec = QuantSpec(bits=4, group_size=8)
    w = jnp.asarray(np.random.default_rng(0).normal(size=(16, 6)), jnp.float32)
    plain = quantize(w, spec, jnp.ones((2, 6)))
    t = _transform(16, 1, smooth=True, rotate=True)
    held = dataclasses.replace(plain, transform=t)
    assert stored_bytes(held) == stored_bytes(plain) + 16 * 4 + 4
    leaf = size_ledger({"w": held}).leaves[0]
    assert leaf.transform == 16 * 4 + 4 and leaf.stored == stored_bytes(held)
