"""AWQ: the activation-aware scale search, its transform, and its place in recipes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from q4lab.core import QuantSpec, dequantize_matrix
from q4lab.quantize_model import quantize_model
from q4lab.quantizers import AWQ, get_quantizer, output_error
from q4lab.quantizers.awq import awq_scales
from q4lab.recipe import ActSpec, Recipe, Rule, TransformSpec

ROWS, K, N = 256, 64, 24


@pytest.fixture(scope="module")
def layer():
    """A layer whose inputs have a few loud channels (the salient weights AWQ protects)."""
    rng = np.random.default_rng(0)
    loud = np.ones(K)
    loud[rng.choice(K, 4, replace=False)] = 20.0
    x = (rng.normal(size=(ROWS, K)) * loud).astype(np.float32)
    w = rng.normal(size=(K, N)).astype(np.float32)
    stats = {
        "hessian": jnp.asarray(2 * x.T @ x / ROWS, jnp.float32),
        "act_absmean": jnp.asarray(np.abs(x).mean(0), jnp.float32),
    }
    return jnp.asarray(w), stats


def _error(w, qt, stats):
    w_hat = qt.transform.unfold(dequantize_matrix(qt))
    return float(output_error(w, w_hat, stats["hessian"]))


def test_awq_scales_are_normalised_and_alpha_zero_is_identity():
    mag = jnp.asarray([0.5, 2.0, 8.0, 0.0])
    s = awq_scales(mag, jnp.float32(0.5))
    assert float(jnp.max(s) * jnp.min(s)) == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_array_equal(awq_scales(mag, jnp.float32(0.0)), np.ones(4))


@pytest.mark.parametrize("spec", [QuantSpec(bits=3), QuantSpec(bits=4, group_size=16)])
def test_the_search_beats_round_to_nearest_and_the_result_is_the_searched_one(layer, spec):
    w, stats = layer
    awq = AWQ()
    alpha, errors = awq.search(w, stats, spec)
    qt = awq.quantize(w, spec, stats=stats)
    np.testing.assert_allclose(qt.transform.smooth, awq_scales(stats["act_absmean"], alpha))
    assert _error(w, qt, stats) == pytest.approx(errors.min(), rel=1e-4)
    rtn = get_quantizer("minmax").quantize(w, spec)
    rtn_error = float(output_error(w, dequantize_matrix(rtn), stats["hessian"]))
    assert errors[0] == pytest.approx(rtn_error, rel=1e-4)  # alpha = 0 is round to nearest
    assert errors.min() < 0.9 * rtn_error


def test_awq_composes_with_gptq_and_clipping(layer):
    """GPTQ rounds the scaled weight with the scaled Hessian (searched with min-max); a range
    quantizer is searched with itself."""
    w, stats = layer
    spec = QuantSpec(bits=3, group_size=16)
    plain = _error(w, AWQ().quantize(w, spec, stats=stats), stats)
    assert _error(w, AWQ(quantizer="gptq").quantize(w, spec, stats=stats), stats) < plain
    mse = AWQ(quantizer="mse")
    _, errors = mse.search(w, stats, spec)
    assert _error(w, mse.quantize(w, spec, stats=stats), stats) == pytest.approx(errors.min(), 1e-4)


def test_awq_passes_gptaq_its_cross_moment(layer):
    """AWQ then GPTQ fitting the float outputs (GPTAQ) needs the cross moment: AWQ asked for its
    own statistics only and dropped the cross moment, so the pair raised for lack of it. With
    float inputs equal to the quantized model's (cross = H) it rounds as AWQ then GPTQ."""
    w, stats = layer
    spec = QuantSpec(bits=3, group_size=16)
    gptaq = AWQ(quantizer="gptq", quantizer_options={"float_target": True})
    assert {"cross", "hessian", "act_absmean"} <= gptaq.needs
    with pytest.raises(ValueError, match=r"needs the calibration statistics \['cross'\]"):
        gptaq.quantize(w, spec, stats=stats)
    same_inputs = gptaq.quantize(w, spec, stats=stats | {"cross": stats["hessian"]})
    plain = AWQ(quantizer="gptq").quantize(w, spec, stats=stats)
    np.testing.assert_allclose(_error(w, same_inputs, stats), _error(w, plain, stats), rtol=1e-4)
    # an asymmetric cross moment C = X^T X_float reaches GPTQ as R^T C R of the scaled inputs
    cross = stats["hessian"] @ jnp.diag(jnp.linspace(0.5, 1.5, K))
    got = gptaq.quantize(w, spec, stats=stats | {"cross": cross})
    t = got.transform
    scaled_stats = {"hessian": t.covariance(stats["hessian"]), "cross": t.covariance(cross.T)}
    want = gptaq.final().quantize(t.fold(w), spec, stats=scaled_stats)
    np.testing.assert_array_equal(dequantize_matrix(got), dequantize_matrix(want))


def test_awq_options_and_missing_statistics_are_named(layer):
    w, stats = layer
    with pytest.raises(ValueError, match="needs the calibration statistics"):
        AWQ().quantize(w, QuantSpec(), stats={"hessian": stats["hessian"]}, name="fc")
    with pytest.raises(ValueError, match="quantizer='awq' is invalid"):
        AWQ(quantizer="awq")
    with pytest.raises(ValueError, match="no option"):
        AWQ(quantizer="gptq", quantizer_options={"nope": 1})


def test_awq_in_a_recipe_runs_integer_and_fake_alike(linen):
    model, params, x = linen
    rule = Rule(
        pattern="Dense_0|split|head",
        quantizer="awq",
        options={"quantizer": "gptq", "quantizer_options": {"act_order": True}},
        weight=QuantSpec(group_size=8),
    )
    calib = [x, -x, 2 * x]
    for act in (None, ActSpec()):
        recipe = Recipe((Rule(**{**rule.__dict__, "act": act}),))
        qm = quantize_model(model, params, recipe, sample_input=x, calibration=calib)
        real, fake = qm.apply(x), qm.apply(x, fake=True)
        assert float(jnp.max(jnp.abs(real - fake))) < 1e-5 * float(jnp.max(jnp.abs(fake)))
        assert qm.ledger().leaves and all(
            qm.params[p]["kernel"].transform is not None for p in ("Dense_0", "split", "head")
        )
    with pytest.raises(ValueError, match="chooses its own input scales"):
        bad = Rule(pattern="Dense_0", quantizer="awq", transform=TransformSpec(rotation="hadamard"))
        quantize_model(model, params, Recipe((bad,)), sample_input=x, calibration=calib)
    with pytest.raises(ValueError, match="'Conv_0': quantizer 'awq' scales the layer's input"):
        quantize_model(
            model, params, Recipe((Rule(pattern="Conv_0", quantizer="awq"),)), sample_input=x
        )
    jax.clear_caches()


def test_nested_options_are_labelled_readably():
    rule = Rule(
        quantizer="awq", options={"quantizer": "gptq", "quantizer_options": {"act_order": True}}
    )
    assert rule.quantizer_label() == "awq(quantizer='gptq',quantizer_options={act_order=True})"
