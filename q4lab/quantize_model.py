"""Apply a `Recipe` to a Flax model: validate, calibrate, quantize the weights, and run the
quantized forward (real integer ops) or its fake-quant simulation."""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from q4lab.adapters import Adapter, Inputs, Layer, PyTree, RowMask, adapt, get_at, set_at
from q4lab.calibrate import cached_calibrator
from q4lab.core import (
    Ledger,
    QTensor,
    QuantSpec,
    dequantize,
    fake_quant,
    relayout_tree,
    size_ledger,
    to_matrix,
)
from q4lab.core.transforms import hadamard_factors
from q4lab.hooks import QuantHook
from q4lab.layer_quant import (
    ActState,
    folded_weight,
    make_transform,
    rotation,
    transform_stats,
    unfolded_weight,
)
from q4lab.quantizers import (
    ACTIVATIONS,
    CROSS,
    HESSIAN,
    RangeQuantizer,
    check_finite,
    check_quantized,
    range_quantizers,
)
from q4lab.recipe import ActSpec, Recipe, Rule


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    layer: Layer
    rule: Rule
    rule_index: int
    spec: QuantSpec  # the rule's weight spec, per-channel where one group spans the layer

    @property
    def rounds_to_nearest(self) -> bool:
        """True when the codes are the float weight rounded with the stored scales, so the
        fake-quant simulation applies to the float weight (not so for GPTQ)."""
        return isinstance(self.rule.build_quantizer(), RangeQuantizer)


def _effective_spec(spec: QuantSpec, k: int) -> QuantSpec:
    """A group at least as large as the layer's input is one group: per-channel."""
    if spec.granularity == "per_group" and spec.group_size >= k:
        return dataclasses.replace(spec, granularity="per_channel", group_size=None)
    return spec


def plan(recipe: Recipe, layers: list[Layer]) -> dict[str, LayerPlan]:
    """Match rules to layers and check every combination before any work is done.

    Layers matched first by a float rule, or by none, stay float. A per-group spec whose group
    size is at least a layer's input size K quantizes that layer per-channel (one group); a group
    size smaller than K must divide it.
    """
    first = {layer.path: recipe.match(layer.path) for layer in layers}  # (index, rule) or None
    chosen: dict[str, LayerPlan] = {}
    for layer in layers:
        match = first[layer.path]
        if match is not None and not match[1].keeps_float:
            i, rule = match
            chosen[layer.path] = LayerPlan(layer, rule, i, _effective_spec(rule.weight, layer.k))
    paths = list(first)
    winners = {match[0] for match in first.values() if match is not None}
    for i, rule in enumerate(recipe.rules):
        if not any(rule.matches(p) for p in paths):
            raise ValueError(
                f"recipe rule {i} (pattern {rule.pattern!r}) matches no quantizable layer; "
                f"the model's layers are: {paths}"
            )
        if i not in winners:
            taken = sorted({first[p][0] for p in paths if rule.matches(p)})
            raise ValueError(
                f"recipe rule {i} (pattern {rule.pattern!r}) applies to no layer: every layer "
                f"it matches is taken by the earlier rule(s) {taken}; allowed: a rule that is "
                "the first match of at least one layer"
            )
    if not chosen:
        raise ValueError(
            f"the recipe quantizes no layer (its rules keep every layer float): {paths}"
        )
    places = {
        path: f"recipe rule {p.rule_index} (pattern {p.rule.pattern!r}), layer {path!r}"
        for path, p in chosen.items()
    }
    sizes = []  # every layer a group size does not divide, in one error
    for path, p in chosen.items():
        try:
            p.spec.check_input_size(p.layer.k)
        except ValueError as err:
            sizes.append(f"{places[path]}: {err}")
    if sizes:
        raise ValueError("\n".join(sizes))
    for path, p in chosen.items():
        where = places[path]
        a_kind = f"{'an' if p.layer.kind[0] in 'aeiou' else 'a'} {p.layer.kind}"
        if p.rule.act is not None and not p.layer.hookable:
            raise ValueError(
                f"{where}: activation quantization is not supported on {a_kind} layer; "
                "allowed: dense (Dense, DenseGeneral without batch dims, Linear) and conv layers"
            )
        needs = p.rule.build_quantizer().needs
        if needs and not p.layer.hookable:  # calibration sees the inputs of hooked layers only
            raise ValueError(
                f"{where}: quantizer {p.rule.quantizer!r} needs statistics of the layer's inputs "
                f"({', '.join(sorted(needs))}), which calibration does not collect on {a_kind} "
                f"layer; allowed there: a quantizer of the weights alone "
                f"({', '.join(range_quantizers())})"
            )
        scales_inputs = ACTIVATIONS in needs  # AWQ: its own transform
        dense = p.layer.hookable and p.layer.kind == "dense"
        if scales_inputs and not dense:
            raise ValueError(
                f"{where}: quantizer {p.rule.quantizer!r} scales the layer's input channels (an "
                f"input transform folded into the weight), which {a_kind} layer does not take; "
                "allowed: dense layers (Dense, DenseGeneral without batch dims, Linear): give "
                "it a rule whose pattern matches those only, and the others another quantizer"
            )
        if p.rule.transform is not None and not dense:
            raise ValueError(
                f"{where}: an input transform is not supported on {a_kind} layer; "
                "allowed: dense layers (Dense, DenseGeneral without batch dims, Linear)"
            )
        if p.rule.transform is not None and scales_inputs:
            raise ValueError(
                f"{where}: quantizer {p.rule.quantizer!r} chooses its own input scales; "
                "allowed: transform=None"
            )
        if p.rule.transform is not None and p.rule.transform.rotates:
            _check_rotation(where, p.layer.k)
    return chosen


def _check_rotation(where: str, k: int) -> None:
    """A Hadamard rotation mixes a layer's K inputs in blocks (`hadamard_factors`): refuse one
    that would mix nothing (odd K), and warn of one that mixes less than all of them."""
    m, b = hadamard_factors(k)
    if m * b == 1:
        raise ValueError(
            f"{where}: rotation='hadamard' would leave the layer's K={k} inputs as they are (an "
            "odd K has no Hadamard factor); allowed: layers with an even K"
        )
    if m * b < k:
        warnings.warn(
            f"{where}: rotation='hadamard' mixes the layer's K={k} inputs in blocks of {m * b}, "
            "not all together (whole for K = 2^p, 12·2^p and 20·2^p), so an outlier channel is "
            f"spread over {m * b} channels only",
            stacklevel=4,  # _check_rotation < plan < quantize_model < the caller
        )


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


@dataclasses.dataclass(frozen=True)
class _ForwardLayer:
    """What the quantized forward needs to know of a layer (a static jit argument: models with
    the same layers share one compiled forward per weight and activation spec)."""

    path: str
    key: tuple
    rounds_to_nearest: bool
    dense: bool  # a hookable dense layer: weight-only, the real forward runs `w4a16_matmul`
    transformed: bool  # an input transform: the hook applies it in every mode


def _weights(layers, fake: bool, params: PyTree, simulated: PyTree) -> PyTree:
    for layer in layers:
        qt: QTensor = get_at(params, layer.key)
        if fake and layer.rounds_to_nearest:
            w = get_at(simulated, layer.key)  # folded already where it has a transform
            value = fake_quant(w, qt.spec, qt.scale, qt.zero_points(), in_axes=qt.in_axes)
        else:  # from the packed codes, inside jit (and the weights GPTQ chose)
            value = dequantize(qt)
        params = set_at(params, layer.key, value.astype(jnp.float32))
    return params


def _hooked(layer: _ForwardLayer, acts: dict) -> bool:
    """Whether the forward runs ``layer`` through a `QuantHook`: quantized activations, an input
    transform, or a hookable dense layer (the fake forward too: its float32 weight, not the
    module's kernel cast to a narrower compute dtype, as the integer forward)."""
    return layer.path in acts or layer.transformed or layer.dense


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _forward(adapter, layers, fake, params, simulated, acts, x):
    mode = "fake" if fake else "int"
    weights = _weights(layers, fake, params, simulated)
    hooks = {
        layer.path: QuantHook(
            get_at(params, layer.key),
            acts.get(layer.path),
            mode,
            weight=get_at(weights, layer.key) if fake else None,
        )
        for layer in layers
        if _hooked(layer, acts)
    }
    return adapter.apply(weights, x, hooks)


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


@dataclasses.dataclass
class QuantizedModel:
    """A model with its quantized parameters (`QTensor` leaves in the parameter dict)."""

    adapter: Adapter
    params: PyTree  # float leaves and QTensors: exactly what is stored
    float_params: PyTree  # the original weights, for the fake-quant simulation only
    layers: dict[str, LayerPlan]
    acts: dict[str, ActState]  # the layers whose activations are quantized
    recipe: Recipe | None = None  # what it was quantized by (every rule, float ones too)

    def ledger(self) -> Ledger:
        return size_ledger(self.params)

    def relayout(self, layout: str) -> QuantizedModel:
        """The same model with every 4-bit weight that can hold it in ``layout``
        (`q4lab.core.relayout`: ``"kmajor"`` for the Mosaic GPU kernels, which ``auto`` then
        runs on a Hopper GPU). Models are made, loaded from older files and frozen after QAT in
        ``"rows"``."""
        return dataclasses.replace(self, params=relayout_tree(self.params, layout))

    @functools.cached_property
    def _forward_layers(self) -> tuple[_ForwardLayer, ...]:
        return tuple(
            _ForwardLayer(
                p.layer.path,
                p.layer.key,
                p.rounds_to_nearest,
                p.layer.hookable and p.layer.kind == "dense",
                get_at(self.params, p.layer.key).transform is not None,
            )
            for p in self.layers.values()
        )

    @functools.cached_property
    def _int_forward_layers(self) -> tuple[_ForwardLayer, ...]:
        """As `_forward_layers`, for the integer forward: every layer runs from its codes there,
        so GPTQ's models and round-to-nearest ones share one compiled forward."""
        return tuple(dataclasses.replace(f, rounds_to_nearest=False) for f in self._forward_layers)

    def int_hooked(self, path: str) -> bool:
        """True when the integer forward runs layer ``path`` through a `QuantHook` (quantized
        activations, an input transform, a hookable dense layer); the others multiply their
        kernel dequantized."""
        layer = next(f for f in self._forward_layers if f.path == path)
        return _hooked(layer, self.acts)

    def apply(self, x: Inputs, *, fake: bool = False) -> jax.Array:
        """Quantized forward of ``x`` (an array, a tuple of positional inputs or a dict of
        keyword inputs, as ``sample_input``); ``fake=True`` runs the float simulation of the
        same recipe."""
        return _forward(
            self.adapter,
            self._forward_layers if fake else self._int_forward_layers,
            fake,
            self.params,
            self._simulated_weights if fake else None,
            self.acts,
            x,
        )

    @functools.cached_property
    def _simulated_weights(self) -> PyTree:
        """The float weights the fake forward rounds: the model's own, folded where a layer has
        an input transform, eagerly as when it was quantized (folded inside the forward's jit,
        a Paley-Hadamard rotation rounds otherwise, and a code could flip)."""
        params = self.float_params
        for f in self._forward_layers:
            qt = get_at(self.params, f.key)
            if params is not None and f.rounds_to_nearest and qt.transform is not None:
                w = folded_weight(qt.transform, get_at(params, f.key), qt.in_axes)
                params = set_at(params, f.key, w)
        return params

    def save(
        self, directory: str | os.PathLike, *, task: str | None = None, overwrite: bool = False
    ) -> Path:
        """Write the packed model to ``directory`` (`q4lab.export.save`: safetensors + JSON);
        ``q4lab.load(directory, model)`` rebuilds its integer forward. ``task``: the q4lab task
        the model came from, so that loading needs no ``model``. A directory holding a saved
        model is refused unless ``overwrite=True``."""
        from q4lab.export import save

        return save(self, directory, task=task, overwrite=overwrite)


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
