"""Models with several inputs (positional or keyword) and rules that keep layers float."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from user_models import UserBERT, UserNNXKeywords

from q4lab.core import QuantSpec
from q4lab.quantize_model import quantize_model
from q4lab.recipe import ActSpec, Recipe, Rule
from q4lab.tasks import Task


def _bert_inputs(seed: int, batch: int = 4, length: int = 6):
    ids = jax.random.randint(jax.random.key(seed), (batch, length), 0, 50)
    mask = jnp.ones((batch, length)).at[:, length - 2 :].set(0.0)
    return ids, mask


def _kernel_bits(qmodel) -> dict[str, int | None]:
    return {
        leaf.path: leaf.bits for leaf in qmodel.ledger().leaves if leaf.path.endswith("['kernel']")
    }


def test_a_bert_style_linen_model_called_with_ids_and_mask():
    model = UserBERT()
    inputs = _bert_inputs(0)
    params = model.init(jax.random.key(1), *inputs)["params"]
    recipe = Recipe(
        (
            Rule.float("stem|head"),
            Rule(  # static ranges: calibration batches are (ids, mask) tuples
                pattern=".*",
                weight=QuantSpec(bits=4, group_size=16),
                act=ActSpec(bits=8, mode="static", granularity="per_tensor"),
            ),
        )
    )
    calibration = [_bert_inputs(s) for s in (2, 3)]
    qmodel = quantize_model(model, params, recipe, sample_input=inputs, calibration=calibration)

    bits = _kernel_bits(qmodel)
    assert bits.pop("['stem']['kernel']") is None and bits.pop("['head']['kernel']") is None
    assert set(bits.values()) == {4} and len(bits) == 6  # query key value out up down
    real, fake = qmodel.apply(inputs), qmodel.apply(inputs, fake=True)
    reference = model.apply({"params": params}, *inputs)
    np.testing.assert_allclose(real, fake, rtol=1e-4, atol=1e-5)
    assert 0 < float(jnp.max(jnp.abs(real - reference))) < 0.1 * float(jnp.max(jnp.abs(reference)))
    unmasked = (inputs[0], jnp.ones_like(inputs[1]))
    assert not np.allclose(qmodel.apply(unmasked), real)  # the mask reaches the model


def test_an_nnx_model_called_with_keyword_inputs():
    model = UserNNXKeywords(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (8, 16))
    inputs = {"features": x, "scale": jnp.float32(2.0)}
    recipe = Recipe(
        (
            Rule.float("first"),
            Rule.float("last"),
            Rule(pattern=".*", quantizer="mse", act=ActSpec(bits=4)),
        )
    )
    qmodel = quantize_model(model, None, recipe, sample_input=inputs)
    assert _kernel_bits(qmodel) == {
        "['first']['kernel']": None,
        "['last']['kernel']": None,
        "['middle']['kernel']": 4,
    }
    np.testing.assert_allclose(
        qmodel.apply(inputs), qmodel.apply(inputs, fake=True), rtol=1e-4, atol=1e-5
    )
    ledger = qmodel.ledger()
    float_kernels = (16 * 32 + 32 * 4) * 4
    assert ledger.float_bytes == float_kernels + (32 + 32 + 4) * 4  # and the biases


def test_a_float_rule_is_checked_and_described():
    with pytest.raises(ValueError, match=r"quantizer=None\) keeps its layers float; allowed"):
        Rule(pattern="head", quantizer=None, act=ActSpec(bits=4))
    recipe = Recipe((Rule.float("head"), Rule(pattern=".*", weight=QuantSpec(bits=3))))
    assert recipe.describe() == "head: float | .*: minmax W3 sym per-channel A16"
    fields = recipe.fields()
    assert fields["bits"] == 3 and fields["recipe_rules"] == recipe.describe()
    with pytest.raises(ValueError, match="keep every layer float"):
        Recipe((Rule.float(".*"),)).fields()


def test_a_rule_that_applies_to_no_layer_or_a_recipe_that_quantizes_none_is_refused(nnx_model):
    model, x = nnx_model
    shadowed = Recipe((Rule(pattern=".*", weight=QuantSpec(bits=8)), Rule(pattern="fc")))
    with pytest.raises(
        ValueError,
        match=r"rule 1 \(pattern 'fc'\) applies to no layer: every "
        r"layer it matches is taken by the earlier rule\(s\) \[0\]",
    ):
        quantize_model(model, None, shadowed, sample_input=x)
    with pytest.raises(ValueError, match="the recipe quantizes no layer"):
        quantize_model(model, None, Recipe((Rule.float("conv|fc|head"),)), sample_input=x)


def test_inputs_that_do_not_fit_the_parameters_are_named():
    """A sample input or a calibration batch of the wrong width raised Flax's
    ScopeParamShapeError from inside the model, naming neither."""
    import flax.linen as nn

    class Small(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(4)(x)

    x = jnp.ones((2, 8))
    params = Small().init(jax.random.key(0), x)["params"]
    gptq = Recipe.single(quantizer="gptq")
    with pytest.raises(ValueError, match=r"sample_input of shape\(s\) \(2, 9\) does not fit"):
        quantize_model(Small(), params, gptq, sample_input=jnp.ones((2, 9)), calibration=[x])
    with pytest.raises(ValueError, match=r"calibration batch 1 of shape\(s\) \(2, 7\) does not"):
        quantize_model(Small(), params, gptq, sample_input=x, calibration=[x, jnp.ones((2, 7))])


def _real_positions(batch):
    return batch[1] > 0


def _mask_values(batch):
    return batch[1]  # the attention mask's floats, not booleans


def _every_position(batch):
    return batch[1] >= 0


class _PaddedPairs(Task):
    """A task whose inputs are (ids, mask) pairs with padded positions, for `evaluate`."""

    name = "padded-pairs"
    model = UserBERT()
    metric = "error"
    higher_is_better = False
    calib_batch_size = 4
    eval_batch_size = 3  # a batch whose size is not the number of inputs (2)

    def __init__(self, mask=_real_positions):
        self.mask = mask

    def baseline(self, seed):
        return self.model.init(jax.random.key(seed), *_bert_inputs(0))["params"]

    def calibration_inputs(self, seed):
        return tuple(np.asarray(a) for a in _bert_inputs(seed + 10, batch=10))

    def test_inputs(self, seed):
        return tuple(np.asarray(a) for a in _bert_inputs(seed + 20, batch=5))

    def row_mask(self):
        return self.mask

    def metrics(self, forward, fp_forward, seed):
        x = self.test_inputs(seed)
        error = float(jnp.mean(jnp.abs(forward(x) - fp_forward(x))))
        return {"error": error, "fp_error": 0.0}


def test_a_task_of_several_inputs_evaluates_with_padding_left_out():
    """A task's defaults stacked a tuple of inputs into one array (a model of two inputs was
    called with one), and the real-vs-fake check cut outputs into as many rows as inputs."""
    from q4lab.evaluate import evaluate

    task = _PaddedPairs()
    assert task.calibration_count(0) == 10 and task.sample_input(0)[0].shape == (2, 6)
    assert [b[0].shape[0] for b in task.calibration(0)] == [4, 4, 2]
    static = Recipe(
        (Rule(pattern="stem|head", quantizer=None), Rule(act=ActSpec(bits=8, mode="static")))
    )
    record = evaluate(task, static, calib_padding="exclude")
    assert 0 < record["score"] < 0.1 and record["fake_rel_diff"] < 1e-3
    with pytest.raises(ValueError, match=r"the row mask returned float32\[4, 6\]; allowed: bool"):
        evaluate(_PaddedPairs(_mask_values), static, calib_padding="exclude")
    with pytest.warns(UserWarning, match="row mask keeps every calibration position"):
        evaluate(_PaddedPairs(_every_position), static, calib_padding="exclude")
