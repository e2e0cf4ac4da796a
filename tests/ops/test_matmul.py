import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from q4lab.core import QuantSpec, affine, dequantize_matrix, quantize
from q4lab.ops import fake_quantize_rows, int_matmul, quantize_rows, w4a16_matmul
from q4lab.quantizers import get_quantizer


@given(
    seed=st.integers(0, 1000),
    symmetric=st.booleans(),
    act_symmetric=st.booleans(),
    group=st.sampled_from([None, 8, 16]),
    per_row=st.booleans(),
)
def test_int_matmul_equals_the_float_product_of_dequantized_operands(
    seed, symmetric, act_symmetric, group, per_row
):
    kx, kw = jax.random.split(jax.random.key(seed))
    x = jax.random.normal(kx, (5, 32))
    w = jax.random.normal(kw, (32, 6))
    qt = get_quantizer("minmax").quantize(w, QuantSpec(symmetric=symmetric, group_size=group))
    act = QuantSpec(symmetric=act_symmetric, granularity="per_channel" if per_row else "per_tensor")
    view = affine.group_view(x.T, act)
    lo, hi = (
        view.min(axis=affine.reduce_axes(act), keepdims=True),
        view.max(axis=affine.reduce_axes(act), keepdims=True),
    )
    scale, zero = affine.scale_zero_from_range(lo, hi, act)
    scale, zero = scale[0].T, None if zero is None else zero[0].T
    y_int = int_matmul(quantize_rows(x, scale, zero, act), scale, qt)
    y_float = fake_quantize_rows(x, scale, zero, act) @ dequantize_matrix(qt)
    np.testing.assert_allclose(np.asarray(y_int), np.asarray(y_float), rtol=1e-5, atol=1e-5)


def test_int_matmul_applies_a_row_permutation():
    w = jax.random.normal(jax.random.key(0), (16, 4))
    perm = jnp.asarray(np.random.default_rng(0).permutation(16), jnp.int32)
    spec = QuantSpec(bits=4, group_size=8)
    scale = jnp.full((2, 4), float(jnp.abs(w).max()) / 7)
    qt = quantize(w, spec, scale, perm=perm)
    xc = jnp.asarray(np.random.default_rng(1).integers(-7, 8, (3, 16)), jnp.int8)
    expected = xc.astype(jnp.float32) @ dequantize_matrix(qt)
    np.testing.assert_allclose(
        np.asarray(int_matmul(xc, jnp.ones((1, 1)), qt)), np.asarray(expected), rtol=1e-5, atol=1e-5
    )


def test_w4a16_matmul_is_x_times_dequantized_weight():
    w = jax.random.normal(jax.random.key(0), (32, 8))
    qt = get_quantizer("mse").quantize(w, QuantSpec(group_size=16, symmetric=False))
    x = jax.random.normal(jax.random.key(1), (3, 32))
    np.testing.assert_allclose(
        np.asarray(jax.jit(w4a16_matmul)(x, qt)), np.asarray(x @ dequantize_matrix(qt)), rtol=1e-6
    )


def test_int_matmul_runs_integer_dot_with_int32_accumulation():
    w = jax.random.normal(jax.random.key(0), (32, 8))
    qt = get_quantizer("minmax").quantize(w, QuantSpec(group_size=16))
    xc = jnp.ones((2, 32), jnp.int8)
    hlo = jax.jit(int_matmul).lower(xc, jnp.ones((2, 1)), qt).as_text()
    dots = [line for line in hlo.splitlines() if "dot_general" in line]
    assert len(dots) == 1 and "xi8>" in dots[0] and dots[0].endswith("xi32>")
