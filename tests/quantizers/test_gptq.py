"""GPTQ against an independent numpy reference, its advantage over round-to-nearest, and its
errors on Hessians it cannot use."""

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest
from gptq_reference import gptq_reference  # tests/quantizers/, on sys.path under pytest

from q4lab.core import QuantSpec, dequantize, stored_bytes
from q4lab.core.qtensor import dequantize_matrix
from q4lab.quantizers import GPTQ, get_quantizer, output_error
from q4lab.quantizers.gptq import float_target_weight, gptq_matrix

K, N, ROWS = 80, 24, 400


def correlated_inputs(k: int, rows: int, seed: int) -> np.ndarray:
    """Inputs with correlated features of unequal scales, one dead (always zero) input."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(k, k)) / np.sqrt(k) + np.eye(k)
    x = rng.normal(size=(rows, k)) @ mix * rng.uniform(0.1, 3.0, size=k)
    x[:, 5] = 0.0
    return x


@pytest.fixture(scope="module")
def layer():
    x = correlated_inputs(K, ROWS, seed=0)
    hessian = (2 * x.T @ x / ROWS).astype(np.float32)
    w = np.random.default_rng(1).normal(size=(K, N)).astype(np.float32)
    return w, hessian


CASES = [
    # (symmetric, group_size, act_order, static_groups, block_size)
    (True, None, False, False, 128),
    (True, None, True, False, 48),  # blocks do not divide K: zero-row padding
    (False, None, False, False, 32),
    (False, None, True, False, 128),
    (True, 16, False, False, 128),
    (True, 16, True, False, 32),  # act-order groups: permutation stored
    (True, 16, True, True, 128),  # static groups: no permutation
    (False, 16, False, True, 48),
    (False, 16, True, False, 128),
    (False, 40, True, False, 16),  # group larger than the block
]


@pytest.mark.parametrize(("symmetric", "group", "act_order", "static", "block"), CASES)
def test_gptq_matches_the_numpy_reference(layer, symmetric, group, act_order, static, block):
    w, hessian = layer
    spec = QuantSpec(bits=4, symmetric=symmetric, group_size=group, scale_dtype="float16")
    gptq = GPTQ(act_order=act_order, static_groups=static, block_size=block)
    qt = gptq.quantize(jnp.asarray(w), spec, stats={"hessian": jnp.asarray(hessian)})
    codes, scales, zeros, group_of_row, unrounded = gptq_reference(
        w,
        hessian,
        bits=4,
        symmetric=symmetric,
        group_size=group,
        act_order=act_order,
        static_groups=static,
        scale_dtype="float16",
    )
    ours = np.asarray(dequantize_matrix(qt), np.float64)
    reference = (codes - zeros[group_of_row]) * scales[group_of_row]
    differ = ~np.isclose(ours, reference, rtol=0, atol=1e-6)
    # identical except rounding ties: where they differ, the reference sat on a .5 boundary
    near_tie = np.abs(np.abs(unrounded - np.floor(unrounded)) - 0.5) < 1e-3
    assert not (differ & ~near_tie).any()
    assert differ.mean() < 0.01
    err = float(output_error(jnp.asarray(w), jnp.asarray(ours, jnp.float32), hessian))
    ref_err = float(output_error(jnp.asarray(w), jnp.asarray(reference, jnp.float32), hessian))
    assert abs(err - ref_err) <= 1e-4 * ref_err
    assert (qt.perm is not None) == (act_order and group is not None and not static)
    assert not np.any(np.asarray(dequantize(qt))[5])  # the dead input's weights are zeroed


@pytest.mark.parametrize("bits", [4, 3])
@pytest.mark.parametrize("group", [None, 16])
def test_gptq_output_error_is_below_round_to_nearest(layer, bits, group):
    w, hessian = layer
    w[5] = 0.0  # the dead input: both methods then see the same weights
    spec = QuantSpec(bits=bits, group_size=group)
    stats = {"hessian": jnp.asarray(hessian)}
    rtn = get_quantizer("minmax").quantize(jnp.asarray(w), spec)
    errors = {
        "rtn": output_error(w, dequantize(rtn), hessian),
        "gptq": output_error(w, dequantize(GPTQ().quantize(w, spec, stats=stats)), hessian),
        "act_order": output_error(
            w, dequantize(GPTQ(act_order=True).quantize(w, spec, stats=stats)), hessian
        ),
    }
    assert errors["gptq"] < 0.7 * errors["rtn"]
    assert errors["act_order"] < 0.7 * errors["rtn"]


def test_conv_kernel_and_stored_bytes(layer):
    """A [kh, kw, in, out] kernel is quantized as its [kh*kw*in, out] matrix."""
    w, hessian = layer
    kernel = jnp.asarray(w).reshape(2, 5, 8, N)
    spec = QuantSpec(group_size=16)
    qt = GPTQ(act_order=True).quantize(kernel, spec, in_axes=(0, 1, 2), stats={"hessian": hessian})
    flat = GPTQ(act_order=True).quantize(w, spec, stats={"hessian": hessian})
    np.testing.assert_array_equal(
        np.asarray(dequantize(qt)).reshape(K, N), np.asarray(dequantize(flat))
    )
    assert qt.perm.dtype == jnp.uint16
    assert stored_bytes(qt) == K * N // 2 + (K // 16) * N * 4 + 2 * K  # codes, f32 scales, perm


def _count_equations(jaxpr) -> int:
    """Equations of a jaxpr and of every sub-jaxpr (loop bodies, branches, nested jits)."""
    total = 0
    for eqn in jaxpr.eqns:
        total += 1
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            total += _count_equations(sub)
    return total


def test_compiled_loop_does_not_grow_with_the_number_of_rows():
    """The column loop is a fori_loop, not unrolled: the program is the same size for any K."""

    def size(k):
        spec = QuantSpec(group_size=16)
        jaxpr = jax.make_jaxpr(gptq_matrix.__wrapped__, static_argnums=(0, 3))(
            GPTQ(act_order=True), jnp.zeros((k, 8)), jnp.eye(k), spec
        )
        return _count_equations(jaxpr.jaxpr)

    assert size(2048) == size(256)  # 16 blocks of 128 rows or 2: the same program


def test_nan_hessian_names_the_layer(layer):
    w, hessian = layer
    bad = hessian.copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match=r"'enc/fc'.*NaN"):
        GPTQ().quantize(w, QuantSpec(), stats={"hessian": bad}, name="enc/fc")


def test_all_zero_inputs_name_the_layer(layer):
    w, _ = layer
    with pytest.raises(ValueError, match=r"'head'.*all zero"):
        GPTQ().quantize(w, QuantSpec(), stats={"hessian": np.zeros((K, K))}, name="head")


def test_singular_hessian_without_dampening_names_the_layer(layer):
    w, _ = layer
    x = np.random.default_rng(2).normal(size=(ROWS, 4)) @ np.ones((4, K))  # rank 4
    hessian = (2 * x.T @ x / ROWS).astype(np.float32)
    with pytest.raises(ValueError, match=r"'attn/q'.*not positive definite.*percdamp"):
        GPTQ(percdamp=0.0).quantize(w, QuantSpec(), stats={"hessian": hessian}, name="attn/q")
    qt = GPTQ().quantize(w, QuantSpec(), stats={"hessian": hessian}, name="attn/q")
    assert np.isfinite(np.asarray(dequantize(qt))).all()  # the default dampening copes


def test_missing_statistics_and_bad_options():
    w = np.ones((8, 4), np.float32)
    with pytest.raises(ValueError, match=r"'fc'.*calibration"):
        GPTQ().quantize(w, QuantSpec(), name="fc")
    with pytest.raises(ValueError, match="percdamp"):
        get_quantizer("gptq", percdamp=-1)
    with pytest.raises(ValueError, match="clipping"):
        get_quantizer("gptq", clipping="gptq")
    with pytest.raises(ValueError, match="act_oder"):
        get_quantizer("gptq", act_oder=True)


def test_mse_clipping_inside_gptq(layer):
    w, hessian = layer
    spec = QuantSpec(bits=3, group_size=16)
    stats = {"hessian": hessian}
    plain = output_error(w, dequantize(GPTQ().quantize(w, spec, stats=stats)), hessian)
    mse = GPTQ(clipping="mse", clipping_options={"grid": 20})
    assert output_error(w, dequantize(mse.quantize(w, spec, stats=stats)), hessian) < 1.2 * plain


def test_float_target_fits_the_float_outputs_from_perturbed_inputs(layer):
    """GPTAQ: inputs ``X`` that drifted from the float model's ``X_f`` (earlier layers
    quantized). Fitting ``X_f W`` from ``X`` beats plain GPTQ on that error; with ``X = X_f``
    the (dampened) least-squares weight is ``W`` itself."""
    w, _ = layer
    x_f = correlated_inputs(K, ROWS, seed=2)
    x = x_f + 0.3 * correlated_inputs(K, ROWS, seed=3) * np.std(x_f, axis=0)
    hessian = (2 * x.T @ x / ROWS).astype(np.float32)
    stats = {"hessian": hessian, "cross": (2 * x.T @ x_f / ROWS).astype(np.float32)}
    spec = QuantSpec(bits=4, group_size=16)

    def error_to_float(quantizer):
        q = np.asarray(dequantize(quantizer.quantize(w, spec, stats=stats)), np.float64)
        return np.sum((x_f @ w - x @ q) ** 2)

    plain = error_to_float(GPTQ(act_order=True))
    fitted = error_to_float(GPTQ(act_order=True, float_target=True))
    assert fitted < 0.5 * plain  # 0.26 here

    same = float_target_weight(jnp.asarray(w), jnp.asarray(hessian), jnp.asarray(hessian), 0.01)
    np.testing.assert_array_equal(np.asarray(same), w)  # the dampening pulls towards W
    with pytest.raises(ValueError, match=r"'fc'.*cross.*sequential=True"):
        GPTQ(float_target=True).quantize(w, spec, stats={"hessian": hessian}, name="fc")
