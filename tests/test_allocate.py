"""Mixed-precision allocation: the knapsack is exact, the greedy one fits, the rules say it."""

import itertools
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from q4lab.allocate import allocate, rules_for


def _rows(losses, params):
    """Sensitivity rows: candidate ``W{b}`` costs ``b`` bits per weight (bytes = params*b/8)."""
    return [
        {
            "layer": f"layer{i}",
            "candidate": f"W{b}",
            "params": n,
            "stored_bytes": n * b // 8,
            "loss": loss,
        }
        for i, (n, by_width) in enumerate(zip(params, losses, strict=True))
        for b, loss in by_width.items()
    ]


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n_layers=st.integers(1, 5),
    budget=st.floats(2.0, 4.0),
)
def test_the_knapsack_finds_the_best_allocation_within_the_budget(seed, n_layers, budget):
    rng = np.random.default_rng(seed)
    params = [int(rng.integers(1, 9)) * 64 for _ in range(n_layers)]
    losses = [
        dict(zip((2, 3, 4), np.sort(rng.exponential(size=3))[::-1], strict=True))
        for _ in range(n_layers)
    ]
    rows = _rows(losses, params)
    capacity = budget * sum(params) / 8
    best = min(
        (
            sum(loss[b] for loss, b in zip(losses, widths, strict=True))
            for widths in itertools.product((2, 3, 4), repeat=n_layers)
            if sum(n * b // 8 for n, b in zip(params, widths, strict=True)) <= capacity
        ),
    )
    exact = allocate(rows, budget, unit_bytes=8)  # every cost is a multiple of 8 bytes
    assert exact.predicted_loss == pytest.approx(best)
    assert exact.bits_per_weight <= budget + 1e-9
    greedy = allocate(rows, budget, method="greedy")
    assert greedy.bits_per_weight <= budget + 1e-9 and greedy.predicted_loss >= best - 1e-9


def test_budget_errors_name_the_smallest_budget_and_the_methods():
    rows = _rows([{2: 1.0, 4: 0.0}], [64])
    with pytest.raises(
        ValueError,
        match=r"bits_budget=1.5 is below the cheapest allocation; "
        r"allowed: >= 2.0000",
    ):
        allocate(rows, 1.5)
    with pytest.raises(ValueError, match=r"method='dp' is invalid; allowed: knapsack, greedy"):
        allocate(rows, 3.0, method="dp")
    # a candidate a layer has no row for (its group size does not divide the layer): never
    # chosen, where a missing row refused the whole allocation
    apart = allocate([rows[0], {**rows[1], "layer": "x"}], 3.0)
    assert apart.choice == {"layer0": "W2", "x": "W4"}
    with pytest.raises(ValueError, match=r"the loss of \[\('layer0', 'W2'\)\] is NaN"):
        allocate([{**rows[0], "loss": float("nan")}, rows[1]], 3.0)
    diverging = [{**rows[0], "loss": float("inf")}, rows[1]]  # e.g. perplexity overflow at W2
    for method in ("knapsack", "greedy"):
        assert allocate(diverging, 4.0, method=method).choice == {"layer0": "W4"}


def test_equally_cheap_candidates_go_to_the_one_of_least_loss():
    """Widths 5 to 8 store a byte per code: W5 and W8 cost the same, and greedy kept W5."""
    rows = [
        {"layer": "a", "candidate": "W5", "params": 100, "stored_bytes": 100, "loss": 1.0},
        {"layer": "a", "candidate": "W8", "params": 100, "stored_bytes": 100, "loss": 0.1},
        {"layer": "b", "candidate": "W5", "params": 100, "stored_bytes": 100, "loss": 0.5},
        {"layer": "b", "candidate": "W8", "params": 100, "stored_bytes": 100, "loss": 0.2},
    ]
    for method in ("knapsack", "greedy"):
        assert allocate(rows, 8.0, method=method).choice == {"a": "W8", "b": "W8"}, method


def test_the_knapsack_walks_back_through_more_than_127_candidates():
    rows = [
        {"layer": "a", "candidate": f"c{j}", "params": 8, "stored_bytes": 1 + j % 3, "loss": 1.0}
        for j in range(300)
    ]
    rows[260]["loss"] = 0.0
    assert allocate(rows, 8.0).choice == {"a": "c260"}


def test_rules_give_each_layer_its_width_by_exact_path():
    rows = _rows([{2: 9.0, 4: 0.0}, {2: 0.1, 4: 0.0}, {2: 5.0, 4: 0.0}], [64, 64, 64])
    for i, name in enumerate(("blocks/0.fc", "blocks/1.fc", "head")):
        for r in rows:
            if r["layer"] == f"layer{i}":
                r["layer"] = name
    allocation = allocate(rows, 10 / 3)  # two layers can afford 4 bits
    assert allocation.choice == {"blocks/0.fc": "W4", "blocks/1.fc": "W2", "head": "W4"}
    rules = rules_for(allocation, {"W2": {"bits": 2}, "W4": {"bits": 4}}, base="W4")
    assert rules == [{"pattern": re.escape("blocks/1.fc"), "bits": 2}]
    assert re.fullmatch(rules[0]["pattern"], "blocks/1.fc")
    assert not re.fullmatch(rules[0]["pattern"], "blocks/1xfc")


def test_a_budget_met_exactly_fits_and_the_floor_named_fits():
    """The capacity in floats (budget * params / 8) fell one ulp under a whole byte count that
    meets the budget exactly (about 4 % of budgets): the cheapest allocation was refused at its
    own size, and the knapsack gave up a byte for a worse answer. The floor named in the error
    was rounded to nearest, so it could itself be refused."""
    from q4lab.allocate import capacity_bytes

    params, size = 114080, 29537
    budget = 8 * size / params
    assert budget * params / 8 < size and capacity_bytes(budget, params) == size
    rows = [
        {"layer": "a", "candidate": c, "params": params, "stored_bytes": b, "loss": loss}
        for c, b, loss in (("W2", size, 1.0), ("W3", size + 1, 0.5))
    ]
    assert allocate(rows, budget).choice == {"a": "W2"}
    with pytest.raises(ValueError, match=r"allowed: >= (\d\.\d{4})") as err:
        allocate(rows, budget - 1e-6)
    named = float(re.search(r">= (\d\.\d{4})", str(err.value)).group(1))
    assert allocate(rows, named).bits_per_weight <= named  # the budget it names fits
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match=rf"bits_budget={bad} is invalid; allowed: a number"):
            allocate(rows, bad)


def test_the_sensitivity_cache_is_keyed_by_labels_and_quantizer_code(monkeypatch):
    """Two points whose candidates share config hashes under other labels (budget_groups [] or
    [32] at group_size 32) shared one cache file, and the second read the first's labels
    (KeyError 'W3'); an own quantizer whose code changed reused its old losses."""
    import dataclasses

    import q4lab.quantizers.base as base
    from q4lab.quantizers import get_quantizer, register
    from q4lab.quantizers.minmax import MinMax
    from q4lab.sweep.fields import with_defaults
    from q4lab.sweep.mixed import cache_key

    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))  # this test's quantizer: gone
    point = with_defaults({"task": "digits-mlp", "bits": 2, "group_size": 32, "bits_budget": 3.0})
    assert cache_key(point) != cache_key(point | {"budget_groups": [32]})

    @register
    @dataclasses.dataclass(frozen=True)
    class Mine(MinMax):
        name = "mine-cache-key"

    before = cache_key(point | {"quantizer": "mine-cache-key"})

    @register
    @dataclasses.dataclass(frozen=True)
    class Mine(MinMax):  # noqa: F811  (its code edited: the same class again)
        name = "mine-cache-key"
        shrink: float = 0.5

    assert get_quantizer("mine-cache-key").shrink == 0.5
    assert cache_key(point | {"quantizer": "mine-cache-key"}) != before


def test_a_candidate_group_size_that_does_not_divide_a_layer_skips_it():
    """budget_groups with a group size some layer's input does not divide failed the whole
    point at run time (`q4lab quantize --task mnist1d-cnn --bits 2 --bits-budget 3
    --budget-groups "[0,32,128]"`: Conv_1's K=160); that candidate now skips those layers."""
    from q4lab.core import QuantSpec
    from q4lab.recipe import Recipe
    from q4lab.sensitivity import layer_sensitivity

    g96 = Recipe.single(weight=QuantSpec(group_size=96, scale_dtype="float16"))
    rows = layer_sensitivity("digits-mlp", {"W4 g96": g96, "W4": Recipe.single()}, 0)
    measured = {(r["candidate"], r["layer"]) for r in rows}
    assert ("W4 g96", "Dense_0") in measured  # K=64 <= 96: one group
    assert ("W4 g96", "Dense_1") not in measured and ("W4", "Dense_1") in measured  # K=256
    assert allocate(rows, 8.0).choice["Dense_1"] == "W4"
