"""LSQ (Esser et al., ICLR 2020): forward values, the paper's gradients, and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from q4lab.core import (
    QuantSpec,
    act_fake_quant,
    act_lsq_fake_quant,
    lsq_grad_scale,
    lsq_round_trip,
    round_trip,
    stored_scale,
)

SPEC = QuantSpec(bits=4)  # -Q_N = -8, Q_P = 7
ASYM = QuantSpec(bits=3, symmetric=False)  # codes 0..7


def _paper(v, s, qn, qp, g):
    """The paper's gradients of v_hat = round(clip(v / s, -Q_N, Q_P)) * s (its equations 3, 4)."""
    r = v / s
    inside = (r >= -qn) & (r <= qp)
    dv = inside.astype(np.float32)
    ds = np.where(inside, np.round(r) - r, np.where(r < -qn, -qn, qp)) * g
    return dv, ds


@given(
    st.lists(st.floats(-3.0, 3.0, width=32), min_size=1, max_size=12),
    st.floats(0.0625, 0.5, width=32),
)
def test_lsq_gradients_are_the_papers(values, step):
    v = jnp.asarray(values, jnp.float32).reshape(1, -1, 1)
    s = jnp.full((1, 1, 1), step, jnp.float32)
    g = lsq_grad_scale(v.size, SPEC)
    dv = jax.grad(lambda v: lsq_round_trip(v, s, None, SPEC, g).sum())(v)
    per_value_ds = jax.vmap(
        lambda vi: jax.grad(lambda s: lsq_round_trip(vi.reshape(1, 1, 1), s, None, SPEC, g).sum())(
            s
        )
    )(v.reshape(-1))
    want_dv, want_ds = _paper(np.asarray(v).ravel(), np.float32(step), 8, 7, g)
    np.testing.assert_array_equal(np.asarray(dv).ravel(), want_dv)
    np.testing.assert_allclose(np.asarray(per_value_ds).ravel(), want_ds, rtol=1e-5, atol=1e-6)


def test_forward_is_the_round_trip_and_a_zero_point_shifts_the_bounds():
    v = jnp.linspace(-1.0, 2.0, 31, dtype=jnp.float32).reshape(1, -1, 1)
    s = jnp.full((1, 1, 1), 0.17, jnp.float32)
    z = jnp.full((1, 1, 1), 2, jnp.int32)  # codes 0..7: -Q_N = -2, Q_P = 5
    out = lsq_round_trip(v, s, z, ASYM, 1.0)
    np.testing.assert_array_equal(out, round_trip(v, s, z, ASYM))
    ds = jax.vmap(
        lambda vi: jax.grad(lambda s: lsq_round_trip(vi.reshape(1, 1, 1), s, z, ASYM, 1.0).sum())(s)
    )(v.reshape(-1))
    want = _paper(np.asarray(v).ravel(), np.float32(0.17), 2, 5, 1.0)[1]
    np.testing.assert_allclose(np.asarray(ds).ravel(), want, rtol=1e-5, atol=1e-6)


def test_gradient_scale_is_one_over_sqrt_n_qp():
    assert lsq_grad_scale(128, SPEC) == 1 / np.sqrt(128 * 7)
    v = jnp.asarray([[[0.33]]], jnp.float32)
    s = jnp.full((1, 1, 1), 0.1, jnp.float32)
    full = jax.grad(lambda s: lsq_round_trip(v, s, None, SPEC, 1.0).sum())(s)
    scaled = jax.grad(lambda s: lsq_round_trip(v, s, None, SPEC, 0.25).sum())(s)
    np.testing.assert_allclose(scaled, 0.25 * full, rtol=1e-6)


def test_saturated_gradients_match_finite_differences():
    """Where v / s saturates, v_hat = Q_P * s (or -Q_N * s) exactly: LSQ's gradients are the true
    derivatives there (slope Q_P in s, 0 in v)."""
    s0, eps = 0.1, 1e-3
    for value, bound in ((1.5, 7.0), (-2.0, -8.0)):
        v = jnp.asarray([[[value]]], jnp.float32)

        def f(s, v=v):
            return float(round_trip(v, jnp.full((1, 1, 1), s, jnp.float32), None, SPEC).sum())

        fd = (f(s0 + eps) - f(s0 - eps)) / (2 * eps)
        s = jnp.full((1, 1, 1), s0, jnp.float32)
        ds = jax.grad(lambda s, v=v: lsq_round_trip(v, s, None, SPEC, 1.0).sum())(s)
        dv = jax.grad(lambda v, s=s: lsq_round_trip(v, s, None, SPEC, 1.0).sum())(v)
        assert float(ds.squeeze()) == bound
        np.testing.assert_allclose(fd, bound, rtol=1e-3)
        assert float(dv.squeeze()) == 0.0


def test_inside_the_range_the_gradients_are_those_of_the_straight_through_surrogate():
    """Inside the range LSQ differentiates ``s * (v/s + c)`` with ``c = round(v/s) - v/s`` held
    fixed (the straight-through estimator of the rounding): finite differences of that surrogate
    give d/dv = 1 and d/ds = c."""
    v0, s0, eps = 0.337, 0.1, 1e-3
    c = np.round(v0 / s0) - v0 / s0

    def surrogate(v, s):
        return s * (v / s + c)

    fd_v = (surrogate(v0 + eps, s0) - surrogate(v0 - eps, s0)) / (2 * eps)
    fd_s = (surrogate(v0, s0 + eps) - surrogate(v0, s0 - eps)) / (2 * eps)
    v = jnp.asarray([[[v0]]], jnp.float32)
    s = jnp.full((1, 1, 1), s0, jnp.float32)
    dv = jax.grad(lambda v: lsq_round_trip(v, s, None, SPEC, 1.0).sum())(v)
    ds = jax.grad(lambda s: lsq_round_trip(v, s, None, SPEC, 1.0).sum())(s)
    np.testing.assert_allclose(float(dv.squeeze()), fd_v, rtol=1e-4)
    np.testing.assert_allclose(float(ds.squeeze()), fd_s, rtol=1e-3, atol=1e-5)


def test_activation_lsq_has_the_values_of_the_straight_through_fake_quant():
    x = jax.random.normal(jax.random.key(0), (5, 16)) * 3
    spec = QuantSpec(bits=4, granularity="per_channel")
    scale = jnp.max(jnp.abs(x), axis=1, keepdims=True) / 7 * 0.8  # clipped: some saturate
    np.testing.assert_array_equal(
        act_lsq_fake_quant(x, scale, None, spec), act_fake_quant(x, scale, None, spec)
    )
    ds = jax.grad(lambda s: act_lsq_fake_quant(x, s, None, spec).sum())(scale)
    assert ds.shape == scale.shape and bool(jnp.all(ds != 0))


def test_stored_scale_rounds_forward_and_passes_the_gradient():
    spec = QuantSpec(scale_dtype="float16")
    s = jnp.asarray([0.1234567], jnp.float32)
    assert float(stored_scale(s, spec)[0]) == float(np.float16(0.1234567))
    assert float(jax.grad(lambda s: stored_scale(s, spec).sum())(s)[0]) == 1.0
