"""A ``bits_budget`` point becomes per-layer rules: each layer's sensitivity is measured at every
candidate, each width of ``budget_widths`` (at each group size of ``budget_groups``)
(`q4lab.sensitivity.layer_sensitivity`, cached on disk), an allocator (`q4lab.allocate`) picks
one per layer under the budget, and the choice is written as the point's ``rules`` (exact layer
paths; the layers of the candidate most weights got take the point's catch-all rule).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import jax
import numpy as np

from q4lab.allocate import allocate, rules_for
from q4lab.core.spec import group_label
from q4lab.files import atomic_write_bytes
from q4lab.quantizers import quantizer_identity
from q4lab.sweep.fields import Point, config_hash, recipe_of, with_defaults

CACHE_VERSION = 2  # 2: losses measured on the calibration split


def candidate_fields(point: Point) -> dict[str, dict[str, int]]:
    """Each candidate's label and recipe fields: every budget width (``W3``), and with
    ``budget_groups`` every width at every group size (``W3 g128``, ``W3 per-channel``)."""
    p = with_defaults(point)
    if not p["budget_groups"]:
        return {f"W{w}": {"bits": w} for w in p["budget_widths"]}
    return {
        f"W{w} {group_label(g)}": {"bits": w, "group_size": g}
        for w in p["budget_widths"]
        for g in p["budget_groups"]
    }


def candidates(point: Point) -> dict[str, Point]:
    """The uniform points the sensitivity is measured at: the point at each candidate, from the
    float model's inputs (as `layer_sensitivity` measures whatever ``sequential`` says)."""
    p = with_defaults(point)
    uniform = {**p, "bits_budget": 0.0, "rules": [], "sequential": False}
    return {label: {**uniform, **fields} for label, fields in candidate_fields(p).items()}


def cache_key(point: Point) -> str:
    """What a point's sensitivity rows depend on, hashed (16 hex digits): each candidate's
    label (rows are read back by it), config hash and quantizer identity (its defaults; an own
    quantizer's source: `q4lab.quantizers.quantizer_identity`), and the float baseline's bytes."""
    from q4lab.tasks import get_task

    key = hashlib.sha256()
    for label, c in candidates(point).items():
        quantizer = quantizer_identity(recipe_of(c).base.build_quantizer())
        key.update(f"{label}={config_hash(c)}:{quantizer}|".encode())
    for leaf in jax.tree.leaves(get_task(point["task"]).baseline(point["seed"])):
        key.update(np.asarray(leaf).tobytes())
    return key.hexdigest()[:16]


def sensitivity_rows(point: Point, progress: bool | None = False) -> list[dict[str, Any]]:
    """`layer_sensitivity` rows of the point's candidates, from the cache when measured before
    (``$Q4LAB_CACHE/sensitivity/``, keyed by the candidates' labels, config hashes and
    quantizers' identities (their defaults; an own quantizer's source), and the bytes of the
    float baseline they quantize)."""
    from q4lab.sensitivity import layer_sensitivity
    from q4lab.tasks import cache_dir

    points = candidates(point)
    path = cache_dir() / "sensitivity" / f"{point['task']}-v{CACHE_VERSION}-{cache_key(point)}.json"
    if path.exists():
        return json.loads(path.read_text())
    rows = layer_sensitivity(
        point["task"],
        {label: recipe_of(c) for label, c in points.items()},
        point["seed"],
        calib_size=point["calib_size"] or None,
        calib_padding=point["calib_padding"],
        progress=progress,
    )
    atomic_write_bytes(path, json.dumps(rows).encode())  # writers in parallel: each its own
    return rows


def allocated_point(point: Point, progress: bool | None = False) -> tuple[Point, dict[str, Any]]:
    """The point as evaluated: the width most weights got is its ``bits`` (its catch-all rule),
    the other layers' widths its rules; and the record fields that describe the allocation
    (method, the predicted loss: the sum of the chosen layers' measured losses, each layer's
    width)."""
    p = with_defaults(point)
    rows = sensitivity_rows(p, progress)
    allocation = allocate(rows, p["bits_budget"], method=p["budget_method"])
    params = {r["layer"]: r["params"] for r in rows}
    weights: dict[str, int] = {}
    for path, label in allocation.choice.items():
        weights[label] = weights.get(label, 0) + params[path]
    base = max(weights, key=weights.get)
    fields = candidate_fields(p)
    rules = rules_for(allocation, fields, base=base)
    return {**p, **fields[base], "rules": rules}, {
        "allocation": f"sensitivity {p['budget_method']}",
        "allocation_predicted_loss": allocation.predicted_loss,
        "allocation_layers": json.dumps(allocation.choice),
    }
