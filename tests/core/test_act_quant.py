import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from q4lab.core import QuantSpec, act_codes, act_fake_quant, act_params
from q4lab.quantizers import get_quantizer

MINMAX = get_quantizer("minmax")
PER_ROW = QuantSpec(bits=4, granularity="per_channel")
PER_TENSOR = QuantSpec(bits=4, granularity="per_tensor")


def _grad(x, scale, zero, spec, weights):
    return jax.grad(lambda x: jnp.sum(act_fake_quant(x, scale, zero, spec) * weights))(x)


def test_straight_through_gradient_is_one_inside_the_clipping_range_and_zero_outside():
    """Row 0: symmetric 4-bit, scale 1 (codes -8..7). Row 1: scale 0.5. The code before clipping
    decides: -8.4 rounds to -8 (inside), -8.6 to -9 (outside), 7.6 to 8 (outside)."""
    x = jnp.array(
        [
            [-100.0, -8.6, -8.4, -3.2, 0.0, 2.5, 7.4, 7.6, jnp.inf],
            [-4.3, -4.2, -1.0, 0.2, 1.0, 3.7, 3.8, 50.0, -jnp.inf],
        ]
    )
    inside = np.array(
        [
            [0, 0, 1, 1, 1, 1, 1, 0, 0],
            [0, 1, 1, 1, 1, 1, 0, 0, 0],
        ],
        np.float32,
    )
    scale = jnp.array([[1.0], [0.5]])
    weights = jnp.arange(1.0, 19.0).reshape(2, 9)
    np.testing.assert_array_equal(_grad(x, scale, None, PER_ROW, weights), inside * weights)
    np.testing.assert_array_equal(
        jax.jit(_grad, static_argnums=3)(x, scale, None, PER_ROW, 1.0), inside
    )


def test_straight_through_range_follows_the_zero_point():
    """Asymmetric 4-bit, scale 0.5, zero 3: codes round(2x) + 3 in 0..15, so x in [-1.75, 6.25)."""
    spec = QuantSpec(bits=4, symmetric=False, granularity="per_tensor")
    x = jnp.array([[-1.8, -1.7, -1.5, 0.0, 6.0, 6.2, 6.3]])
    inside = np.array([[0, 1, 1, 1, 1, 1, 0]], np.float32)
    scale, zero = jnp.array([[0.5]]), jnp.array([[3]], jnp.int32)
    np.testing.assert_array_equal(_grad(x, scale, zero, spec, 1.0), inside)


def test_scales_get_no_gradient_even_when_computed_from_the_input():
    x = jax.random.normal(jax.random.key(0), (4, 16))
    g_scale = jax.grad(lambda s: jnp.sum(act_fake_quant(x, s, None, PER_ROW)))(jnp.ones((4, 1)))
    np.testing.assert_array_equal(g_scale, 0.0)
    dynamic = jax.grad(
        lambda x: jnp.sum(act_fake_quant(x, *act_params(x, PER_ROW, MINMAX), PER_ROW))
    )
    np.testing.assert_array_equal(dynamic(x), 1.0)  # min-max clips nothing: all ones


def test_forward_is_piecewise_constant_by_finite_differences():
    """A central difference across no rounding boundary is exactly zero (while the
    straight-through gradient is one), and across a boundary it jumps by one step."""
    rng = np.random.default_rng(0)
    scale = 0.25
    steps = rng.integers(-7, 8, (6, 32)).astype(np.float32)
    x = jnp.asarray((steps + rng.uniform(-0.4, 0.4, steps.shape)) * scale, jnp.float32)
    s = jnp.full((1, 1), scale)
    h = 0.05 * scale
    f = jax.jit(lambda x: act_fake_quant(x, s, None, PER_TENSOR))
    np.testing.assert_array_equal(f(x + h) - f(x - h), 0.0)
    np.testing.assert_array_equal(_grad(x, s, None, PER_TENSOR, 1.0), 1.0)
    boundary = jnp.asarray((np.clip(steps, -7, 6) + 0.5) * scale, jnp.float32)
    np.testing.assert_allclose(f(boundary + h) - f(boundary - h), scale, rtol=1e-6)


@given(
    seed=st.integers(0, 1000),
    bits=st.sampled_from([2, 3, 4, 8]),
    symmetric=st.booleans(),
    granularity=st.sampled_from(["per_channel", "per_tensor"]),
    clipping=st.sampled_from(["minmax", "percentile"]),
)
def test_fake_values_are_the_integer_codes_times_the_scale(
    seed, bits, symmetric, granularity, clipping
):
    spec = QuantSpec(bits=bits, symmetric=symmetric, granularity=granularity)
    x = 3.0 * jax.random.normal(jax.random.key(seed), (5, 24))
    x = x.at[0, 0].set(jnp.inf)  # saturates to the largest code in both paths
    scale, zero = act_params(jnp.where(jnp.isinf(x), 0.0, x), spec, get_quantizer(clipping))
    codes = act_codes(x, scale, zero, spec)
    assert codes.dtype == (jnp.int16 if bits == 8 and not symmetric else jnp.int8)
    fake = act_fake_quant(x, scale, zero, spec)
    assert fake.dtype == jnp.float32
    np.testing.assert_array_equal(fake, codes.astype(jnp.float32) * scale)


def test_per_row_ranges_are_each_rows_own_and_per_tensor_one_for_all():
    x = jax.random.normal(jax.random.key(1), (6, 16)) * jnp.arange(1.0, 7.0)[:, None]
    row_scale, _ = act_params(x, PER_ROW, MINMAX)
    assert row_scale.shape == (6, 1)
    np.testing.assert_allclose(row_scale[:, 0], jnp.abs(x).max(axis=1) / 7, rtol=1e-6)
    for i in range(6):  # a row's range does not depend on the other rows
        np.testing.assert_array_equal(
            act_params(x[i : i + 1], PER_ROW, MINMAX)[0], row_scale[i : i + 1]
        )
    tensor_scale, _ = act_params(x, PER_TENSOR, MINMAX)
    assert tensor_scale.shape == (1, 1)
    np.testing.assert_array_equal(tensor_scale[0, 0], row_scale.max())
    asym = QuantSpec(bits=8, symmetric=False, granularity="per_channel")
    scale, zero = act_params(jnp.abs(x), asym, MINMAX)
    assert zero.shape == (6, 1) and zero.dtype == jnp.int32
    np.testing.assert_array_equal(zero, 0)  # rows >= 0: the range starts at zero
    np.testing.assert_allclose(scale[:, 0], jnp.abs(x).max(axis=1) / 255, rtol=1e-6)


def test_static_ranges_from_calibration_saturate_larger_inputs():
    """A static range is `act_params` on calibration rows, applied unchanged to new rows: what
    lies beyond it saturates, with zero gradient there."""
    calibration = jax.random.uniform(jax.random.key(2), (64, 8), minval=-1.0, maxval=1.0)
    scale, zero = act_params(calibration, PER_TENSOR, get_quantizer("percentile", percentile=99.0))
    assert scale.shape == (1, 1) and float(scale[0, 0]) < 1.0 / 7
    x = jnp.array([[-3.0, -0.5, 0.0, 0.5, 3.0]])
    fake = act_fake_quant(x, scale, zero, PER_TENSOR)
    np.testing.assert_array_equal(fake[0, [0, 4]], jnp.array([-8.0, 7.0]) * scale[0, 0])
    np.testing.assert_array_equal(_grad(x, scale, zero, PER_TENSOR, 1.0), [[0, 1, 1, 1, 0]])


def test_bfloat16_rows_give_float32_values_and_a_bfloat16_gradient():
    x = jax.random.normal(jax.random.key(3), (3, 8)).astype(jnp.bfloat16)
    scale, zero = act_params(x, PER_ROW, MINMAX)
    assert act_fake_quant(x, scale, zero, PER_ROW).dtype == jnp.float32
    g = _grad(x, scale, zero, PER_ROW, 1.0)
    assert g.dtype == jnp.bfloat16
    np.testing.assert_array_equal(g, 1.0)


def test_bad_activation_specs_and_shapes_are_named():
    x = jnp.ones((2, 8))
    with pytest.raises(ValueError, match=r"granularity='per_group' is invalid for activations"):
        act_params(x, QuantSpec(group_size=4), MINMAX)
    with pytest.raises(ValueError, match=r"must be a matrix \[M, K\], got shape \(2, 2, 4\)"):
        act_codes(x.reshape(2, 2, 4), jnp.ones((1, 1)), None, PER_TENSOR)
