"""A researcher's own quantizer: what q4lab checks of it, so that one that errs fails at once,
naming itself, instead of giving wrong scores."""

import dataclasses
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from q4lab.core import QuantSpec
from q4lab.core.qtensor import relayout
from q4lab.quantizers import Quantizer, RangeQuantizer, check_quantized, get_quantizer
from q4lab.quantizers import base as registry
from q4lab.quantizers.minmax import MinMax

W = np.random.default_rng(0).normal(size=(32, 6)).astype(np.float32)


@settings(max_examples=30, deadline=None)
@given(
    bits=st.integers(2, 8),
    symmetric=st.booleans(),
    granularity=st.sampled_from([None, 8, "per_tensor"]),
    n=st.sampled_from([5, 6]),
    name=st.sampled_from(["minmax", "mse", "percentile"]),
)
def test_every_built_in_quantizer_passes_the_check(bits, symmetric, granularity, n, name):
    if granularity == "per_tensor":
        spec = QuantSpec(bits=bits, symmetric=symmetric, granularity="per_tensor")
    else:
        spec = QuantSpec(bits=bits, symmetric=symmetric, group_size=granularity)
    quantizer = get_quantizer(name)
    qt = quantizer.quantize(W[:, :n], spec)
    assert check_quantized(qt, quantizer, spec, W[:, :n], 0) is qt
    if bits == 4:
        check_quantized(relayout(qt, "kmajor"), quantizer, spec, W[:, :n], 0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Broken(MinMax):
    """min-max, then one thing changed in what it returns (not registered)."""

    name = "broken"
    change: str = ""

    def quantize(self, w, spec, *, in_axes=0, stats=None, name=""):
        right = super().quantize(w, spec, in_axes=in_axes, stats=stats, name=name)
        if self.change == "not a QTensor":
            return right.codes
        if self.change == "no zero":
            return dataclasses.replace(right, zero=None)
        if self.change == "int32 codes":
            return dataclasses.replace(right, codes=right.codes.astype(jnp.int32))
        if self.change == "NaN scale":
            return dataclasses.replace(right, scale=right.scale.at[0, 0].set(jnp.nan))
        if self.change == "float16 scales":
            return dataclasses.replace(right, scale=right.scale.astype(jnp.float16))
        if self.change == "per-channel scales":
            return dataclasses.replace(right, scale=right.scale[:1])
        if self.change == "another spec":
            return super().quantize(w, dataclasses.replace(spec, bits=8), in_axes=in_axes)
        if self.change == "codes out of range":
            return dataclasses.replace(right, codes=right.codes * 4)
        if self.change == "not a permutation":
            return dataclasses.replace(right, perm=jnp.zeros(right.k, jnp.int32))
        if self.change == "all codes at zero":  # an empty range: every code at its zero point
            codes = jnp.zeros_like(right.codes)
            if right.zero is not None:  # asymmetric: each row's codes packed as its zero's
                codes = jnp.broadcast_to(right.zero[:1], right.codes.shape)
            return dataclasses.replace(right, codes=codes)
        raise AssertionError(self.change)


@pytest.mark.parametrize(
    ("change", "spec", "says"),
    [
        ("not a QTensor", QuantSpec(), r"returned an object of type ArrayImpl; allowed: a QTensor"),
        ("no zero", QuantSpec(symmetric=False), r"it has no zero, and needs one"),
        ("int32 codes", QuantSpec(), r"its codes is int32\[32, 3\]; allowed: uint8\[32, 3\]"),
        ("NaN scale", QuantSpec(), r"scales that are zero, NaN or Inf"),
        ("float16 scales", QuantSpec(), r"its scale is float16\[1, 6\]; allowed: float32\[1, 6\]"),
        ("per-channel scales", QuantSpec(group_size=8), r"scale is float32\[1, 6\]; .*\[4, 6\]"),
        ("another spec", QuantSpec(), r"returned W8 sym per-channel .*; asked: QuantSpec\(bits=4"),
        ("codes out of range", QuantSpec(bits=6), r"codes in \[-124, 124\]; allowed: \[-32, 31\]"),
        ("not a permutation", QuantSpec(), r"perm that is not a permutation of the 32 rows"),
        ("all codes at zero", QuantSpec(bits=3), r"codes that all stand for 0"),
        ("all codes at zero", QuantSpec(symmetric=False), r"codes that all stand for 0"),
        ("all codes at zero", QuantSpec(bits=8, symmetric=False), r"codes that all stand for 0"),
    ],
)
def test_a_quantizer_returning_a_wrong_qtensor_is_named(change, spec, says):
    quantizer = Broken(change=change)
    qt = quantizer.quantize(W, spec)
    with pytest.raises(ValueError, match=r"quantizer 'broken' \(Broken\) on 'fc1' .*" + says):
        check_quantized(qt, quantizer, spec, W, 0, "fc1")


@dataclasses.dataclass(frozen=True)
class WrongAxis(RangeQuantizer):
    name = "wrong-axis"

    def weight_range(self, wg, spec):
        return wg.min(axis=2, keepdims=True), wg.max(axis=2, keepdims=True)


def test_an_all_zero_or_too_small_weight_may_quantize_to_zero():
    """Weights of 1e-8 under float16 scales underflow: min-max rightly gives codes of 0."""
    from q4lab.quantizers.base import _all_at_zero

    quantizer = get_quantizer("minmax")
    for w, scale_dtype in ((np.zeros_like(W), "float32"), (W * 1e-8, "float16")):
        for spec in (
            QuantSpec(scale_dtype=scale_dtype),
            QuantSpec(symmetric=False, group_size=8, scale_dtype=scale_dtype),
            QuantSpec(bits=3, symmetric=False, granularity="per_tensor", scale_dtype=scale_dtype),
        ):
            qt = quantizer.quantize(w, spec)
            assert _all_at_zero(qt), spec
            check_quantized(qt, quantizer, spec, w, 0)
    assert not _all_at_zero(
        quantizer.quantize(W, QuantSpec(symmetric=False, granularity="per_tensor"))
    )


def test_a_range_of_the_wrong_shape_is_named_with_the_shape_it_must_have():
    with pytest.raises(
        ValueError,
        match=r"quantizer 'wrong-axis' \(WrongAxis.weight_range\) returned ranges of shapes "
        r"lo \(4, 8, 1\), hi \(4, 8, 1\) for grouped weights \(4, 8, 6\) and W4 sym g8; "
        r"allowed: \(4, 1, 6\)",
    ):
        WrongAxis().quantize(W, QuantSpec(group_size=8))


@dataclasses.dataclass(frozen=True, kw_only=True)
class NoZero(Broken):
    name = "no-zero"
    change: str = "no zero"


def test_quantize_model_refuses_an_own_quantizer_that_errs_naming_the_layer(monkeypatch):
    from q4lab.quantize_model import quantize_model
    from q4lab.recipe import Recipe, Rule

    monkeypatch.setitem(registry._REGISTRY, "no-zero", NoZero)

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(6, name="fc1")(x)

    model = Model()
    x = jnp.ones((2, 32))
    params = model.init(jax.random.key(0), x)["params"]
    recipe = Recipe([Rule(quantizer="no-zero", weight=QuantSpec(symmetric=False))])
    with pytest.raises(
        ValueError, match=r"quantizer 'no-zero' \(.*NoZero\) on 'fc1' .*it has no zero"
    ):
        quantize_model(model, params, recipe, sample_input=x)


def test_register_says_what_a_quantizer_class_must_be(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    rule = r"a frozen dataclass of its options with a class attribute name"

    class Plain(Quantizer):  # options taken in __init__: get_quantizer could not see them
        name = "plain"

        def __init__(self, k=1.0):
            self.k = k

        def quantize(self, w, spec, *, in_axes=0, stats=None, name=""):
            raise AssertionError

    with pytest.raises(ValueError, match=r"register\(.*Plain\): not a frozen dataclass; .*" + rule):
        registry.register(Plain)

    @dataclasses.dataclass(frozen=True)
    class Anonymous(RangeQuantizer):
        def weight_range(self, wg, spec):
            return wg.min(axis=1, keepdims=True), wg.max(axis=1, keepdims=True)

    with pytest.raises(ValueError, match=r"name=None is invalid; .*" + rule):
        registry.register(Anonymous)
    with pytest.raises(ValueError, match=r"not a Quantizer subclass"):
        registry.register(dict)


def test_a_class_defined_again_replaces_itself_and_another_class_is_refused(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    def define(scale):  # what a notebook cell run twice does: the same module and name
        @registry.register
        @dataclasses.dataclass(frozen=True)
        class Mine(WrongAxis):
            name = "mine"
            factor: float = scale

        return Mine

    first, second = define(1.0), define(2.0)
    assert first is not second and get_quantizer("mine").factor == 2.0
    with pytest.raises(ValueError, match=r"quantizer name 'minmax' is already registered by"):

        @registry.register
        @dataclasses.dataclass(frozen=True)
        class MinMax(WrongAxis):
            name = "minmax"


@pytest.mark.parametrize(
    ("name", "options", "says"),
    [
        ("mse", {"p": "2.4"}, r"option p='2.4' is of type str; allowed: a number"),
        ("mse", {"grid": 2.5}, r"option grid=2.5 is of type float; allowed: an int"),
        ("gptq", {"act_order": 1}, r"option act_order=1 is of type int; allowed: True or False"),
    ],
)
def test_an_option_of_the_wrong_type_is_named(name, options, says):
    with pytest.raises(ValueError, match=rf"quantizer {name!r}: " + says):
        get_quantizer(name, **options)
    assert get_quantizer("mse", p=2).p == 2  # an int is a number


def test_register_refuses_a_dataclass_that_is_not_frozen(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @dataclasses.dataclass
    class Thawed(RangeQuantizer):  # would fail inside jit: its instances are static arguments
        name = "thawed"

        def weight_range(self, wg, spec):
            return wg.min(axis=1, keepdims=True), wg.max(axis=1, keepdims=True)

    with pytest.raises(ValueError, match=r"register\(.*Thawed\): not a frozen dataclass"):
        registry.register(Thawed)


def test_two_experiment_files_defining_one_name_are_told_apart(tmp_path, monkeypatch):
    from q4lab.sweep.experiment import run_experiment_file

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(sys, "path", list(sys.path))
    body = (
        "import dataclasses\nfrom q4lab.quantizers import register\n"
        "from q4lab.quantizers.minmax import MinMax\n"
        "@register\n@dataclasses.dataclass(frozen=True)\nclass Clip(MinMax):\n"
        "    name = 'clip'\n    def weight_range(self, wg, spec):\n"
        "        return super().weight_range(wg, spec)\n"
    )
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "exp.py").write_text(body)
    run_experiment_file(tmp_path / "a" / "exp.py")
    run_experiment_file(tmp_path / "a" / "exp.py")  # the same file again: the same class
    with pytest.raises(ValueError, match=r"quantizer name 'clip' is already registered"):
        run_experiment_file(tmp_path / "b" / "exp.py")


def test_awq_names_its_inner_quantizer_when_that_errs(monkeypatch):
    from q4lab.quantizers import ACTIVATIONS, HESSIAN

    monkeypatch.setitem(registry._REGISTRY, "no-zero", NoZero)
    x = np.random.default_rng(1).normal(size=(64, 32)).astype(np.float32)
    stats = {HESSIAN: jnp.asarray(2 * x.T @ x / 64), ACTIVATIONS: jnp.abs(jnp.asarray(x)).mean(0)}
    awq = get_quantizer("awq", quantizer="no-zero")
    with pytest.raises(ValueError, match=r"quantizer 'no-zero' \(.*NoZero\) on 'fc1' returned"):
        awq.quantize(W, QuantSpec(symmetric=False), stats=stats, name="fc1")
