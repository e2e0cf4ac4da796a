"""HQQ and real-valued zero points: the fit never loses to its start, the bytes are counted,
and every path that holds or runs such a weight agrees with the dequantized one."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from q4lab.core import QuantSpec, affine, dequantize, size_ledger
from q4lab.export import load
from q4lab.ops import int_matmul, w4a16_matmul
from q4lab.qat import QATModel
from q4lab.quantize_model import quantize_model
from q4lab.quantizers import check_quantized, get_quantizer
from q4lab.quantizers.hqq import shrink
from q4lab.recipe import ActSpec, Recipe, Rule


def _group_l1(w, qt, spec):
    err = np.abs(np.asarray(dequantize(qt), np.float64) - w)
    return err.reshape(spec.num_groups(w.shape[0]), -1, w.shape[1]).mean(axis=1)


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    bits=st.sampled_from([2, 3, 4, 6, 8]),
    group=st.sampled_from([None, 16]),
    scale_dtype=st.sampled_from(["float16", "float32"]),
)
def test_hqq_never_ends_a_group_worse_than_its_min_max_start(seed, bits, group, scale_dtype):
    w = np.random.default_rng(seed).standard_t(3, size=(64, 8)).astype(np.float32)
    spec = QuantSpec(bits=bits, symmetric=False, zero_point="float", group_size=group)
    spec = QuantSpec(**{**spec.__dict__, "scale_dtype": scale_dtype})
    hqq = get_quantizer("hqq")
    fitted = check_quantized(hqq.quantize(w, spec), hqq, spec, w, 0)
    start = get_quantizer("minmax").quantize(w, spec)
    # (the fit compares float32 means; these are float64: equal up to float32 rounding)
    start_l1 = _group_l1(w, start, spec)
    assert (_group_l1(w, fitted, spec) <= start_l1 * (1 + 1e-6)).all()
    np.testing.assert_array_equal(fitted.scale, start.scale)  # only the zero moves
    assert fitted.zero.dtype == jnp.dtype(scale_dtype)


def test_hqq_fits_better_than_min_max_where_rounding_costs_most():
    w = np.random.default_rng(0).standard_t(3, size=(256, 64)).astype(np.float32)
    spec = QuantSpec(bits=3, symmetric=False, zero_point="float", group_size=16)
    fitted = _group_l1(w, get_quantizer("hqq").quantize(w, spec), spec).mean()
    start = _group_l1(w, get_quantizer("minmax").quantize(w, spec), spec).mean()
    assert fitted < 0.95 * start  # measured: 0.184 against 0.200


def test_a_narrow_group_far_from_zero_keeps_a_finite_float16_zero():
    w = np.random.default_rng(2).normal(size=(32, 4)).astype(np.float32) * 0.1
    w[:16, 0] = 0.5 + np.linspace(0, 1e-5, 16)  # -lo / scale would pass float16's range
    spec = QuantSpec(symmetric=False, zero_point="float", group_size=16, scale_dtype="float16")
    for name in ("hqq", "minmax"):
        qt = get_quantizer(name).quantize(w, spec)
        assert np.isfinite(np.asarray(qt.zero, np.float32)).all(), name
        assert np.abs(np.asarray(dequantize(qt)) - w).max() < 0.02, name


def test_shrink_is_the_proximal_step_of_the_lp_penalty():
    x = jnp.array([-3.0, -0.05, 0.0, 0.05, 3.0])
    np.testing.assert_allclose(shrink(x, 10.0, 1.0), [-2.9, 0.0, 0.0, 0.0, 2.9], rtol=1e-6)
    ax = np.abs(np.asarray(x))
    expected = np.sign(x) * np.maximum(ax - np.where(ax > 0, ax, 1) ** -0.3 / 10.0, 0)
    np.testing.assert_allclose(shrink(x, 10.0, 0.7), expected, rtol=1e-6)


def test_float_zero_points_are_held_and_counted_as_scales_are():
    w = np.random.default_rng(1).normal(size=(64, 6)).astype(np.float32)
    spec = QuantSpec(symmetric=False, zero_point="float", group_size=16, scale_dtype="float16")
    qt = get_quantizer("hqq").quantize(w, spec)
    assert qt.zero.shape == (4, 6) and qt.zero.dtype == jnp.float16
    ledger = size_ledger({"w": qt})
    assert ledger.total_bytes == qt.codes.nbytes + qt.scale.nbytes + qt.zero.nbytes
    assert ledger.ideal_bits_per_weight == 4 + 2 * 16 / 16  # codes, then scale and zero per 16
    # the codes are round(w / s + z) with the zero as stored, and dequantize inverts them
    s, z = np.asarray(qt.scale, np.float32), np.asarray(qt.zero, np.float32)
    codes = np.clip(np.round(w.reshape(4, 16, 6) / s[:, None] + z[:, None]), 0, 15)
    np.testing.assert_array_equal(
        dequantize(qt), ((codes - z[:, None]) * s[:, None]).reshape(64, 6)
    )


def test_a_rule_gives_hqq_float_zero_points_and_refuses_a_symmetric_spec():
    rule = Rule(quantizer="hqq", weight=QuantSpec(symmetric=False, group_size=32))
    assert rule.weight.float_zero and rule.describe().startswith("hqq W4 asym float-zero g32")
    with pytest.raises(ValueError, match=r"quantizer 'hqq' fits real-valued zero points; allowed"):
        Rule(quantizer="hqq")
    with pytest.raises(ValueError, match=r"hqq fits real-valued zero points; W4 asym g32"):
        get_quantizer("hqq").quantize(jnp.ones((64, 4)), QuantSpec(symmetric=False, group_size=32))
    with pytest.raises(
        ValueError, match=r"QuantSpec.zero_point='float' is invalid; allowed: 'int'"
    ):
        QuantSpec(zero_point="float")
    awq = Rule(quantizer="awq", options={"quantizer": "hqq"}, weight=QuantSpec(symmetric=False))
    assert awq.weight.float_zero  # AWQ's scales, then HQQ's zeros
    with pytest.raises(ValueError, match=r"gptq rounds with integer zero points; W4 asym float"):
        get_quantizer("gptq").quantize(
            jnp.ones((8, 4)),
            QuantSpec(symmetric=False, zero_point="float"),
            stats={"hessian": jnp.eye(8)},
        )


def test_matmul_paths_take_float_zero_points_where_they_can_and_name_the_others():
    w = jax.random.normal(jax.random.key(0), (32, 6))
    x = jax.random.normal(jax.random.key(1), (3, 32))
    qt = get_quantizer("hqq").quantize(w, QuantSpec(symmetric=False, zero_point="float"))
    np.testing.assert_allclose(w4a16_matmul(x, qt), x @ dequantize(qt), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"impl='blocked' multiplies integer codes less integer"):
        w4a16_matmul(x, qt, impl="blocked")
    with pytest.raises(ValueError, match=r"\(W4A4\) multiplies integer codes"):
        int_matmul(jnp.ones((3, 32), jnp.int8), jnp.ones((3, 1)), qt)


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(6, name="head")(nn.relu(nn.Dense(32, name="fc")(x)))


def test_an_hqq_model_runs_saves_and_loads_and_what_it_cannot_do_is_named(tmp_path):
    x = jax.random.normal(jax.random.key(2), (4, 64))
    params = MLP().init(jax.random.key(3), x)["params"]
    recipe = Recipe(
        (Rule(quantizer="hqq", weight=QuantSpec(bits=3, symmetric=False, group_size=16)),)
    )
    qm = quantize_model(MLP(), params, recipe, sample_input=x)
    np.testing.assert_array_equal(qm.apply(x), qm.apply(x, fake=True))  # int == fake
    directory = qm.save(tmp_path / "hqq")
    np.testing.assert_array_equal(load(directory, MLP()).apply(x), qm.apply(x))
    assert '"format_version": 3' in (directory / "q4lab.json").read_text()
    with pytest.raises(ValueError, match=r"layer 'fc' has real-valued zero points"):
        QATModel.start(qm)
    with pytest.raises(ValueError, match=r"Rule\(pattern='.\*'\): activation quantization mul"):
        Rule(quantizer="hqq", weight=QuantSpec(symmetric=False), act=ActSpec())


def test_integer_zero_points_keep_their_rounding():
    """round(w / s) + z, not round(w / s + z): they differ on ties (half to even)."""
    spec = QuantSpec(symmetric=False)
    wg = jnp.array([[[2.5]]])
    one, three = jnp.ones((1, 1, 1)), jnp.full((1, 1, 1), 3)
    assert float(affine.to_codes(wg, one, three, spec)[0, 0, 0]) == 5.0  # round(2.5) + 3
    float_spec = QuantSpec(symmetric=False, zero_point="float")
    assert float(affine.to_codes(wg, one, three.astype(jnp.float32), float_spec)[0, 0, 0]) == 6.0


def test_a_sweep_point_training_after_hqq_is_refused_before_anything_runs():
    from q4lab.sweep.fields import validate_point, with_defaults

    point = with_defaults({"task": "digits-mlp", "quantizer": "hqq", "symmetric": False})
    validate_point(point)
    with pytest.raises(ValueError, match=r"qat_steps=5 is invalid with quantizer 'hqq'"):
        validate_point(point | {"qat_steps": 5})
    rule = {"pattern": "Dense_0", "quantizer": "hqq", "symmetric": False}
    with pytest.raises(ValueError, match=r"qat_steps=5 is invalid with quantizer 'hqq'"):
        validate_point(with_defaults({"task": "digits-mlp", "qat_steps": 5, "rules": [rule]}))


def test_the_zero_point_field_gives_any_quantizer_that_takes_them_float_zero_points():
    """``zero_point='float'`` sweeps min-max or MSE with HQQ's kind of zero point (what the float
    zero is worth apart from HQQ's fit); 'auto', the default, keeps every point's hash."""
    from q4lab.sweep.fields import config_hash, recipe_of, validate_point, with_defaults

    base = {"task": "digits-mlp", "symmetric": False, "bits": 3}
    assert config_hash(base) == config_hash(base | {"zero_point": "auto"})
    for quantizer in ("minmax", "mse", "percentile"):
        rule = validate_point(with_defaults(base | {"quantizer": quantizer, "zero_point": "float"}))
        w = jax.random.normal(jax.random.key(4), (64, 5))
        qt = rule.rules[-1].build_quantizer().quantize(w, rule.rules[-1].weight)
        zero = np.asarray(qt.zero, np.float32)
        assert qt.zero.dtype == jnp.float16 and not np.array_equal(zero, np.round(zero))
    assert not recipe_of(base).rules[-1].weight.float_zero  # auto: min-max's integer zeros
    assert recipe_of(base | {"quantizer": "hqq"}).rules[-1].weight.float_zero  # auto: HQQ's
    bad = {
        "zero_point='flt' is invalid; allowed: auto, int, float": {"zero_point": "flt"},
        "zero_point='float' is invalid with symmetric=True": {"zero_point": "float"}
        | {"symmetric": True},
        "zero_point='int' is invalid with quantizer 'hqq'": {"zero_point": "int"}
        | {"quantizer": "hqq"},
        "quantizer 'gptq' rounds with integer zero points": {"zero_point": "float"}
        | {"quantizer": "gptq"},
        "activation quantization multiplies integer": {"zero_point": "float", "act_bits": 4},
        "qat_steps=5 is invalid with quantizer 'minmax'.*it is given real-valued": {
            "zero_point": "float",
            "qat_steps": 5,
        },
    }
    for message, fields in bad.items():
        with pytest.raises(ValueError, match=message):
            validate_point(with_defaults(base | fields))


def test_q4lab_quantize_shows_the_fields_its_flags_set(capsys):
    """Rows that differ only in a field outside the usual columns (here zero_point) must not
    print as duplicates, nor asymmetric rows as symmetric ones."""
    from q4lab.cli import main

    args = ["quantize", "--task", "digits-mlp", "--symmetric", "false", "--zero-point"]
    assert main([*args, "auto", "float"]) == 0
    header, _, auto, float_ = capsys.readouterr().out.strip().splitlines()[-4:]
    assert "| symmetric   | zero_point " in header and "scale_dtype" not in header
    assert "| False       | auto " in auto and "| False       | float " in float_
    args = ["quantize", "--task", "digits-mlp", "--quantizer", "minmax", "hqq", "--act-bits"]
    with pytest.raises(SystemExit):  # one combination of the flags is invalid: it is named
        main([*args, "16", "4", "--symmetric", "false"])
    assert (
        "error: the point task='digits-mlp', seed=0, quantizer='hqq', bits=4, group_size=0, "
        "act_bits=4, symmetric=False: Rule(pattern='.*'): activation quantization"
        in (capsys.readouterr().err)
    )
