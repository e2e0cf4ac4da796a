"""The real tasks end to end, from their published float baselines (q4lab/baselines)."""

import pandas as pd
import pytest

from q4lab.core import QuantSpec
from q4lab.evaluate import evaluate
from q4lab.recipe import ActSpec, Recipe
from q4lab.sensitivity import layer_errors

pytestmark = pytest.mark.slow

TASKS = {"digits-mlp": 0.97, "mnist1d-cnn": 0.90}  # expected float accuracy (at least)


@pytest.fixture(autouse=True)
def _cache(task_cache):
    pass


@pytest.mark.parametrize("task", list(TASKS))
def test_task_accuracy_under_int8_and_int4_recipes(task):
    w8 = evaluate(task, Recipe.single(weight=QuantSpec(bits=8)), seed=0)
    assert w8["fp_accuracy"] >= TASKS[task]
    assert w8["accuracy"] >= w8["fp_accuracy"] - 0.005  # W8A16 per-channel min-max: within 0.5 pt
    assert w8["fake_rel_diff"] == 0.0  # weight-only: both paths run the same dequantized weights

    g32 = evaluate(task, Recipe.single(quantizer="mse", weight=QuantSpec(group_size=32)), seed=0)
    assert g32["accuracy"] >= g32["fp_accuracy"] - 0.02  # W4A16 g32 mse: within 2 pt
    assert g32["bits_per_weight"] > 4.0 and g32["compression"] > 6

    w4a4 = evaluate(task, Recipe.single(weight=QuantSpec(group_size=32), act=ActSpec()), seed=0)
    assert w4a4["fake_rel_diff"] < 1e-4  # real integer path == fake-quant simulation
    assert w4a4["fake_agreement"] >= 0.99
    assert w4a4["accuracy"] > 0.5  # degraded, but a working classifier
    for key in ("git_commit", "jax_version", "device", "quantize_seconds", "total_bytes"):
        assert key in w4a4


@pytest.mark.parametrize("task", list(TASKS))
def test_gptq_output_error_is_below_round_to_nearest_on_every_layer(task):
    """On the task's real calibration data, at 4 bits per-channel and 3 bits g32."""
    recipes = [
        Recipe.single(quantizer=q, weight=QuantSpec(bits=bits, group_size=g), sequential=False)
        for q in ("minmax", "gptq")
        for bits, g in ((4, None), (3, 32))
    ]
    table = pd.DataFrame(layer_errors(task, recipes, seed=0))
    errors = table.pivot_table(
        index=["layer", "bits", "group_size"], columns="quantizer", values="relative_error"
    )
    ratio = errors["gptq"] / errors["minmax"]
    assert len(ratio) == 2 * (3 if task == "digits-mlp" else 5)
    assert (ratio < 1).all(), ratio
    assert ratio.median() < 0.5


def test_a_transformed_layers_error_is_measured_in_its_original_basis():
    """AWQ folds scales into its weights: their error is that of the weight it stands for, near
    min-max's (it was the folded weight against the original: thousands of times larger)."""
    recipes = [
        Recipe.single(quantizer=q, weight=QuantSpec(group_size=32)) for q in ("minmax", "awq")
    ]
    table = pd.DataFrame(layer_errors("digits-mlp", recipes, seed=0))
    errors = table.pivot_table(index="layer", columns="quantizer", values="relative_error")
    assert (errors["awq"] < 1.5 * errors["minmax"]).all(), errors
