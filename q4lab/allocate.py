"""Mixed precision: pick each layer's candidate width under a bits-per-weight budget from the
measured per-layer losses of `q4lab.sensitivity.layer_sensitivity`.

The problem is a multiple-choice knapsack: each layer takes exactly one candidate, costing its
stored bytes and its measured loss; the total bytes may not exceed ``budget_bits / 8`` per
quantized weight; the summed loss (losses taken as additive) is minimised. ``knapsack`` solves
it by dynamic programming over bytes counted in units of ``unit_bytes`` (each cost rounded up,
so the budget always holds; exact when costs are whole units); ``greedy`` starts from every
layer's cheapest candidate and buys the upgrade with the largest loss reduction per extra byte
while it fits.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

METHODS = ("knapsack", "greedy")
UNAVAILABLE_BYTES = 2**50  # the cost of a candidate a layer has no row for: beyond any budget


@dataclasses.dataclass(frozen=True)
class Allocation:
    """Each layer's chosen candidate, with what the choice costs and predicts."""

    choice: dict[str, str]  # layer path -> candidate label
    stored_bytes: int  # of the quantized layers, from the sensitivity table's ledger bytes
    params: int  # quantized weights
    predicted_loss: float  # the sum of the chosen layers' measured losses

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.stored_bytes / self.params


def _table(rows: Sequence[dict[str, Any]]):
    """layers, candidates, and ``[L, C]`` arrays of bytes and losses; a candidate not measured
    on a layer costs `UNAVAILABLE_BYTES`."""
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    candidates = list(dict.fromkeys(r["candidate"] for r in rows))
    cost = np.full((len(layers), len(candidates)), np.nan)
    loss = np.full_like(cost, np.nan)
    params = {}
    for r in rows:
        i, j = layers.index(r["layer"]), candidates.index(r["candidate"])
        cost[i, j], loss[i, j] = r["stored_bytes"], r["loss"]
        params[r["layer"]] = r["params"]
    bad = [(r["layer"], r["candidate"]) for r in rows if np.isnan(r["loss"])]
    if bad:
        raise ValueError(f"the loss of {bad} is NaN; allowed: numbers (inf: never choose)")
    loss = np.where(np.isinf(loss), np.sign(loss) * 1e300, loss)  # inf - inf would be NaN
    # a candidate that cannot quantize a layer (its group size does not divide it): never chosen
    loss = np.where(np.isnan(cost), 1e300, loss)
    cost = np.where(np.isnan(cost), UNAVAILABLE_BYTES, cost)
    return layers, candidates, cost, loss, np.array([params[p] for p in layers])


def allocate(
    rows: Sequence[dict[str, Any]],
    budget_bits: float,
    *,
    method: str = "knapsack",
    unit_bytes: int | None = None,
) -> Allocation:
    """The allocation of least summed loss whose bytes fit ``budget_bits`` per quantized weight.

    ``rows``: `layer_sensitivity` rows of one task and seed (``layer``, ``candidate``,
    ``params``, ``stored_bytes``, ``loss``). Raises a ValueError when even the cheapest
    candidates exceed the budget, naming the smallest budget that fits. ``unit_bytes``: the
    knapsack's unit of bytes (default: the smallest that keeps the budget within 2**17 units;
    one byte for models up to about 128 KiB; above, costs are rounded up to units, so the
    answer may miss the optimum: ``unit_bytes`` = the costs' greatest common divisor is exact).
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is invalid; allowed: {', '.join(METHODS)}")
    if not math.isfinite(budget_bits) or budget_bits <= 0:
        raise ValueError(f"bits_budget={budget_bits} is invalid; allowed: a number > 0")
    layers, candidates, cost, loss, params = _table(rows)
    cost = cost.astype(np.int64)  # ledger bytes: whole numbers
    capacity = capacity_bytes(budget_bits, int(params.sum()))
    floor = int(cost.min(axis=1).sum())
    if floor > capacity:
        least = math.ceil(8 * floor / params.sum() * 1e4) / 1e4  # rounded up: it fits
        raise ValueError(
            f"bits_budget={budget_bits} is below the cheapest allocation; allowed: >= {least:.4f}"
        )
    if method == "knapsack":
        unit_bytes = unit_bytes or max(1, math.ceil(capacity / 2**17))
        units = np.ceil(cost / unit_bytes).astype(np.int64)
        picks = _knapsack(units, loss, capacity // unit_bytes)
    else:
        picks = _greedy(cost, loss, capacity)
    rows_of = np.arange(len(layers))
    return Allocation(
        choice={path: candidates[j] for path, j in zip(layers, picks, strict=True)},
        stored_bytes=int(cost[rows_of, picks].sum()),
        params=int(params.sum()),
        predicted_loss=float(loss[rows_of, picks].sum()),
    )


def capacity_bytes(budget_bits: float, params: int) -> int:
    """The most bytes whose bits per weight, as the ledger computes it (``8 * bytes /
    params``), stay within ``budget_bits``: taken in integers (``budget * params / 8`` in
    floats fell one ulp under a whole byte count that meets the budget exactly)."""
    capacity = math.floor(budget_bits * params / 8)
    while 8 * (capacity + 1) / params <= budget_bits:
        capacity += 1
    while capacity > 0 and 8 * capacity / params > budget_bits:
        capacity -= 1
    return capacity


def _knapsack(units: np.ndarray, loss: np.ndarray, capacity: int) -> np.ndarray:
    """Exact multiple-choice knapsack over integer costs: ``best[c]`` = least loss of the
    layers so far within ``c`` units; one choice per layer recorded for the walk back."""
    n_layers, n_choices = units.shape
    best = np.zeros(capacity + 1)
    taken = np.zeros((n_layers, capacity + 1), np.min_scalar_type(n_choices))
    for i in range(n_layers):
        options = np.full((n_choices, capacity + 1), np.inf)
        for j in range(n_choices):
            u = units[i, j]
            if u <= capacity:
                options[j, u:] = best[: capacity + 1 - u] + loss[i, j]
        taken[i] = np.argmin(options, axis=0)
        best = options[taken[i], np.arange(capacity + 1)]
    if not np.isfinite(best[capacity]):
        raise ValueError(
            "no allocation fits once costs are rounded up to units; allowed: a smaller unit_bytes"
        )
    picks = np.zeros(n_layers, np.int64)
    c = capacity
    for i in range(n_layers - 1, -1, -1):
        picks[i] = taken[i, c]
        c -= units[i, picks[i]]
    return picks


def _greedy(cost: np.ndarray, loss: np.ndarray, capacity: float) -> np.ndarray:
    """From each layer's cheapest candidate (of least loss among equally cheap ones), take the
    move of most loss saved per extra byte that fits, free moves first, until none saves any."""
    picks = np.lexsort((loss, cost))[:, 0]
    rows = np.arange(len(picks))
    while True:
        spent = cost[rows, picks].sum()
        extra = cost - cost[rows, picks][:, None]
        gain = loss[rows, picks][:, None] - loss
        fits = (extra >= 0) & (gain > 0) & (spent + extra <= capacity)
        per_byte = np.divide(gain, extra, out=np.full(gain.shape, np.inf), where=extra > 0)
        ratio = np.where(fits, per_byte, -np.inf)
        if ratio.max() == -np.inf:  # no move fits and saves loss (a free one is +inf: first)
            return picks
        i, j = np.unravel_index(np.argmax(ratio), ratio.shape)
        picks[i] = j


def rules_for(allocation: Allocation, fields: dict[str, dict[str, Any]], base: str) -> list[dict]:
    """Sweep ``rules`` (`q4lab.sweep.fields`) giving each layer its chosen candidate: one rule
    per candidate other than ``base`` (the catch-all), matching its layers by exact path;
    ``fields``: each candidate's recipe fields (e.g. ``{"bits": 3}``)."""
    layers: dict[str, list[str]] = {}
    for path, label in allocation.choice.items():
        if label != base:
            layers.setdefault(label, []).append(path)
    return [
        {"pattern": "|".join(re.escape(p) for p in paths), **fields[label]}
        for label, paths in layers.items()
    ]


__all__ = ["METHODS", "Allocation", "allocate", "rules_for"]
