"""Models that hold batch statistics beside their parameters (BatchNorm): Linen ones are
quantized from all of their variables, their statistics stay float and count in the ledger,
they save and load, and quantization-aware training leaves the statistics as they were."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from user_models import UserBNCNN, UserBNNNX  # pytest puts tests/ on the path

from q4lab.core import QuantSpec
from q4lab.export import load
from q4lab.qat import QATConfig, QATModel, train
from q4lab.quantize_model import quantize_model
from q4lab.recipe import ActSpec, Recipe, Rule

W4A4 = Recipe((Rule(weight=QuantSpec(group_size=4), act=ActSpec()),))


def _with_statistics(variables):
    """The model's variables with batch statistics far from init's (mean 0, var 1), so that a
    forward ignoring them would differ."""
    stats = variables["batch_stats"]
    mean = jax.random.normal(jax.random.key(3), stats["BatchNorm_0"]["mean"].shape)
    var = 0.5 + jax.random.uniform(jax.random.key(4), stats["BatchNorm_0"]["var"].shape)
    return {**variables, "batch_stats": {"BatchNorm_0": {"mean": mean, "var": var}}}


@pytest.fixture(scope="module")
def linen_bn():
    x = jax.random.normal(jax.random.key(0), (6, 10, 4))
    model = UserBNCNN()
    variables = _with_statistics(model.init(jax.random.key(1), x))
    return model, variables, x, quantize_model(model, variables, W4A4, sample_input=x)


def test_a_linen_model_with_batch_statistics_quantizes_from_its_variables(linen_bn):
    model, variables, x, qm = linen_bn
    assert set(qm.layers) == {"Conv_0", "head"}
    stats = qm.params["batch_stats"]["BatchNorm_0"]
    np.testing.assert_array_equal(stats["mean"], variables["batch_stats"]["BatchNorm_0"]["mean"])
    fp = model.apply(variables, x)
    out, sim = qm.apply(x), qm.apply(x, fake=True)
    scale = float(jnp.max(jnp.abs(fp)))
    assert float(jnp.max(jnp.abs(out - sim))) <= 1e-5 * scale  # int and fake forwards agree
    assert 0 < float(jnp.max(jnp.abs(out - fp))) <= 0.5 * scale  # quantized, near the float
    ledger = qm.ledger()  # the statistics are stored: float leaves of the ledger
    held = sum(np.asarray(a).nbytes for a in jax.tree.leaves(qm.params))
    assert ledger.total_bytes == held
    assert ledger.total_bytes - ledger.quantized_bytes == 4 * (8 + 8 + 8 + 8 + 5)  # BN, bias


def test_the_params_collection_alone_is_refused_naming_the_missing_one(linen_bn):
    model, variables, x, _ = linen_bn
    with pytest.raises(ValueError, match=r"batch_stats.*allowed: the whole variables dict"):
        quantize_model(model, variables["params"], W4A4, sample_input=x)


def test_a_linen_model_with_batch_statistics_saves_and_loads(linen_bn, tmp_path):
    *_, x, qm = linen_bn
    loaded = load(qm.save(tmp_path / "bn"), UserBNCNN())
    np.testing.assert_array_equal(loaded.apply(x), qm.apply(x))
    assert loaded.ledger() == qm.ledger()
    assert loaded.config["format_version"] == 4  # readers before variables misread the file


def _trained(qm, x):
    """The QAT state at start and after three steps of a cross-entropy on fixed labels."""
    qat, state = QATModel.start(qm)
    y = jnp.arange(x.shape[0]) % 5

    def loss(out, y, _):
        return -jnp.mean(jax.nn.log_softmax(out)[jnp.arange(y.shape[0]), y])

    trained, _ = train(qat, state, lambda rng: (x, y), loss, QATConfig(steps=3, lr=1e-2))
    return state, trained


def test_qat_trains_parameters_and_keeps_batch_statistics(linen_bn):
    *_, x, qm = linen_bn
    state, trained = _trained(qm, x)
    before, after = state["model"], trained["model"]
    for name in ("mean", "var"):
        np.testing.assert_array_equal(
            after["batch_stats"]["BatchNorm_0"][name], before["batch_stats"]["BatchNorm_0"][name]
        )
    assert not np.array_equal(after["params"]["head"]["kernel"], before["params"]["head"]["kernel"])
    assert not np.array_equal(
        after["params"]["BatchNorm_0"]["scale"], before["params"]["BatchNorm_0"]["scale"]
    )


def test_nnx_qat_keeps_batch_statistics():
    x = jax.random.normal(jax.random.key(0), (6, 10, 4))
    qm = quantize_model(UserBNNNX(nnx.Rngs(0)), None, W4A4, sample_input=x)
    state, trained = _trained(qm, x)
    np.testing.assert_array_equal(trained["model"]["bn"]["mean"], state["model"]["bn"]["mean"])
    np.testing.assert_array_equal(trained["model"]["bn"]["var"], state["model"]["bn"]["var"])
    assert not np.array_equal(trained["model"]["bn"]["scale"], state["model"]["bn"]["scale"])


class TrainingBN(nn.Module):
    """A Linen model whose call updates its batch statistics: training mode by default."""

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.BatchNorm(use_running_average=not train)(nn.Dense(8)(x))
        return nn.Dense(5, name="head")(x)


def test_a_model_given_in_training_mode_runs_in_inference_mode(tmp_path):
    """A fresh NNX instance (BatchNorm normalizing each batch by its own statistics) to load
    into gave outputs up to 4.8 off the saved model's, depending on the batch; a Linen call that
    updates its statistics is refused, saying so."""
    x = jax.random.normal(jax.random.key(0), (6, 10, 4))
    model = UserBNNNX(nnx.Rngs(0))
    model.bn.mean[...] = jax.random.normal(jax.random.key(5), (8,))  # far from a batch's
    model.train()
    qm = quantize_model(model, None, W4A4, sample_input=x)
    model.eval()
    again = quantize_model(model, None, W4A4, sample_input=x)
    np.testing.assert_array_equal(qm.apply(x), again.apply(x))
    fresh = UserBNNNX(nnx.Rngs(1))
    fresh.train()
    loaded = load(qm.save(tmp_path / "nnx"), fresh)
    np.testing.assert_array_equal(loaded.apply(x), qm.apply(x))
    np.testing.assert_allclose(loaded.apply(x[:1]), qm.apply(x)[:1], atol=1e-5)  # no batch stats
    assert fresh.bn.use_running_average is False  # the user's model is left as it was
    linen = TrainingBN()
    flat = x.reshape(6, -1)
    variables = linen.init(jax.random.key(0), flat)
    with pytest.raises(ValueError, match=r"the model updates its variables when called"):
        quantize_model(linen, variables, W4A4, sample_input=flat)


class TrainArgument(nn.Module):
    """A Linen model whose mode argument has no default."""

    @nn.compact
    def __call__(self, x, train: bool):
        return nn.Dense(5)(nn.BatchNorm(use_running_average=not train)(nn.Dense(8)(x)))


class KeywordMode(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.dense = nnx.Linear(4, 5, rngs=rngs)

    def __call__(self, x, *, deterministic):
        return self.dense(x)


def test_a_call_argument_without_default_is_named():
    """Flax's TypeError from inside the trace, for an argument q4lab does not pass, becomes an
    error naming it and how to give it a default."""
    x = jnp.ones((3, 4))
    variables = TrainArgument().init(jax.random.key(0), x, train=False)
    for model, params, name in (
        (TrainArgument(), variables, "train"),
        (KeywordMode(nnx.Rngs(0)), None, "deterministic"),
    ):
        with pytest.raises(ValueError, match=rf"missing a required argument: '{name}'.*default"):
            quantize_model(model, params, W4A4, sample_input=x)
    with pytest.raises(ValueError, match="too many positional arguments"):
        quantize_model(KeywordMode(nnx.Rngs(0)), None, W4A4, sample_input=(x, x))
    with pytest.raises(ValueError, match="inputs is a list; allowed: an array, a tuple"):
        quantize_model(TrainArgument(), variables, W4A4, sample_input=[x, x])


class Sowing(nn.Module):
    """Batch statistics and a call that sows a loss (as mixture-of-experts models do): init
    returns that collection too, which a saved model does not hold."""

    @nn.compact
    def __call__(self, x):
        h = nn.Dense(8)(x)
        self.sow("losses", "aux", jnp.mean(h**2))
        return nn.Dense(5, name="head")(nn.BatchNorm(use_running_average=True)(h))


def test_variables_kept_frozen_or_sown_quantize_save_load_and_train(linen_bn, tmp_path):
    *_, x, _ = linen_bn
    flat = x.reshape(6, -1)
    model = Sowing()
    variables = {k: v for k, v in model.init(jax.random.key(0), flat).items() if k != "losses"}
    qm = quantize_model(model, variables, W4A4, sample_input=flat)
    loaded = load(qm.save(tmp_path / "sow"), Sowing())
    np.testing.assert_array_equal(loaded.apply(flat), qm.apply(flat))
    frozen = quantize_model(model, flax.core.freeze(variables), W4A4, sample_input=flat)
    state, trained = _trained(frozen, flat)  # optax sees the FrozenDict's own structure
    np.testing.assert_array_equal(
        trained["model"]["batch_stats"]["BatchNorm_0"]["var"],
        state["model"]["batch_stats"]["BatchNorm_0"]["var"],
    )


class WithDropout(UserBNNNX):
    """`UserBNNNX` with a dropout that holds its own RNG state (uint32 counts, keys)."""

    def __init__(self, rngs: nnx.Rngs):
        super().__init__(rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        return super().__call__(self.drop(x))


def test_qat_trains_an_nnx_model_holding_rng_state():
    """The gradient was taken over every leaf of the state, RNG counts too: a TypeError."""
    x = jax.random.normal(jax.random.key(0), (6, 10, 4))
    qm = quantize_model(WithDropout(nnx.Rngs(0)), None, W4A4, sample_input=x)
    state, trained = _trained(qm, x)
    for before, after in zip(jax.tree.leaves(state), jax.tree.leaves(trained), strict=True):
        if not jnp.issubdtype(before.dtype, jnp.floating):  # RNG counts and keys: as they were
            np.testing.assert_array_equal(_raw(after), _raw(before))


def _raw(a):
    """An array's values; a PRNG key's data."""
    return jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a


class OwnFlag(nnx.Module):
    """A model computing its mode by a property of its own: inference mode is left to it."""

    def __init__(self, rngs: nnx.Rngs):
        self.fc = nnx.Linear(40, 5, rngs=rngs)
        self.training = False

    @property
    def deterministic(self) -> bool:
        return not self.training

    def __call__(self, x):
        return self.fc(x.reshape(x.shape[0], -1))


def test_a_models_own_mode_property_is_left_to_it(linen_bn, tmp_path):
    *_, x, _ = linen_bn
    qm = quantize_model(OwnFlag(nnx.Rngs(0)), None, W4A4, sample_input=x)  # eval() raised
    assert qm.apply(x).shape == (6, 5)


class LayerNormed(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(5, name="head")(nn.LayerNorm(name="norm")(nn.Dense(8)(x)))


class BatchNormed(nn.Module):
    """`LayerNormed` with its code edited: a BatchNorm where its LayerNorm was."""

    @nn.compact
    def __call__(self, x):
        norm = nn.BatchNorm(use_running_average=True, name="norm")
        return nn.Dense(5, name="head")(norm(nn.Dense(8)(x)))


def test_a_collection_the_module_reads_and_the_file_lacks_is_named(tmp_path):
    x = jnp.ones((2, 12))
    params = LayerNormed().init(jax.random.key(0), x)["params"]
    saved = quantize_model(LayerNormed(), params, W4A4, sample_input=x).save(tmp_path / "ln")
    BatchNormed.__name__ = "LayerNormed"  # the saved class's name: it loads, then is checked
    try:
        with pytest.raises(ValueError, match=r"model is not of the saved architecture"):
            load(saved, BatchNormed()).apply(x)
    finally:
        BatchNormed.__name__ = "BatchNormed"


def test_a_weight_of_no_elements_passes_the_quantizer_check():
    from q4lab.quantizers import check_quantized, get_quantizer

    quantizer, w = get_quantizer("minmax"), jnp.ones((8, 0))
    for spec in (QuantSpec(), QuantSpec(symmetric=False)):
        qt = quantizer.quantize(w, spec)
        assert check_quantized(qt, quantizer, spec, w, 0) is qt
