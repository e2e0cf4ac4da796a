"""Apply a `Recipe` to a Flax model: plan its layers, calibrate, and quantize the weights one
layer at a time into a `QuantizedModel` (`q4lab.quantized_model`, which runs the quantized
forward with real integer ops or its fake-quant simulation). `LayerPlan` and `plan` live in
`q4lab.layer_plan`; this module re-exports them with `QuantizedModel`."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from q4lab.adapters import Inputs, PyTree, RowMask, adapt, get_at, set_at
from q4lab.calibrate import cached_calibrator
from q4lab.core import QTensor, to_matrix
from q4lab.layer_plan import LayerPlan, plan
from q4lab.layer_quant import (
    ActState,
    folded_weight,
    make_transform,
    rotation,
    transform_stats,
    unfolded_weight,
)
from q4lab.quantized_model import QuantizedModel
from q4lab.quantizers import ACTIVATIONS, CROSS, HESSIAN, check_finite, check_quantized
from q4lab.recipe import ActSpec, Recipe


def _range_rows(path: str, stats: dict[str, jax.Array], act: ActSpec) -> jax.Array:
    """The calibration rows a static activation range is taken from: for a clipper that keeps
    the full range (min-max), the bounds of every calibration row (exact; for a smoothed and
    rotated layer, whose bounds calibration cannot take, the sample and the extreme rows); for
    the others the sample spread over every batch. Refused when they could not give one: all
    zero (the range would be empty and its scale a stand-in 1) or not finite."""
    rows = np.asarray(stats["act_sample"])
    if act.clipper().full_range:
        rows = np.asarray(
            stats["act_bounds"]
            if "act_bounds" in stats
            else np.concatenate([rows, np.asarray(stats["act_extremes"])])
        )
    if not np.isfinite(rows).all():
        raise ValueError(
            f"the calibration inputs of layer {path!r} hold NaN/Inf, so its static activation "
            "range would be NaN (check the float model on the calibration data)"
        )
    if not rows.any():
        raise ValueError(
            f"the calibration inputs of layer {path!r} are all zero, so they give no static "
            "activation range (its scale would be a stand-in 1). Check the calibration data, "
            "or give this layer mode='dynamic' (a recipe rule for its path)"
        )
    return jnp.asarray(rows)


def _needs(p: LayerPlan) -> set[str]:
    needs = set()
    quantizer_needs = p.rule.build_quantizer().needs
    if HESSIAN in quantizer_needs:
        needs.add("hessian")
    if CROSS in quantizer_needs:
        needs.add("cross")
    if ACTIVATIONS in quantizer_needs:
        needs.add("act_absmean")
    if p.rule.act is not None and p.rule.act.mode == "static":
        needs.add("act_sample")
        if p.rule.act.clipper().full_range:  # exact bounds, where they can be had
            t = p.rule.transform
            smoothed_then_rotated = t is not None and t.rotates and t.smooth_alpha is not None
            needs.add("act_extremes" if smoothed_then_rotated else "act_bounds")
    if p.rule.transform is not None and p.rule.transform.smooth_alpha is not None:
        needs.add("act_absmax")
    return needs


def _stages(stats: dict[str, dict[str, jax.Array]], order: list[str]) -> dict[str, frozenset[str]]:
    """Groups of consecutive layers that read the same input (e.g. attention's query, key and
    value): their float Hessians are identical. Quantizing one cannot change the others' inputs,
    so sequential calibration captures a group once instead of once per layer."""
    groups: list[list[str]] = []
    previous = None
    for path in order:
        h = stats.get(path, {}).get("hessian")
        same = previous is not None and h is not None and h.shape == previous.shape
        if same and bool(jnp.array_equal(h, previous)):
            groups[-1].append(path)
        else:
            groups.append([path])
        previous = h
    return {path: frozenset(g) for g in groups for path in g}


def _quantize_layer(
    p: LayerPlan, w: jax.Array, stats: dict[str, jax.Array] | None
) -> tuple[QTensor, dict[str, jax.Array] | None]:
    """The layer's `QTensor` and the statistics it was quantized with: with an input transform,
    the folded weight and the statistics of the transformed input."""
    transform = None
    if p.rule.transform is not None:
        check_finite(w, p.layer.path)  # the weight as given: folding would spread a NaN
        w2d = to_matrix(w, p.layer.in_axes)
        transform = make_transform(p.rule.transform, p.layer.path, w2d, stats)
        w = folded_weight(transform, w, p.layer.in_axes)
        stats = transform_stats(transform, stats)
    quantizer = p.rule.build_quantizer()
    qt = quantizer.quantize(w, p.spec, in_axes=p.layer.in_axes, stats=stats, name=p.layer.path)
    qt = check_quantized(qt, quantizer, p.spec, w, p.layer.in_axes, p.layer.path)
    if transform is not None:
        qt = dataclasses.replace(qt, transform=transform)
    elif qt.transform is not None:  # the quantizer's own (AWQ): its input is transformed too
        stats = transform_stats(qt.transform, stats)
    return qt, stats


def _as_jax_holds(leaf: Any) -> Any:
    """A numpy leaf of a dtype JAX does not hold (float64 with 64-bit mode off) as the array JAX
    computes with, so that the ledger counts those bytes, and a saved model loads to them."""
    dtype = getattr(leaf, "dtype", None)
    if isinstance(leaf, np.ndarray) and jax.dtypes.canonicalize_dtype(dtype) != dtype:
        return jnp.asarray(leaf)
    return leaf


def quantize_model(
    model: nn.Module | nnx.Module,
    params: PyTree | None,
    recipe: Recipe,
    *,
    sample_input: Inputs,
    calibration: Iterable[Inputs] = (),
    row_mask: RowMask | None = None,
    progress: bool | None = False,
) -> QuantizedModel:
    """Quantize ``model`` (Linen with its ``params``, or all of its ``variables`` when it also
    holds other collections such as ``batch_stats``; NNX with ``params=None``) by ``recipe``.
    Only kernels are quantized: batch statistics and other state stay float, and count.

    ``sample_input`` and each calibration batch: one array, a tuple of positional inputs or a
    dict of keyword inputs (`q4lab.adapters.call_with`). ``calibration``: batches, needed when
    a quantizer asks for statistics or an activation spec is static. Layers are quantized one at
    a time in the order the model calls them; with ``recipe.sequential`` the statistics of each
    layer are captured from the model whose earlier layers are already quantized (weights
    only), else from the float model. ``row_mask``: a function of a calibration batch, True
    where its positions hold data ([B, T] for token ids: False on padding); the statistics are
    then those of the kept rows (`q4lab.calibrate`; a task's `Task.row_mask`). ``progress``
    shows a bar over layers (None: only on a terminal). Errors in the recipe are raised before
    any work.
    """
    adapter = adapt(model, params)
    if params is None:
        if not isinstance(model, nnx.Module):
            raise ValueError("params is None; allowed only for an NNX model (Linen needs params)")
        params = adapter.params()
    params = jax.tree.map(_as_jax_holds, params)
    arrays = jax.Array | np.ndarray
    if isinstance(calibration, Mapping) or (  # iterating one batch gives its keys or its rows
        isinstance(calibration, arrays)
        and (not isinstance(sample_input, arrays) or calibration.ndim == sample_input.ndim)
    ):  # (an array of one more axis than sample_input is a stack of batches)
        raise ValueError(
            f"calibration is one batch (a {type(calibration).__name__}); allowed: an iterable of "
            "batches, e.g. [x] or a list of them"
        )
    plans = plan(recipe, adapter.layers(params, sample_input))
    needs = {path: _needs(p) for path, p in plans.items()}
    batches = list(calibration)
    if any(needs.values()) and not batches:
        layers = sorted(path for path, n in needs.items() if n)
        raise ValueError(f"recipe needs calibration data for layer(s) {layers}; none was given")
    calibrator = cached_calibrator(adapter, needs, row_mask=row_mask)
    rotations = {  # a static range's bounds are taken after the layer's rotation
        path: rotated
        for path, p in plans.items()
        if "act_bounds" in needs[path] and (rotated := rotation(p.rule.transform, path)) is not None
    }
    stats: dict[str, dict[str, jax.Array]] = {}
    fresh: set[str] = set()  # layers whose statistics reflect every layer quantized so far
    stages: dict[str, frozenset[str]] = {}
    done: set[str] = set()
    working = params  # float params, with the layers quantized so far dequantized
    track_working = recipe.sequential and any(needs.values())  # only sequential passes read it
    qparams = params
    acts = {path: ActState(p.rule.act) for path, p in plans.items() if p.rule.act is not None}
    for path, p in tqdm(
        plans.items(),
        desc="quantize",
        unit="layer",
        disable=None if progress is None else not progress,
    ):
        if needs[path] and not stats:  # one float pass: every layer's statistics
            stats = calibrator(working, batches, float_params=params, rotations=rotations)
            fresh = set(stats)
            stages = _stages(stats, list(plans))
        elif needs[path] and path not in fresh and recipe.sequential:
            stage = [q for q in stages[path] if needs[q] and q not in done]
            stats |= calibrator(
                working, batches, only=stage, float_params=params, rotations=rotations
            )
            fresh = set(stage)
        w = get_at(params, p.layer.key)
        qt, layer_stats = _quantize_layer(p, w, stats.get(path))
        qparams = set_at(qparams, p.layer.key, qt)
        if track_working:
            working = set_at(working, p.layer.key, unfolded_weight(qt).astype(w.dtype))
        done.add(path)
        fresh &= stages.get(path, frozenset())  # only same-input layers keep valid statistics
        if "act_sample" in needs[path]:
            rows = _range_rows(path, layer_stats, p.rule.act)
            acts[path] = ActState(p.rule.act, *p.rule.act.params(rows))
    return QuantizedModel(adapter, qparams, params, plans, acts, recipe)


__all__ = ["LayerPlan", "QuantizedModel", "plan", "quantize_model"]
