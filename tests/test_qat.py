"""Quantization-aware training: the training forward, `freeze` exactness, and a real run."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from user_models import UserNNX  # pytest puts tests/ on the path

from q4lab.core import QuantSpec, dequantize, quantize
from q4lab.core.lsq import stored_scale
from q4lab.evaluate import evaluate
from q4lab.layer_quant import ActState, quantized_dot
from q4lab.losses import kl_to_float
from q4lab.qat import QATConfig, QATModel, train
from q4lab.quantize_model import quantize_model
from q4lab.quantizers import get_quantizer
from q4lab.recipe import ActSpec, Recipe, Rule, TransformSpec
from q4lab.sweep.fields import qat_of, recipe_of

QAT_RECIPES = {
    "W4A4 g4 dynamic": Recipe(
        (
            Rule(
                pattern="Conv_.*|Dense_0|conv|fc|head",
                weight=QuantSpec(group_size=4),
                act=ActSpec(),
            ),
        )
    ),
    "W3A4 asym static, gptq act-order g8": Recipe(
        (
            Rule(
                pattern="Conv_1|Dense_0|fc|head",
                quantizer="gptq",
                options={"act_order": True},
                weight=QuantSpec(bits=3, symmetric=False, group_size=8, scale_dtype="float16"),
                act=ActSpec(mode="static", granularity="per_tensor", symmetric=False),
            ),
        )
    ),
    "W4A4 gptq act-order g8, smooth + hadamard": Recipe(
        (
            Rule(
                pattern="Dense_0|split|head",
                quantizer="gptq",
                options={"act_order": True},
                weight=QuantSpec(group_size=8),
                act=ActSpec(),
                transform=TransformSpec(rotation="hadamard", smooth_alpha=0.5),
            ),
        )
    ),
}


def _max(a):
    return float(jnp.max(jnp.abs(a)))


def _rel(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


def _perturbed(state, seed):
    """Training state after some arbitrary updates: master weights, weight and act gains moved."""
    rng = np.random.default_rng(seed)  # numpy: one eager JAX random program per shape is slow
    return jax.tree_util.tree_map(
        lambda leaf: leaf * (1 + 0.2 * rng.uniform(-1, 1, leaf.shape)).astype(np.float32), state
    )


@pytest.mark.parametrize("method", ["lsq", "ste"])
@pytest.mark.parametrize("name", list(QAT_RECIPES))
def test_freeze_is_exact(linen, name, method):
    """The training forward is the frozen model's integer forward, value for value, at the
    start (the PTQ model) and after training; the fake (float-simulated) forward agrees as any
    quantized model's does (float order only)."""
    model, params, x = linen
    ptq = quantize_model(model, params, QAT_RECIPES[name], sample_input=x, calibration=[x, -x])
    qat, state = QATModel.start(ptq, method)
    forward = jax.jit(qat.apply)
    np.testing.assert_array_equal(forward(state, x), ptq.apply(x))
    state = _perturbed(state, 0)
    frozen = qat.freeze(state)
    train_out = forward(state, x)
    np.testing.assert_array_equal(frozen.apply(x), train_out)
    assert _rel(frozen.apply(x, fake=True), train_out) < 1e-5


@pytest.mark.parametrize(
    "act", [None, ActSpec(), ActSpec(mode="static", granularity="per_tensor", symmetric=False)]
)
def test_train_mode_takes_integer_values_and_fake_gradients(act):
    """`quantized_dot(mode="train")`: the integer path's output, the float simulation's
    gradients (straight-through in x and the fake weight; LSQ's in the activation gain)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(6, 16)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(16, 5)), jnp.float32)
    spec = QuantSpec(group_size=8)
    qt = quantize(w, spec, get_quantizer("minmax").params(w, spec)[0])
    state = None
    if act is not None:
        scale, zero = act.params(x) if act.mode == "static" else (None, None)
        state = ActState(act, scale, zero, jnp.asarray(1.1, jnp.float32))
    cotangent = jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)

    def run(mode):
        def f(x, w, gain):
            a = None if state is None else dataclasses.replace(state, gain=gain)
            if mode == "train":
                y = quantized_dot(x, w, a, "train", frozen=qt)
            else:  # the float simulation, with the training gradients of its activations
                y = jnp.dot(x if a is None else a.quantize(x, "train")[0], w)
            return jnp.sum(cotangent * y)

        gain = None if state is None else state.gain
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(x, dequantize(qt), gain)

    train, simulated = run("train"), run("simulated")
    np.testing.assert_array_equal(
        jax.jit(lambda x, w: quantized_dot(x, w, state, "train", frozen=qt))(x, dequantize(qt)),
        quantized_dot(x, qt, state, "int"),
    )
    np.testing.assert_allclose(train[0], simulated[0], rtol=1e-5)
    leaves = zip(jax.tree.leaves(train[1]), jax.tree.leaves(simulated[1]), strict=True)
    for g_train, g_simulated in leaves:
        np.testing.assert_allclose(g_train, g_simulated, rtol=1e-6, atol=1e-7)
    assert all(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(train[1]))


def test_ste_trains_master_weights_and_keeps_the_steps(linen):
    model, params, x = linen
    ptq = quantize_model(model, params, QAT_RECIPES["W4A4 g4 dynamic"], sample_input=x)
    qat, state = QATModel.start(ptq, "ste")
    assert state["steps"] == {}
    grads = jax.jit(jax.grad(lambda p: jnp.sum(qat.apply(p, x) ** 2)))(state)
    kernel = grads["model"]["Conv_0"]["kernel"]
    assert float(jnp.mean(kernel != 0)) > 0.5
    frozen = qat.freeze(_perturbed(state, 1))
    for plan in ptq.layers.values():
        key = plan.layer.key
        np.testing.assert_array_equal(_at(frozen.params, key).scale, _at(ptq.params, key).scale)


def test_one_step_trains_at_the_peak_rate(linen):
    model, params, x = linen  # (qat_steps=1 used to leave optax's cosine no steps to decay over)
    ptq = quantize_model(model, params, QAT_RECIPES["W4A4 g4 dynamic"], sample_input=x)
    qat, state = QATModel.start(ptq, "ste")
    config = QATConfig(steps=1, lr=1e-2, method="ste")
    loss = lambda out, y, fp_out: jnp.sum(out**2)  # noqa: E731
    trained, log = train(qat, state, lambda rng: (x, None), loss, config, fp_params=params)
    assert len(log.losses) == 1
    kernel = trained["model"]["Conv_0"]["kernel"] - state["model"]["Conv_0"]["kernel"]
    assert float(jnp.max(jnp.abs(kernel))) > 1e-3  # AdamW's first step moves by about lr

    # a config that does not match what runs is refused, not silently half-used
    with pytest.raises(ValueError, match=r"method='lsq' is invalid .* allowed: 'ste'"):
        train(qat, state, lambda rng: (x, None), loss, QATConfig(steps=1), fp_params=params)
    with pytest.raises(ValueError, match=r"kl_to_float distills .* QATConfig\(loss='distill'\)"):
        train(qat, state, lambda rng: (x, None), kl_to_float, config, fp_params=params)

    # distilling from the float model: by default the one the model was quantized from
    distill = dataclasses.replace(config, loss="distill")
    given, _ = train(qat, state, lambda rng: (x, None), kl_to_float, distill, fp_params=params)
    default, _ = train(qat, state, lambda rng: (x, None), kl_to_float, distill)
    jax.tree_util.tree_map(np.testing.assert_array_equal, given, default)


def test_lsq_steps_get_gradients(linen):
    model, params, x = linen
    ptq = quantize_model(model, params, QAT_RECIPES["W4A4 g4 dynamic"], sample_input=x)
    qat, state = QATModel.start(ptq, "lsq")
    grads = jax.jit(jax.grad(lambda p: jnp.sum(qat.apply(p, x) ** 2)))(state)
    for path, g in grads["steps"].items():
        assert float(jnp.mean(g["w_gain"] != 0)) > 0.5, path
        assert float(g["act_gain"]) != 0.0, path


def test_nnx_model_trains_and_freezes(linen):
    from flax import nnx

    model = UserNNX(nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(2), (3, 10, 4))
    ptq = quantize_model(model, None, QAT_RECIPES["W4A4 g4 dynamic"], sample_input=x)
    qat, state = QATModel.start(ptq, "lsq")
    opt = optax.adam(1e-2)
    opt_state = opt.init(state)
    target = jnp.zeros((3, 5))

    def loss(p):
        return jnp.mean((qat.apply(p, x) - target) ** 2)

    @jax.jit
    def step(p, s):
        updates, s = opt.update(jax.grad(loss)(p), s)
        return optax.apply_updates(p, updates), s

    first = float(jax.jit(loss)(state))
    for _ in range(20):
        state, opt_state = step(state, opt_state)
    assert float(jax.jit(loss)(state)) < 0.5 * first
    frozen = qat.freeze(state)
    out = jax.jit(qat.apply)(state, x)
    np.testing.assert_allclose(
        frozen.apply(x, fake=True), out, atol=1e-6 * float(jnp.max(jnp.abs(out)))
    )


def _at(tree, key):
    for k in key:
        tree = tree[k]
    return tree


def test_a_learned_step_never_reaches_zero_or_below():
    """A large learning rate drove LSQ's gains negative (steps down to -0.16): a gain counts at
    least MIN_GAIN, and above it is unchanged."""
    from q4lab.layer_quant import MIN_GAIN, WeightQuant

    spec = QuantSpec(group_size=4)
    w = jax.random.normal(jax.random.key(0), (8, 3))
    scale0 = get_quantizer("minmax").quantize(w, spec).scale
    gain = jnp.array([[1.5, 0.0, -0.5], [0.2, -2.0, 1.0]])
    weight = WeightQuant(w, scale0, None, None, gain, spec, (0,))
    expected = scale0 * jnp.maximum(gain, MIN_GAIN)
    np.testing.assert_allclose(weight.steps(), expected, rtol=1e-7)
    assert bool((weight.freeze().scale > 0).all())
    act = ActState(ActSpec(), None, None, jnp.asarray(-1.0))
    scale, _ = act.step(jnp.ones((2, 4)))
    assert bool((scale > 0).all())


def test_a_learned_step_that_float16_rounds_to_zero_stays_positive():
    """A floored step of a group of tiny weights (3e-5) rounds to 0 in float16: the group's
    values and the gain's gradient were NaN, and the frozen QTensor held scale 0."""
    from q4lab.layer_quant import MIN_GAIN, WeightQuant

    spec = QuantSpec(group_size=4, scale_dtype="float16")
    w = (
        jax.random.normal(jax.random.key(0), (8, 3))
        .at[:4, 0]
        .set(jnp.array([3e-5, -2e-5, 0, 1e-5]))
    )
    scale0 = get_quantizer("minmax").quantize(w, spec).scale.astype(jnp.float32)
    gain = jnp.full(scale0.shape, MIN_GAIN)

    def value(gain):
        return WeightQuant(w, scale0, None, None, gain, spec, (0,)).value()

    assert float(scale0[0, 0]) * MIN_GAIN < float(jnp.finfo(jnp.float16).smallest_subnormal) / 2
    assert bool(jnp.isfinite(value(gain)).all())
    assert bool(jnp.isfinite(jax.grad(lambda g: jnp.sum(value(g) ** 2))(gain)).all())
    frozen = WeightQuant(w, scale0, None, None, gain, spec, (0,)).freeze()
    assert bool((frozen.scale > 0).all())
    for dtype in ("float32", "bfloat16", "float16"):  # XLA:CPU flushes float32 subnormals
        step = stored_scale(jnp.zeros(3), QuantSpec(scale_dtype=dtype))
        assert bool((jax.jit(lambda s: s)(step) > 0).all()), dtype


def test_qat_config_names_the_bad_field():
    with pytest.raises(
        ValueError, match=r"qat_method='adam' is invalid; allowed: \('ste', 'lsq'\)"
    ):
        QATConfig(method="adam")
    with pytest.raises(ValueError, match="qat_loss='kl' is invalid"):
        QATConfig(loss="kl")
    with pytest.raises(ValueError, match="qat_lr=0 is invalid"):
        QATConfig(lr=0)
    for lr in (float("nan"), float("inf")):  # nan passed and trained on NaN
        with pytest.raises(ValueError, match=f"qat_lr={lr} is invalid; allowed: a finite"):
            QATConfig(lr=lr)
    with pytest.raises(ValueError, match="qat_batch_size=0 is invalid"):  # the sweep's name
        QATConfig(batch_size=0)
    assert QATConfig(steps=np.int64(5), lr=np.float32(1e-3)).steps == 5  # numpy numbers too


def test_a_short_qat_run_lowers_the_loss_and_beats_its_ptq_start(task_cache):
    """digits-mlp at W3A3: LSQ fine-tuning for 150 steps, frozen and scored in integers."""
    point = {
        "task": "digits-mlp",
        "bits": 3,
        "act_bits": 3,
        "qat_steps": 150,
        "qat_lr": 1e-3,
        "qat_method": "lsq",
    }
    row = evaluate("digits-mlp", recipe_of(point), 0, qat=qat_of(point), train_progress=False)
    assert row["qat_loss_end"] < 0.5 * row["qat_loss_start"]
    assert row["score"] > row["ptq_score"] + 0.01
    assert row["score"] == row["qat_fake_score"]  # frozen integers == the training forward
    assert row["fake_agreement"] == 1.0


class HalfConvNet(nn.Module):
    """bfloat16 parameters computing in float32 (dtype None): a weight-only conv and a dense."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3,), param_dtype=jnp.bfloat16)(x)
        return nn.Dense(3, param_dtype=jnp.bfloat16)(x.reshape(x.shape[0], -1))


def test_bfloat16_masters_train_in_float32_and_freeze_to_their_dtype():
    """bfloat16 masters rounded most Adam updates away (9 % of weights moved in 100 steps at
    1e-4), and a weight-only conv's training kernel was rounded to bfloat16 where the frozen
    model's dequantized codes are float32 (1.4e-3 apart from step 0)."""
    x = jax.random.normal(jax.random.key(0), (4, 8, 2))
    model = HalfConvNet()
    params = model.init(jax.random.key(1), x)["params"]
    recipe = Recipe((Rule(pattern="Conv_0", weight=QuantSpec(group_size=2)), Rule(act=ActSpec())))
    ptq = quantize_model(model, params, recipe, sample_input=x)
    qat, state = QATModel.start(ptq, "lsq")
    assert state["model"]["Dense_0"]["kernel"].dtype == jnp.float32
    forward = jax.jit(qat.apply)
    np.testing.assert_array_equal(forward(state, x), ptq.apply(x))
    state = _perturbed(state, 1)
    frozen = qat.freeze(state)
    np.testing.assert_array_equal(frozen.apply(x), forward(state, x))
    assert frozen.float_params["Dense_0"]["bias"].dtype == jnp.bfloat16


def test_qat_restarts_from_a_frozen_model_and_refuses_a_loaded_one(linen, tmp_path):
    """A frozen LSQ model's dynamic activation gains were dropped by a restart (0.12 off its
    outputs); a loaded model, which holds no float weights, started and failed later with a
    TypeError."""
    from q4lab.export import load

    model, params, x = linen
    ptq = quantize_model(model, params, QAT_RECIPES["W4A4 g4 dynamic"], sample_input=x)
    qat, state = QATModel.start(ptq, "lsq")
    frozen = qat.freeze(_perturbed(state, 2))
    assert any(a.gain is not None for a in frozen.acts.values())
    for method in ("lsq", "ste"):
        again, restarted = QATModel.start(frozen, method)
        np.testing.assert_array_equal(jax.jit(again.apply)(restarted, x), frozen.apply(x))
    with pytest.raises(ValueError, match="starts from the float weights, which a loaded model"):
        QATModel.start(load(frozen.save(tmp_path / "frozen"), model), "lsq")
