"""The quantized model: a model's parameters with `QTensor` leaves, its layer plans and
activation states, and its forward (real integer ops, or their fake-quant simulation), size
ledger, relayout and save."""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

import jax
import jax.numpy as jnp

from q4lab.adapters import Adapter, Inputs, PyTree, get_at, set_at
from q4lab.core import Ledger, QTensor, dequantize, fake_quant, relayout_tree, size_ledger
from q4lab.hooks import QuantHook
from q4lab.layer_plan import LayerPlan
from q4lab.layer_quant import ActState, folded_weight
from q4lab.recipe import Recipe


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


__all__ = ["QuantizedModel"]
