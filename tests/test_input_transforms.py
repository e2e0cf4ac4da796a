"""Rotations and smoothing on real models (Linen and NNX): exact in float, int == fake, counted."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from q4lab.adapters import adapt, get_at, set_at
from q4lab.core import QuantSpec, from_matrix, to_matrix
from q4lab.core.transforms import InputTransform
from q4lab.hooks import QuantHook
from q4lab.layer_quant import transform_stats
from q4lab.quantize_model import quantize_model
from q4lab.recipe import ActSpec, Recipe, Rule, TransformSpec
from q4lab.sweep.fields import config_hash, recipe_of

ROTATE = TransformSpec(rotation="hadamard", seed=3)
BOTH = TransformSpec(rotation="hadamard", smooth_alpha=0.5)
RECIPES = {
    "W4A4 dynamic, hadamard": Rule(
        pattern="Dense_0|split|fc|head",
        weight=QuantSpec(group_size=8),
        act=ActSpec(),
        transform=ROTATE,
    ),
    "W4A16 g8, hadamard (weight only)": Rule(
        pattern="Dense_0|split|fc|head", weight=QuantSpec(group_size=8), transform=ROTATE
    ),
    "W4A4 gptq act-order, smooth + hadamard": Rule(
        pattern="Dense_0|split|fc|head",
        quantizer="gptq",
        options={"act_order": True},
        act=ActSpec(symmetric=False),
        transform=BOTH,
    ),
    "W8A8 static, smooth": Rule(
        pattern="Dense_0|fc|head",
        weight=QuantSpec(bits=8),
        act=ActSpec(bits=8, mode="static", granularity="per_tensor"),
        transform=TransformSpec(smooth_alpha=0.8),
    ),
}


def _rel(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def _float_transformed(model, params, x):
    """The model with every dense layer's input transformed and its weight folded, no rounding."""
    adapter = adapt(model)
    params = adapter.params() if params is None else params
    folded, hooks = params, {}
    for i, layer in enumerate(adapter.layers(params, x)):
        if not (layer.hookable and layer.kind == "dense"):
            continue
        w = get_at(params, layer.key)
        smooth = np.random.default_rng(i).uniform(0.1, 10.0, layer.k)
        t = InputTransform(jnp.asarray(smooth, jnp.float32), jnp.asarray(i, jnp.uint32))
        w2d = t.fold(to_matrix(w, layer.in_axes))
        folded = set_at(folded, layer.key, from_matrix(w2d, w.shape, layer.in_axes))
        hooks[layer.path] = QuantHook(None, None, "fake", t)
    assert len(hooks) >= 2
    transformed = jax.jit(lambda p, x: adapter.apply(p, x, hooks))(folded, x)
    return transformed, jax.jit(lambda p, x: adapter.apply(p, x, {}))(params, x)


def test_rotated_and_smoothed_float_models_equal_the_original(linen, nnx_model):
    model, params, x = linen
    out, ref = _float_transformed(model, params, x)
    assert _rel(out, ref) < 1e-5
    model, x = nnx_model
    out, ref = _float_transformed(model, None, x)
    assert _rel(out, ref) < 1e-5


@pytest.mark.parametrize("name", list(RECIPES))
def test_integer_and_fake_paths_agree_with_transforms(linen, nnx_model, name):
    recipe = Recipe((RECIPES[name],))
    model, params, x = linen
    qm = quantize_model(model, params, recipe, sample_input=x, calibration=[x, -x])
    real, fake = qm.apply(x), qm.apply(x, fake=True)
    assert _rel(real, fake) < 1e-5
    assert _rel(real, model.apply({"params": params}, x)) < 0.5
    if "gptq" in name:  # NNX: the other recipes (one model kind is enough for GPTQ)
        return
    model, x = nnx_model
    qm = quantize_model(model, None, recipe, sample_input=x, calibration=[x])
    real, fake = qm.apply(x), qm.apply(x, fake=True)
    assert _rel(real, fake) < 1e-5
    assert _rel(real, model(x)) < 0.5


def test_transforms_are_stored_and_counted(linen):
    model, params, x = linen
    plain = Recipe((Rule(pattern="Dense_0|split|head", act=ActSpec()),))
    rotated = Recipe((Rule(pattern="Dense_0|split|head", act=ActSpec(), transform=BOTH),))
    a = quantize_model(model, params, plain, sample_input=x, calibration=[x]).ledger()
    b = quantize_model(model, params, rotated, sample_input=x, calibration=[x]).ledger()
    k = {"Dense_0": 32, "split": 16, "head": 8}
    extra = sum(4 * kk + 4 for kk in k.values())  # float32 smoothing scales + a uint32 seed
    assert b.total_bytes - a.total_bytes == extra
    assert sum(leaf.transform for leaf in b.leaves) == extra


def test_a_transform_on_a_conv_layer_is_refused_by_name(linen):
    model, params, x = linen
    recipe = Recipe((Rule(pattern="Conv_0", transform=ROTATE),))
    with pytest.raises(ValueError, match="layer 'Conv_0': an input transform is not supported"):
        quantize_model(model, params, recipe, sample_input=x)


def test_sweep_fields_build_the_transform_and_keep_old_hashes():
    old = {"task": "digits-mlp", "bits": 4, "act_bits": 4}
    assert config_hash(old) == config_hash(old | {"rotation": "none", "smooth_alpha": 0.0})
    assert config_hash(old) != config_hash(old | {"rotation": "hadamard"})
    rule = recipe_of(old | {"rotation": "hadamard", "smooth_alpha": 0.5, "seed": 1}).rules[0]
    assert rule.transform == TransformSpec(rotation="hadamard", smooth_alpha=0.5, seed=1)
    assert recipe_of(old).rules[0].transform is None
    with pytest.raises(ValueError, match="rotation='givens' is invalid; allowed"):
        recipe_of(old | {"rotation": "givens"})
    with pytest.raises(ValueError, match=r"smooth_alpha=1\.5 is invalid"):
        recipe_of(old | {"smooth_alpha": 1.5})


def test_rows_from_before_the_transform_fields_read_as_their_defaults(tmp_path):
    """A table extended with rotated rows still groups, plots and reports (no NaN mixed in)."""
    from q4lab.sweep.store import ResultsStore

    store = ResultsStore(tmp_path)
    store.append({"config_hash": "a", "task": "t"})
    store.append({"config_hash": "b", "task": "t", "rotation": "hadamard", "smooth_alpha": 0.5})
    table = store.read()
    assert list(table["rotation"]) == ["none", "hadamard"]
    assert list(table["smooth_alpha"]) == [0.0, 0.5]


def test_transformed_statistics_are_those_of_the_transformed_inputs():
    """GPTQ under a transform reads the Hessian and GPTAQ's cross moment of the transformed
    inputs (``R^T H R``, ``R^T C R``), derived from the captured ones without a second pass."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 24)).astype(np.float32) * rng.uniform(0.1, 5.0, 24)
    x_float = x + 0.2 * rng.normal(size=x.shape).astype(np.float32)
    t = InputTransform(jnp.asarray(rng.uniform(0.5, 2.0, 24), jnp.float32), jnp.uint32(7))
    stats = {"hessian": 2 * x.T @ x / len(x), "cross": 2 * x.T @ x_float / len(x)}
    got = transform_stats(t, {k: jnp.asarray(v) for k, v in stats.items()})
    xt, xt_float = (np.asarray(t.apply(jnp.asarray(a)), np.float64) for a in (x, x_float))
    for name, want in (("hessian", xt.T @ xt), ("cross", xt.T @ xt_float)):
        want = 2 * want / len(x)
        np.testing.assert_allclose(got[name], want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_the_fake_forward_rounds_the_weight_the_codes_were_made_from():
    """The fake forward folded the float weight again inside its jit, where a Paley-Hadamard
    rotation (K = 96 = 12 * 8) rounds otherwise than the eager fold the codes came from: with
    this seed, one code of 2048 columns flipped (0.85 % of the output in column 592)."""
    import flax.linen as nn

    class Wide(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(2048, use_bias=False)(x)

    x = jax.random.normal(jax.random.key(0), (4, 96))
    params = Wide().init(jax.random.key(1), x)["params"]
    rotation = TransformSpec(rotation="hadamard", seed=57)
    rule = Rule(weight=QuantSpec(group_size=32), transform=rotation)
    qm = quantize_model(Wide(), params, Recipe((rule,)), sample_input=x)
    real, fake = np.asarray(qm.apply(x)), np.asarray(qm.apply(x, fake=True))
    np.testing.assert_allclose(fake, real, rtol=0, atol=1e-5 * np.abs(real).max())
