import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from q4lab.core import QuantSpec
from q4lab.quantize_model import quantize_model
from q4lab.recipe import ActSpec, Recipe, Rule, TransformSpec, literal_value


class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(24, name="fc1")(x))
        y = nn.Einsum((24, 6), "bi,io->bo", name="mix")(x)
        return nn.Dense(4, name="head")(y)


@pytest.fixture(scope="module")
def tiny():
    x = jnp.ones((2, 12))
    return Tiny(), Tiny().init(jax.random.key(0), x)["params"], x


def _never(*_):
    raise AssertionError("calibration data was touched before the recipe was validated")
    yield


def test_a_rule_matching_nothing_fails_before_any_work(tiny):
    model, params, x = tiny
    recipe = Recipe((Rule(pattern="fc.*"), Rule(pattern="decoder/.*")))
    with pytest.raises(
        ValueError, match=r"recipe rule 1 \(pattern 'decoder/\.\*'\) matches no .*'fc1'"
    ):
        quantize_model(model, params, recipe, sample_input=x, calibration=_never())


def test_group_size_not_dividing_a_layer_names_rule_and_layer(tiny):
    model, params, x = tiny
    recipe = Recipe((Rule(pattern="fc1|head", weight=QuantSpec(group_size=5)),))
    with pytest.raises(
        ValueError, match=r"rule 0 .*layer 'fc1'.*group_size=5 does not divide .*K=12"
    ) as error:
        quantize_model(model, params, recipe, sample_input=x, calibration=_never())
    assert "layer 'head': QuantSpec.group_size=5 does not divide the input size K=6" in str(
        error.value
    )  # every such layer at once, not one per try


def test_a_rotation_that_would_mix_nothing_is_refused_and_one_that_mixes_less_warns(tiny):
    model, params, x = tiny
    rotate = TransformSpec(rotation="hadamard")
    recipe = Recipe((Rule(pattern="head", transform=rotate),))
    with pytest.warns(
        UserWarning, match=r"layer 'head': .*mixes the layer's K=6 inputs in blocks of 2"
    ):
        quantize_model(model, params, recipe, sample_input=x)
    odd = jnp.ones((2, 7))
    recipe = Recipe((Rule(pattern="fc1", transform=rotate),))
    with pytest.raises(ValueError, match=r"layer 'fc1': rotation='hadamard' would leave .*K=7"):
        quantize_model(
            model, Tiny().init(jax.random.key(0), odd)["params"], recipe, sample_input=odd
        )


def test_activation_quantization_on_an_einsum_is_refused_by_name(tiny):
    model, params, x = tiny
    recipe = Recipe((Rule(pattern="mix", act=ActSpec()),))
    with pytest.raises(
        ValueError, match=r"layer 'mix': activation quantization is not supported on an einsum"
    ):
        quantize_model(model, params, recipe, sample_input=x)


def test_a_calibrating_quantizer_on_an_einsum_is_refused_before_calibration(tiny):
    model, params, x = tiny  # calibration never sees an einsum's inputs: GPTQ has no Hessian
    recipe = Recipe((Rule(pattern="mix", quantizer="gptq"),))
    with pytest.raises(
        ValueError,
        match=r"layer 'mix': quantizer 'gptq' needs statistics of the layer's inputs \(hessian\)"
        r".* on an einsum layer; allowed there: .*minmax, mse, percentile",
    ):
        quantize_model(model, params, recipe, sample_input=x, calibration=_never())


def test_linens_whole_variables_dict_quantizes_as_its_params(tiny):
    model, params, x = tiny
    whole = quantize_model(model, {"params": params}, Recipe.single(), sample_input=x)
    qmodel = quantize_model(model, params, Recipe.single(), sample_input=x)
    np.testing.assert_array_equal(whole.apply(x), qmodel.apply(x))
    assert whole.ledger().total_bytes == qmodel.ledger().total_bytes
    with pytest.raises(ValueError, match="inputs is a list; allowed: an array, a tuple"):
        qmodel.apply(x.tolist())


def test_unknown_quantizer_and_bad_fields_are_named():
    with pytest.raises(
        ValueError, match=r"Rule\(pattern='attn/.\*'\).quantizer: unknown quantizer 'gptqq'"
    ):
        Rule(pattern="attn/.*", quantizer="gptqq")
    with pytest.raises(
        ValueError, match=r"quantizer: quantizer 'mse' has no option\(s\) \['pct'\]"
    ):
        Rule(quantizer="mse", options={"pct": 9})
    with pytest.raises(ValueError, match=r"Rule.pattern='\(' is not a valid regex"):
        Rule(pattern="(")
    with pytest.raises(
        ValueError, match=r"ActSpec.mode='lazy' is invalid; allowed: \('dynamic', 'static'\)"
    ):
        ActSpec(mode="lazy")
    with pytest.raises(ValueError, match=r"granularity='per_row' is invalid with mode='static'"):
        ActSpec(mode="static", granularity="per_row")
    assert ActSpec(mode="static").granularity == "per_tensor"  # the default follows the mode
    assert ActSpec().granularity == "per_row"
    with pytest.raises(ValueError, match=r"QuantSpec.bits=1"):
        ActSpec(bits=1)
    with pytest.raises(ValueError, match=r"Recipe.rules is empty"):
        Recipe(())
    with pytest.raises(
        ValueError, match=r"Recipe.rules is one Rule; allowed: .*Recipe\(\(rule,\)\)"
    ):
        Recipe(Rule())  # a TypeError from iterating it, before
    with pytest.raises(ValueError, match=r"Recipe.rules holds 'minmax'; allowed: Rule objects"):
        Recipe(("minmax",))


def test_static_activations_without_calibration_data_are_refused(tiny):
    model, params, x = tiny
    recipe = Recipe((Rule(pattern="fc1", act=ActSpec(mode="static", granularity="per_tensor")),))
    with pytest.raises(ValueError, match=r"needs calibration data for layer\(s\) \['fc1'\]"):
        quantize_model(model, params, recipe, sample_input=x)


def test_first_matching_rule_wins_and_unmatched_layers_stay_float(tiny):
    model, params, x = tiny
    recipe = Recipe(
        (
            Rule(pattern="head", weight=QuantSpec(bits=8)),
            Rule(pattern=".*", weight=QuantSpec(bits=4, group_size=4)),
        )
    )
    qm = quantize_model(model, params, recipe, sample_input=x)
    assert qm.layers["head"].spec.bits == 8
    assert qm.layers["fc1"].spec.group_size == 4
    ledger = {leaf.path: leaf for leaf in qm.ledger().leaves}
    assert ledger["['fc1']['bias']"].bits is None
    assert ledger["['mix']['kernel']"].bits == 4
    recipe = Recipe((Rule(pattern="fc1"),))
    only_fc1 = quantize_model(model, params, recipe, sample_input=x)
    assert {p for p, leaf in ((lf.path, lf) for lf in only_fc1.ledger().leaves) if leaf.bits} == {
        "['fc1']['kernel']"
    }


def test_a_group_as_large_as_the_layer_is_per_channel(tiny):
    model, params, x = tiny
    qm = quantize_model(
        model, params, Recipe((Rule(weight=QuantSpec(group_size=12)),)), sample_input=x
    )
    assert qm.layers["fc1"].spec.granularity == "per_channel"  # K=12 <= 12
    assert qm.layers["mix"].spec.granularity == "per_group"  # K=24


def test_command_line_values_are_python_or_json_literals():
    """`q4lab quantize --options` / `--rules` take what a user pastes from Python or JSON."""
    python = literal_value("{'act_order': True, 'clipping_options': {'p': 2.4}}")
    assert python == literal_value('{"act_order": true, "clipping_options": {"p": 2.4}}')
    assert literal_value('[{"pattern": "head", "quantizer": null}]') == [
        {"pattern": "head", "quantizer": None}
    ]
    assert literal_value("false") is False and literal_value("mse") == "mse"


def test_a_nan_in_a_rotated_weight_is_counted_in_the_weight_as_given(tiny):
    model, params, x = tiny
    kernel = params["fc1"]["kernel"].at[0, 0].set(jnp.nan)
    bad = {**params, "fc1": {**params["fc1"], "kernel": kernel}}
    recipe = Recipe((Rule(pattern="fc1", transform=TransformSpec(rotation="hadamard")),))
    with pytest.raises(ValueError, match=r"weight 'fc1' of shape \(12, 24\) holds 1 NaN/Inf value"):
        quantize_model(model, bad, recipe, sample_input=x)  # rotated, it held 12


def test_static_activation_ranges_from_all_zero_calibration_are_refused(tiny):
    model, params, x = tiny
    recipe = Recipe((Rule(pattern="fc1", act=ActSpec(mode="static")),))
    with pytest.raises(ValueError, match=r"inputs of layer 'fc1' are all zero, so they give no"):
        quantize_model(model, params, recipe, sample_input=x, calibration=[jnp.zeros_like(x)])
    quantize_model(model, params, recipe, sample_input=x, calibration=[x])  # a range to take


def test_one_batch_given_as_the_calibration_is_refused(tiny):
    model, params, x = tiny
    recipe = Recipe((Rule(pattern="fc1", act=ActSpec(mode="static")),))
    with pytest.raises(ValueError, match=r"calibration is one batch \(a .*\); allowed: .* \[x\]"):
        quantize_model(model, params, recipe, sample_input=x, calibration=x)
    stacked = quantize_model(model, params, recipe, sample_input=x, calibration=x[None])
    assert (
        stacked.acts["fc1"].scale
        == quantize_model(model, params, recipe, sample_input=x, calibration=[x]).acts["fc1"].scale
    )  # a stack of batches is batches
