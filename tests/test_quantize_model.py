"""Recipes applied to models written plainly, as a user would, in Linen and in NNX."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from q4lab.adapters import adapt
from q4lab.calibrate import Calibrator, calibrate
from q4lab.core import QuantSpec, dequantize
from q4lab.hooks import (
    InputsHook,
    conv_patches,
    extreme_rows,
    fit_row_mask,
    spread_kept_rows,
    spread_rows,
)
from q4lab.layer_quant import make_transform
from q4lab.quantize_model import quantize_model
from q4lab.quantizers import get_quantizer
from q4lab.recipe import ActSpec, Recipe, Rule, TransformSpec

RECIPES = {
    "W4A16 g4": Recipe((Rule(weight=QuantSpec(group_size=4)),)),
    "W4A4 dynamic": Recipe(
        (
            Rule(
                pattern="Conv_.*|conv|Dense_0|fc|head",
                weight=QuantSpec(group_size=4),
                act=ActSpec(),
            ),
        )
    ),
    "W4A4 asym acts": Recipe(
        (Rule(pattern="Conv_1|Dense_0|fc|head", quantizer="mse", act=ActSpec(symmetric=False)),)
    ),
    "W8A8 asym (int16 centered codes)": Recipe(
        (
            Rule(
                pattern="Conv_0|conv|Dense_0|fc",
                weight=QuantSpec(bits=8, symmetric=False),
                act=ActSpec(bits=8, symmetric=False),
            ),
        )
    ),
    "W8A8 static": Recipe(
        (
            Rule(
                pattern="Conv_.*|conv|head",
                weight=QuantSpec(bits=8),
                act=ActSpec(bits=8, mode="static", granularity="per_tensor", clipping="percentile"),
            ),
        )
    ),
}


def _rel(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


@pytest.mark.parametrize("name", list(RECIPES))
def test_linen_quantized_forward_equals_fake_quant_forward(linen, name):
    model, params, x = linen
    qm = quantize_model(model, params, RECIPES[name], sample_input=x, calibration=[x, -x])
    real, fake = qm.apply(x), qm.apply(x, fake=True)
    assert _rel(real, fake) < 1e-5
    assert _rel(real, model.apply({"params": params}, x)) < 0.5  # quantized, not broken


@pytest.mark.parametrize("name", list(RECIPES))
def test_nnx_model_is_quantized_by_the_same_rules(nnx_model, name):
    model, x = nnx_model
    qm = quantize_model(model, None, RECIPES[name], sample_input=x, calibration=[x])
    assert set(qm.layers) <= {"conv", "fc", "head"} and qm.layers
    real, fake = qm.apply(x), qm.apply(x, fake=True)
    assert _rel(real, fake) < 1e-5
    assert _rel(real, model(x)) < 0.5


def test_weight_only_forward_is_the_model_on_dequantized_weights(linen):
    model, params, x = linen
    qm = quantize_model(model, params, RECIPES["W4A16 g4"], sample_input=x)
    deq = jax.tree_util.tree_map(
        lambda leaf: dequantize(leaf) if hasattr(leaf, "spec") else leaf,
        qm.params,
        is_leaf=lambda leaf: hasattr(leaf, "spec"),
    )
    np.testing.assert_allclose(
        np.asarray(qm.apply(x)), np.asarray(model.apply({"params": deq}, x)), rtol=1e-6, atol=1e-6
    )
    assert set(qm.layers) == {"Conv_0", "Conv_1", "Dense_0", "split", "mix", "head"}
    assert qm.layers["split"].layer.in_axes == (0,) and qm.layers["mix"].layer.kind == "einsum"


def test_calibration_captures_the_hessian_of_dense_and_conv_inputs(linen):
    model, params, x = linen
    adapter = adapt(model)
    stats = calibrate(
        adapter, params, {"Conv_1": {"hessian"}, "Dense_0": {"hessian"}}, [x, x * 0.5]
    )
    # Conv_1's input (Conv_0 + ReLU) recomputed here, then its im2col rows.
    conv0, conv1 = params["Conv_0"], params["Conv_1"]

    def conv_in(xb):
        return nn.relu(
            jax.lax.conv_general_dilated(
                xb, conv0["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            + conv0["bias"]
        )

    rows = []
    for xb in (x, x * 0.5):
        patches = conv_patches(
            conv_in(xb),
            conv1["kernel"],
            (2, 2),
            "VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        rows.append(np.asarray(patches).reshape(-1, patches.shape[-1]))
    big = np.concatenate(rows).astype(np.float64)
    expected = 2 * big.T @ big / len(big)
    np.testing.assert_allclose(
        np.asarray(stats["Conv_1"]["hessian"]), expected, rtol=1e-4, atol=1e-6
    )
    assert stats["Dense_0"]["hessian"].shape == (2 * 2 * 8, 2 * 2 * 8)


def test_im2col_patches_follow_the_kernel_layout(linen):
    _, params, _ = linen
    kernel = params["Conv_1"]["kernel"]  # [3, 3, 8, 8]
    inp = jax.random.normal(jax.random.key(5), (2, 6, 6, 8))
    dn = ("NHWC", "HWIO", "NHWC")
    patches = conv_patches(inp, kernel, (2, 2), "VALID", dimension_numbers=dn)
    via_matmul = patches @ kernel.reshape(-1, kernel.shape[-1])
    direct = jax.lax.conv_general_dilated(inp, kernel, (2, 2), "VALID", dimension_numbers=dn)
    np.testing.assert_allclose(np.asarray(via_matmul), np.asarray(direct), rtol=1e-5, atol=1e-5)


def test_fake_forward_passes_the_straight_through_gradient_to_the_input():
    """One dense layer, min-max activation ranges (nothing clipped): d/dx of sum(c * y) is
    ``c @ W_hat^T``, as if the activation quantizer were the identity."""
    model = nn.Dense(5)
    x = jax.random.normal(jax.random.key(3), (4, 16))
    params = model.init(jax.random.key(4), x)["params"]
    recipe = Recipe.single(weight=QuantSpec(bits=4), act=ActSpec(bits=4))
    qm = quantize_model(model, params, recipe, sample_input=x)
    c = jax.random.normal(jax.random.key(5), (4, 5))
    grad = jax.grad(lambda x: jnp.sum(c * qm.apply(x, fake=True)))(x)
    w_hat = dequantize(qm.params["kernel"])
    np.testing.assert_allclose(np.asarray(grad), np.asarray(c @ w_hat.T), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in RECIPES if n != "W4A16 g4"])
def test_fake_forward_of_quantized_activations_is_differentiable(linen, name):
    """Through convs, dense layers and static ranges, the input gets a gradient almost
    everywhere (without the straight-through estimator only dynamic scales carried one, to
    0 to 22% of these inputs)."""
    model, params, x = linen
    qm = quantize_model(model, params, RECIPES[name], sample_input=x, calibration=[x, -x])
    grad = jax.grad(lambda x: jnp.sum(qm.apply(x, fake=True) ** 2))(x)
    assert np.mean(np.asarray(grad) != 0) > 0.9


def test_static_activation_scales_come_from_calibration(linen):
    model, params, x = linen
    qm = quantize_model(model, params, RECIPES["W8A8 static"], sample_input=x, calibration=[x])
    assert set(qm.acts) == {"Conv_0", "Conv_1", "head"}
    scale, zero = qm.acts["Conv_0"].scale, qm.acts["Conv_0"].zero
    assert zero is None and qm.acts["Conv_0"].gain is None
    # percentile 99.9 of |x| over the calibration inputs of the first conv, / 127
    expected = np.percentile(np.abs(np.asarray(x)), 99.9) / 127
    assert float(scale[0, 0]) == pytest.approx(expected, rel=1e-3)


def test_gptq_sequential_calibration_sees_the_earlier_layers_quantized(linen):
    """Sequential GPTQ quantizes each layer on the inputs produced by the layers already
    quantized; with float inputs every layer sees the float model's activations."""
    model, params, x = linen
    batches = [x, -x, 0.5 * x]
    rule = {"pattern": "Conv_.*|Dense_0|head", "quantizer": "gptq"}
    seq = quantize_model(
        model, params, Recipe((Rule(**rule),)), sample_input=x, calibration=batches
    )
    flt = quantize_model(
        model,
        params,
        Recipe((Rule(**rule),), sequential=False),
        sample_input=x,
        calibration=batches,
    )
    order = list(seq.layers)
    assert order == ["Conv_0", "Conv_1", "Dense_0", "head"]  # the order the model calls them

    def quantized(qm, path):
        return np.asarray(dequantize(qm.params[path]["kernel"]))

    np.testing.assert_array_equal(quantized(seq, "Conv_0"), quantized(flt, "Conv_0"))
    assert not np.array_equal(quantized(seq, "Dense_0"), quantized(flt, "Dense_0"))

    # Dense_0 again, by hand: the Hessian of the model with both convs dequantized.
    adapter = adapt(model)
    working = {**params}
    for path in ("Conv_0", "Conv_1"):
        working[path] = {**params[path], "kernel": dequantize(seq.params[path]["kernel"])}
    hessian = calibrate(adapter, working, {"Dense_0": {"hessian"}}, batches)["Dense_0"]
    by_hand = get_quantizer("gptq").quantize(
        params["Dense_0"]["kernel"], QuantSpec(), stats=hessian
    )
    np.testing.assert_array_equal(quantized(seq, "Dense_0"), np.asarray(dequantize(by_hand)))
    # Weight-only GPTQ: the fake-quant simulation runs the same dequantized weights, but the
    # integer path sums K in blocks (q4lab.ops.blocked) and the module's dot in XLA's order,
    # which differs between AVX2 and AVX-512. Float32 sums of the same K products in another
    # order differ by at most K * 2^-24 * sum|x_k w_k| per layer (about 1e-6 of the logits
    # here); 1e-5 of the largest logit leaves room for that to pass through the four layers.
    real, fake = np.asarray(seq.apply(x)), np.asarray(seq.apply(x, fake=True))
    np.testing.assert_allclose(real, fake, rtol=0, atol=1e-5 * np.abs(fake).max())


def test_gptq_float_target_uses_the_cross_moment_of_quantized_and_float_inputs(linen):
    """GPTQ with ``float_target`` (GPTAQ): each layer's cross moment pairs its inputs in the
    partly quantized model with the float model's on the same rows; the layer is GPTQ of the
    least-squares weight. One-shot calibration has no drift to fit and is refused."""
    model, params, x = linen
    batches = [x, -x, 0.5 * x]
    rule = Rule(pattern="Conv_.*|Dense_0|head", quantizer="gptq", options={"float_target": True})
    qm = quantize_model(model, params, Recipe((rule,)), sample_input=x, calibration=batches)

    adapter = adapt(model)
    working = {**params}
    for path in ("Conv_0", "Conv_1"):
        working[path] = {**params[path], "kernel": dequantize(qm.params[path]["kernel"])}
    stats = Calibrator(adapter, {"Dense_0": {"hessian", "cross"}})(
        working, batches, float_params=params
    )["Dense_0"]
    rows = {}
    for name, p in (("quantized", working), ("float", params)):
        hooks = {"Dense_0": InputsHook()}
        for batch in batches:
            adapter.apply(p, batch, hooks)
        rows[name] = np.concatenate([np.asarray(r, np.float64) for r in hooks["Dense_0"].rows])
    xq, xf = rows["quantized"], rows["float"]
    cross = 2 * xq.T @ xf / len(xq)
    np.testing.assert_allclose(stats["cross"], cross, rtol=0, atol=1e-5 * np.abs(cross).max())
    assert not np.allclose(stats["cross"], stats["hessian"])  # the inputs did drift
    by_hand = rule.build_quantizer().quantize(params["Dense_0"]["kernel"], QuantSpec(), stats=stats)
    np.testing.assert_array_equal(
        np.asarray(dequantize(qm.params["Dense_0"]["kernel"])), np.asarray(dequantize(by_hand))
    )
    with pytest.raises(ValueError, match=r"float_target=True.*sequential=True"):
        Recipe((rule,), sequential=False)


def test_calibrator_compiles_once_for_new_parameter_values(linen):
    model, params, x = linen
    calibrator = Calibrator(adapt(model), {"Dense_0": {"hessian"}, "head": {"hessian"}})
    first = calibrator(params, [x])
    halved = jax.tree_util.tree_map(lambda a: 0.5 * a, params)
    second = calibrator(halved, [x])
    assert calibrator._step._cache_size() == 1
    assert not np.allclose(
        np.asarray(first["head"]["hessian"]), np.asarray(second["head"]["hessian"])
    )


def test_gptq_without_calibration_data_names_the_layers(linen):
    model, params, x = linen
    with pytest.raises(ValueError, match=r"calibration data for layer\(s\) \['head'\]"):
        quantize_model(
            model, params, Recipe.single(pattern="head", quantizer="gptq"), sample_input=x
        )


class OneDense(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(4, use_bias=False)(x)


def test_static_ranges_see_every_calibration_row():
    """A static range was taken from the first 256 rows of each batch (the first sequences) and
    of the first 8 batches: an outlier in row 900 or in batch 20 gave a range 10x too narrow."""
    rng = np.random.default_rng(0)
    batches = rng.standard_normal((24, 1000, 16)).astype(np.float32)
    batches[:, :256] *= 0.01  # each batch's first rows are small: the old sample saw only those
    batches[0, 900, 3], batches[20, 10, 5] = 40.0, -50.0  # past the first rows, and batches
    model = OneDense()
    params = model.init(jax.random.key(0), batches[0])["params"]
    calibration = [jnp.asarray(b) for b in batches]

    def scale(act: ActSpec) -> float:
        recipe = Recipe((Rule(act=act),))
        qm = quantize_model(
            model, params, recipe, sample_input=calibration[0], calibration=calibration
        )
        return float(qm.acts["Dense_0"].scale[0, 0])

    # min-max: exact over all 24,000 rows (the bounds of every row, not the sample)
    assert scale(ActSpec(bits=8, mode="static")) == pytest.approx(50.0 / 127, rel=1e-6)
    asym = ActSpec(bits=8, mode="static", symmetric=False)
    assert scale(asym) == pytest.approx((40.0 + 50.0) / 255, rel=1e-6)
    # a clipping quantizer's range comes from rows spread over every batch
    pct = ActSpec(bits=8, mode="static", clipping="percentile", clipping_options={"percentile": 99})
    expected = np.percentile(np.abs(batches), 99) / 127
    assert scale(pct) == pytest.approx(expected, rel=0.05)
    stats = Calibrator(adapt(model), {"Dense_0": {"act_sample"}})(params, calibration)["Dense_0"]
    marks = np.asarray(stats["act_sample"])[:, 3]
    assert len(marks) == 2048 and (np.abs(marks) > 0.1).mean() > 0.6  # not only the first rows


def test_a_static_min_max_range_is_exact_after_a_rotation_or_smoothing():
    """The range of a rotated or smoothed layer was taken over the sample and the rows extreme
    before the transform: on MiniLM down to 0.82 of the rotated inputs' range (25 of 36 layers
    short), so "min-max" rows were clipped ones whose clip depended on the sample's size. Now
    the bounds of every calibration row are taken after the rotation (a smoothing divides them
    per column), and equal the range of the transformed inputs the layer quantizes."""
    rotate = TransformSpec(rotation="hadamard", seed=3)
    model = OneDense()
    rng = np.random.default_rng(1)
    batches = 0.1 * rng.standard_normal((6, 500, 16)).astype(np.float32)
    loud = np.eye(16, dtype=np.float32)[np.arange(32) % 16] * np.repeat([10.0, -10.0], 16)[:, None]
    batches[:, :32] = loud  # the extremes and the largest norms; flat after the rotation
    params = model.init(jax.random.key(0), batches[0])["params"]
    rotation = make_transform(rotate, "Dense_0", params["Dense_0"]["kernel"], None)
    spike = rotation.unfold(6.0 * jnp.eye(16)[:, :1])[:, 0]  # quiet, a 6 in column 0 after
    batches[4, 300] = np.asarray(spike)
    calibration = [jnp.asarray(b) for b in batches]
    rows = jnp.asarray(batches.reshape(-1, 16))
    for transform in (
        rotate,
        TransformSpec(smooth_alpha=0.5),
        dataclasses.replace(rotate, smooth_alpha=0.5),
    ):
        for act in (ActSpec(mode="static"), ActSpec(mode="static", symmetric=False)):
            recipe = Recipe((Rule(act=act, transform=transform),))
            qm = quantize_model(
                model, params, recipe, sample_input=calibration[0], calibration=calibration
            )
            seen = np.asarray(qm.params["Dense_0"]["kernel"].transform.apply(rows))
            span = (
                np.abs(seen).max() if act.symmetric else max(seen.max(), 0.0) - min(seen.min(), 0.0)
            )
            exact = span / act.quant_spec().qmax  # `affine.scale_zero_from_range`
            scale = float(qm.acts["Dense_0"].scale[0, 0])
            if transform.rotates and transform.smooth_alpha is not None:  # sample and extremes
                assert 0.3 * exact < scale <= exact * (1 + 1e-6), (transform, act)
            else:
                assert scale == pytest.approx(exact, rel=1e-5), (transform, act)


def test_extreme_rows_are_distinct_and_hold_both_ends():
    """A row holding the largest value that is also among the largest norms was kept twice."""
    rows = np.zeros((10, 3), np.float32)
    rows[2:] = np.arange(8)[:, None] * 0.1
    rows[0], rows[1], rows[3] = [9, 0, 0], [0, -9, 0], [0, 0, 5]
    kept = np.asarray(extreme_rows(jnp.asarray(rows), 8))
    assert len(set(kept.tolist())) == 8 and {0, 1, 3} <= set(kept.tolist())
    rows[0], rows[1] = [9, -9, 0], 0  # one row holds both ends
    kept = np.asarray(extreme_rows(jnp.asarray(rows), 8))
    assert len(set(kept.tolist())) == 8 and {0, 3} <= set(kept.tolist())


PAD_VALUE = 100.0  # a padded position's inputs: loud, so counting one shows


def _not_padding(x: jax.Array) -> jax.Array:
    return jnp.any(x != PAD_VALUE, axis=-1)


def _padded(seed: int, count: int):
    """``count`` batches of 4 x 10 positions of 16 features, about 40 % of them padding: the
    padded batches, the same rows without their padding (one sequence per batch), the rows
    kept, and `OneDense`'s params."""
    rng = np.random.default_rng(seed)
    batches = rng.standard_normal((count, 4, 10, 16)).astype(np.float32)
    keep = rng.random((count, 4, 10)) < 0.6
    batches[~keep] = PAD_VALUE
    params = OneDense().init(jax.random.key(0), batches[0])["params"]
    unpadded = [jnp.asarray(b[k][None]) for b, k in zip(batches, keep, strict=True)]
    return [jnp.asarray(b) for b in batches], unpadded, batches[keep], params


def test_a_row_mask_leaves_padded_positions_out_of_every_statistic():
    """Calibrating padded batches with a row mask gives every statistic of the kept rows alone
    (those rows fed without padding): the padding's loud rows reach none."""
    padded, unpadded, _, params = _padded(2, 3)
    model = OneDense()
    needs = {"hessian", "cross", "act_absmax", "act_absmean", "act_bounds"}
    needs |= {"act_sample", "act_extremes"}
    masked = Calibrator(adapt(model), {"Dense_0": needs}, row_mask=_not_padding)(params, padded)
    masked = masked["Dense_0"]
    plain = Calibrator(adapt(model), {"Dense_0": needs})(params, unpadded)["Dense_0"]
    assert set(masked) == set(plain)
    for name in ("hessian", "cross", "act_absmean"):
        np.testing.assert_allclose(masked[name], plain[name], rtol=1e-6, atol=1e-6)
    for name in ("act_absmax", "act_bounds", "act_sample"):  # picked, not summed: exact
        np.testing.assert_array_equal(masked[name], plain[name])
    extremes = [np.asarray(s["act_extremes"]) for s in (masked, plain)]
    np.testing.assert_array_equal(*(e[np.lexsort(e.T)] for e in extremes))
    assert np.abs(np.asarray(masked["act_sample"])).max() < PAD_VALUE


def test_a_static_range_and_gptq_follow_the_row_mask():
    """Through `quantize_model`: a static min-max range ignores the padding's values, and GPTQ
    is the GPTQ of the unpadded rows."""
    padded, unpadded, kept, params = _padded(3, 2)
    model = OneDense()
    recipe = Recipe((Rule(quantizer="gptq", act=ActSpec(mode="static")),), sequential=False)

    def run(calibration, row_mask=None):
        return quantize_model(
            model,
            params,
            recipe,
            sample_input=padded[0],
            calibration=calibration,
            row_mask=row_mask,
        )

    masked, plain, counted = run(padded, _not_padding), run(unpadded), run(padded)
    scale = float(masked.acts["Dense_0"].scale[0, 0])
    assert scale == float(plain.acts["Dense_0"].scale[0, 0])
    assert scale == pytest.approx(np.abs(kept).max() / 7, rel=1e-6)
    assert float(counted.acts["Dense_0"].scale[0, 0]) == pytest.approx(PAD_VALUE / 7, rel=1e-6)
    codes = [np.asarray(m.params["Dense_0"]["kernel"].codes) for m in (masked, plain, counted)]
    np.testing.assert_array_equal(codes[0], codes[1])
    assert not np.array_equal(codes[0], codes[2])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=40), st.integers(1, 50))
def test_rows_spread_over_the_kept_rows_only(keep, take):
    """The sample of a masked batch: distinct kept rows, spread from the first kept to the
    last, as many as asked (or all kept); every row kept: `spread_rows`."""
    keep = np.asarray(keep)
    picked, real = (np.asarray(a) for a in spread_kept_rows(jnp.asarray(keep), take))
    rows = picked[real]
    kept = np.flatnonzero(keep)
    assert len(set(rows.tolist())) == len(rows) == min(take, len(keep), len(kept))
    assert set(rows.tolist()) <= set(kept.tolist())
    if len(kept) and len(rows) > 1:
        assert rows[0] == kept[0] and rows[-1] == kept[-1]
    everything, real = spread_kept_rows(jnp.ones(len(keep), bool), take)
    np.testing.assert_array_equal(
        np.asarray(everything)[np.asarray(real)], spread_rows(len(keep), take)
    )


def test_a_row_mask_fits_the_rows_of_heads_and_of_pooled_sequences():
    mask = jnp.asarray([[True, False, True], [False, False, True]])
    per_head = np.asarray(fit_row_mask(mask, (2, 3, 2)))  # [B, T, heads] rows
    np.testing.assert_array_equal(per_head, np.repeat(np.asarray(mask).ravel(), 2))
    np.testing.assert_array_equal(np.asarray(fit_row_mask(mask, (2,))), [True, True])  # pooled
    with pytest.raises(ValueError, match=r"row mask of shape \(2, 3\) does not fit .*\(3, 2\)"):
        fit_row_mask(mask, (3, 2))  # time-major rows: refused, not flagged in the wrong order


class PointwiseConv(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Conv(4, (1,), use_bias=False)(x)


def test_a_row_mask_keeps_padding_out_of_a_convolutions_range():
    """A conv's static range is taken over whole examples: the mask applies element by
    element (an example that is partly padding was kept whole, padding and all). A clipping
    quantizer's sample of whole examples cannot leave padding out: refused."""
    padded, unpadded, kept, _ = _padded(4, 2)
    model = PointwiseConv()
    params = model.init(jax.random.key(0), padded[0])["params"]
    needs = {"hessian", "act_bounds"}
    masked = Calibrator(adapt(model), {"Conv_0": needs}, row_mask=_not_padding)(params, padded)
    plain = Calibrator(adapt(model), {"Conv_0": {"hessian"}})(params, unpadded)
    bounds = np.asarray(masked["Conv_0"]["act_bounds"]).reshape(2, 10, 16)
    np.testing.assert_array_equal(bounds[0].min(0), kept.min(0))
    np.testing.assert_array_equal(bounds[1].max(0), kept.max(0))
    np.testing.assert_allclose(masked["Conv_0"]["hessian"], plain["Conv_0"]["hessian"], rtol=1e-6)
    sampled = Calibrator(adapt(model), {"Conv_0": {"act_sample"}}, row_mask=_not_padding)
    with pytest.raises(ValueError, match=r"cannot leave padding out of a convolution's sampled"):
        sampled(params, padded)


class HalfCNN(nn.Module):
    dtype: object = jnp.bfloat16

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3, 3), padding="SAME", dtype=self.dtype)(x))
        x = nn.relu(nn.Dense(16, dtype=self.dtype)(x.reshape(x.shape[0], -1)))
        return nn.Dense(5, name="head", dtype=self.dtype)(x)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_the_fake_forward_of_a_half_precision_model_is_its_integer_forward(dtype):
    """The fake forward multiplied the kernels the modules had cast to bf16 (and a conv's fake
    activations cast too): 1.4-6.4 % off the integer forward, which keeps codes and scales exact.
    The two now differ by at most an output rounding."""
    x = jax.random.normal(jax.random.key(0), (4, 6, 6, 4))
    model = HalfCNN(dtype)
    params = model.init(jax.random.key(1), x)["params"]
    for rule in (
        Rule(weight=QuantSpec(group_size=4), act=ActSpec()),
        Rule(act=ActSpec(bits=8, mode="static")),
        Rule(weight=QuantSpec(group_size=4)),  # weight-only
    ):
        qm = quantize_model(model, params, Recipe((rule,)), sample_input=x, calibration=[x])
        real = np.asarray(qm.apply(x), np.float32)
        fake = np.asarray(qm.apply(x, fake=True), np.float32)
        ulp = float(jnp.finfo(dtype).eps) * np.abs(real).max()
        np.testing.assert_allclose(fake, real, rtol=0, atol=ulp, err_msg=rule.describe())


class OneConv(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Conv(4, (3, 3), padding="SAME")(x)


def test_a_nan_input_against_a_static_range_gives_nan_as_the_simulation_does():
    """Codes cast NaN to 0: against a static range the integer forward gave a finite output
    where the fake forward (and the float model) give NaN: in a conv, the outputs whose
    receptive field holds it; through a dense layer, the whole example."""
    x = jax.random.normal(jax.random.key(0), (3, 6, 6, 4))
    bad = x.at[1, 0, 0, 0].set(jnp.nan)  # example 1, a corner
    recipe = Recipe((Rule(act=ActSpec(bits=8, mode="static")),))
    for model in (OneConv(), HalfCNN(jnp.float32)):
        params = model.init(jax.random.key(1), x)["params"]
        qm = quantize_model(model, params, recipe, sample_input=x, calibration=[x])
        real, fake = np.asarray(qm.apply(bad)), np.asarray(qm.apply(bad, fake=True))
        np.testing.assert_array_equal(np.isnan(real), np.isnan(fake))
        assert np.isnan(real[1]).any() and np.isfinite(real[[0, 2]]).all()
    assert np.isnan(real[1]).all()  # the dense head reads every position
    conv = quantize_model(
        OneConv(),
        params := OneConv().init(jax.random.key(1), x)["params"],
        recipe,
        sample_input=x,
        calibration=[x],
    )
    assert np.isnan(np.asarray(conv.apply(bad))[1]).any(axis=-1).sum() == 4  # the 2x2 corner


def test_awq_with_static_activations_takes_the_range_of_the_inputs_it_scales():
    """AWQ divides a layer's inputs by its channel scales before they are quantized; the static
    range was that of the inputs before, so it could clip or waste the codes."""
    x = jax.random.normal(jax.random.key(0), (64, 16)) * jnp.linspace(0.1, 4.0, 16)
    model = OneDense()
    params = model.init(jax.random.key(1), x)["params"]
    rule = Rule(quantizer="awq", act=ActSpec(bits=8, mode="static"))
    qm = quantize_model(model, params, Recipe((rule,)), sample_input=x, calibration=[x])
    transform = qm.params["Dense_0"]["kernel"].transform
    expected = float(jnp.abs(transform.apply(x)).max()) / 127
    assert float(qm.acts["Dense_0"].scale[0, 0]) == pytest.approx(expected, rel=1e-6)
    for empty in (rule, Rule(act=ActSpec(mode="static"))):  # no rows: said so, not "NaN/Inf"
        with pytest.raises(ValueError, match=r"gave layer\(s\) \['Dense_0'\] no input rows"):
            quantize_model(model, params, Recipe((empty,)), sample_input=x, calibration=[x[:0]])


def test_the_layer_table_gives_a_layer_the_group_size_it_was_quantized_with():
    """A group of at least K is one group: the layer is per-channel, as its bytes say; the table
    said g32 for it."""
    from q4lab.evaluate import layer_rows

    x = jnp.ones((2, 16))
    model = OneDense()
    params = model.init(jax.random.key(0), x)["params"]
    adapter_layers = adapt(model).layers(params, x)
    for group, shown in ((32, 0), (8, 8)):
        recipe = Recipe((Rule(weight=QuantSpec(group_size=group)),))
        qm = quantize_model(model, params, recipe, sample_input=x)
        (row,) = layer_rows(qm, recipe, adapter_layers)
        assert row["group_size"] == shown
    with pytest.raises(
        ValueError, match=r"\[1, 2, 4, 8, 16\] \(a recipe also takes any size of at least K"
    ):
        QuantSpec(group_size=6).check_input_size(16)


@pytest.mark.parametrize(
    ("model", "shape", "group", "out"),
    [(OneDense(), (4, 16), 8, (0, 4)), (OneConv(), (4, 6, 6, 4), 4, (0, 6, 6, 4))],
)
def test_an_empty_batch_gives_an_empty_output_on_every_forward(model, shape, group, out):
    """A float Dense or Conv maps a batch of 0 to one of 0; the hooks divided by the batch's
    size to find K (dense) or reshaped with -1 (conv)."""
    x = jax.random.normal(jax.random.key(0), shape)
    params = model.init(jax.random.key(1), x)["params"]
    for act in (None, ActSpec()):
        recipe = Recipe((Rule(weight=QuantSpec(group_size=group), act=act),))
        qm = quantize_model(model, params, recipe, sample_input=x)
        for fake in (False, True):
            assert qm.apply(x[:0], fake=fake).shape == out
