"""Find the quantizable layers of an unedited Flax model and run it with per-layer hooks.

Works through Flax's own injection points, never by patching ``jax.lax``:
  Linen  ``nn.intercept_methods`` wraps each matched module's ``__call__`` and, for that call
         only, sets the module's ``dot_general`` / ``conv_general_dilated`` attributes.
  NNX    the graph is merged from a parameter dict inside the traced function and the matched
         modules' ``dot_general`` / ``conv_general_dilated`` attributes are set on that copy.
Parameters are handled as a plain nested dict (Linen: ``variables["params"]``, or the whole
``variables`` of a model that also holds other collections such as ``batch_stats``; NNX: the pure
dict of the module's state); each layer's kernel sits at ``Layer.key``. Only parameters train
(`Adapter.trainable`): batch statistics and other state stay as they were.

A model's input is one array, a tuple of positional inputs (``model(ids, mask)``) or a dict of
keyword inputs (``model(ids=..., mask=...)``); a model taking one dict argument gets it wrapped in
a 1-tuple.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

PyTree = Any
Inputs = Any  # an array, a tuple of positional inputs or a dict of keyword inputs
RowMask = Callable[[Inputs], jax.Array]  # a batch -> True where its positions hold data


def call_with(fn: Any, inputs: Inputs, *leading: Any) -> Any:
    """``fn(*leading, *inputs)`` for a tuple, ``fn(*leading, **inputs)`` for a dict, else
    ``fn(*leading, inputs)``."""
    if isinstance(inputs, list):  # ambiguous: one array's rows, or positional inputs
        raise ValueError(
            "inputs is a list; allowed: an array, a tuple of positional inputs or a dict of "
            "keyword inputs"
        )
    if isinstance(inputs, tuple):
        return fn(*leading, *inputs)
    if isinstance(inputs, Mapping):
        return fn(*leading, **inputs)
    return fn(*leading, inputs)


def check_arguments(module: Any, inputs: Inputs) -> None:
    """Refuse inputs that leave an argument of the model's ``__call__`` without a value (e.g.
    ``train`` with no default), naming it; Python's TypeError would come from inside the trace."""
    if isinstance(inputs, list):  # `call_with` refuses it, saying why
        return
    try:
        signature = inspect.signature(module.__call__)
    except (TypeError, ValueError):  # a callable Python cannot describe: let the call decide
        return
    args = inputs if isinstance(inputs, tuple) else () if isinstance(inputs, Mapping) else (inputs,)
    try:
        signature.bind(*args, **(inputs if isinstance(inputs, Mapping) else {}))
    except TypeError as err:
        raise ValueError(
            f"the model's __call__{signature} does not take the inputs q4lab passes ({err}): "
            "q4lab calls it with the inputs alone (an array, a tuple of positional inputs or a "
            "dict of keyword inputs); allowed: any other argument has a default that runs "
            "inference, e.g. train: bool = False"
        ) from err


@dataclasses.dataclass(frozen=True)
class Layer:
    """A quantizable layer: where its kernel lives and which kernel axes are its inputs."""

    path: str  # module names joined by "/"
    key: tuple[Any, ...]  # key path of the kernel in the parameter dict
    kind: str  # "dense", "conv" or "einsum"
    kernel_shape: tuple[int, ...]
    in_axes: tuple[int, ...]  # contraction axes of the kernel (K); the rest are outputs (N)
    hookable: bool  # True when the layer's matmul can be replaced (activation quantization)

    @property
    def k(self) -> int:
        """Input size: the product of the kernel's contraction axes."""
        return math.prod(self.kernel_shape[a] for a in self.in_axes)


class Hook(Protocol):
    """Replacement compute for one layer; signatures of ``lax.dot_general`` and
    ``lax.conv_general_dilated`` (the keyword arguments Flax passes)."""

    def dot_general(self, lhs, rhs, dimension_numbers, precision=None, **kwargs): ...

    def conv(self, lhs, rhs, window_strides, padding, **kwargs): ...


def _einsum_in_axes(einsum_str: str) -> tuple[int, ...]:
    inputs, out = einsum_str.replace(" ", "").split("->")
    lhs, rhs = inputs.split(",")
    return tuple(i for i, c in enumerate(rhs) if c in lhs and c not in out)


def _linen_layer(module: nn.Module, kernel_shape: tuple[int, ...], key: tuple) -> Layer | None:
    path = "/".join(str(p) for p in module.path)
    ndim = len(kernel_shape)
    if isinstance(module, nn.Dense):
        return Layer(path, key, "dense", kernel_shape, (0,), True)
    if isinstance(module, nn.DenseGeneral):
        n_in = len(module.axis) if isinstance(module.axis, tuple | list) else 1
        return Layer(path, key, "dense", kernel_shape, tuple(range(n_in)), not module.batch_dims)
    if isinstance(module, nn.Conv) and getattr(module, "shared_weights", True):
        return Layer(path, key, "conv", kernel_shape, tuple(range(ndim - 1)), True)
    if isinstance(module, nn.Einsum):
        in_axes = _einsum_in_axes(module.einsum_str)
        return Layer(path, key, "einsum", kernel_shape, in_axes, False)
    return None


def _nnx_layer(path_parts: tuple, node: Any) -> Layer | None:
    path = "/".join(str(p) for p in path_parts)
    key = (*path_parts, "kernel")
    if isinstance(node, nnx.Linear):
        return Layer(path, key, "dense", tuple(node.kernel.get_value().shape), (0,), True)
    if isinstance(node, nnx.LinearGeneral):
        n_in = len(node.axis) if isinstance(node.axis, tuple | list) else 1
        shape = tuple(node.kernel.get_value().shape)
        return Layer(path, key, "dense", shape, tuple(range(n_in)), not node.batch_axis)
    if isinstance(node, nnx.Conv):
        shape = tuple(node.kernel.get_value().shape)
        return Layer(path, key, "conv", shape, tuple(range(len(shape) - 1)), True)
    if isinstance(node, nnx.Einsum):
        shape = tuple(node.kernel.get_value().shape)
        return Layer(path, key, "einsum", shape, _einsum_in_axes(node.einsum_str), False)
    return None


def _install(module: Any, hook: Hook) -> None:
    """Point a module's injection attributes at the hook (Linen modules are frozen dataclasses)."""
    setter = object.__setattr__
    if hasattr(module, "conv_general_dilated"):
        if hasattr(module, "conv_general_dilated_cls"):
            setter(module, "conv_general_dilated_cls", None)
        setter(module, "conv_general_dilated", hook.conv)
    else:
        if hasattr(module, "dot_general_cls"):
            setter(module, "dot_general_cls", None)
        setter(module, "dot_general", hook.dot_general)


def _flax_said(err: Exception) -> str:
    """A Flax error's message without the link to its documentation."""
    return str(err).split(" (https")[0]


def holds_collections(params: PyTree) -> bool:
    """True for a Linen ``variables`` dict (``{"params": ..., "batch_stats": ...}``, as ``init``
    returns it), False for the ``params`` collection alone."""
    return isinstance(params, Mapping) and isinstance(params.get("params"), Mapping)


@dataclasses.dataclass(frozen=True)
class LinenAdapter:
    """A Linen module and its ``params`` collection, or (``variables``) all its collections.
    Hashable by value, so jitted functions taking it as a static argument are reused across
    quantized copies of a model."""

    module: nn.Module
    variables: bool = False  # the parameter dict is ``variables``, not ``variables["params"]``

    def _vars(self, params: PyTree) -> PyTree:
        return params if self.variables else {"params": params}

    def trainable(self, params: PyTree) -> PyTree:
        """True at the leaves of the ``params`` collection, False at other collections'."""
        if not self.variables:
            return jax.tree.map(lambda _: True, params)
        return jax.tree_util.tree_map_with_path(  # the tree's own containers (a FrozenDict too)
            lambda path, _: path[0].key == "params", params
        )

    def layers(self, params: PyTree, sample_input: Inputs) -> list[Layer]:
        check_arguments(self.module, sample_input)
        found: dict[str, Layer] = {}

        def record(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            mod = context.module
            if context.method_name == "__call__" and "kernel" in mod.variables.get("params", {}):
                key = ("params",) * self.variables + (*mod.path, "kernel")
                shape = tuple(mod.variables["params"]["kernel"].shape)
                layer = _linen_layer(mod, shape, key)
                if layer is not None:
                    found.setdefault(layer.path, layer)
            return out

        with nn.intercept_methods(record):
            try:
                jax.eval_shape(
                    lambda p, x: call_with(self.module.apply, x, self._vars(p)),
                    params,
                    sample_input,
                )
            except flax.errors.ScopeParamShapeError as err:
                raise ValueError(
                    f"sample_input of shape(s) {input_shapes(sample_input)} does not fit the "
                    f"model's parameters: {err}"
                ) from err
            except flax.errors.ModifyScopeVariableError as err:
                raise ValueError(
                    f"the model updates its variables when called ({_flax_said(err)}"
                    "): it runs in training mode (e.g. BatchNorm(use_running_average=False)); "
                    "allowed: a model whose call, as q4lab makes it, runs in inference mode"
                ) from err
            except flax.errors.ScopeCollectionNotFound as err:
                raise ValueError(
                    "params is the 'params' collection alone, but the model also reads another "
                    f"one ({_flax_said(err)}); allowed: the whole variables dict, "
                    "as the model's init returns it"
                ) from err
        return list(found.values())

    def apply(self, params: PyTree, x: Inputs, hooks: Mapping[str, Hook]) -> jax.Array:
        if not hooks:
            return call_with(self.module.apply, x, self._vars(params))

        def intercept(next_fun, args, kwargs, context):
            mod = context.module
            hook = hooks.get("/".join(str(p) for p in mod.path))
            if hook is None or context.method_name != "__call__":
                return next_fun(*args, **kwargs)
            _install(mod, hook)
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(intercept):
            return call_with(self.module.apply, x, self._vars(params))


_MODE_FLAGS = ("use_running_average", "deterministic")  # what nnx's eval() sets True


def inference_mode(module: nnx.Module) -> None:
    """``module.eval()`` where a layer holds the mode as a plain attribute (BatchNorm's
    ``use_running_average``, Dropout's and attention's ``deterministic``); one computed by a
    property of the model's own is left to the model (eval() would raise on it)."""
    for _, node in nnx.iter_graph(module):
        if isinstance(node, nnx.Module):
            for flag in _MODE_FLAGS:
                if vars(node).get(flag) is False:
                    setattr(node, flag, True)


class NNXAdapter:
    """An NNX module, run in inference mode (`_merge`); its state is handled as a pure dict."""

    def __init__(self, module: nnx.Module):
        self.graphdef, self.state = nnx.split(module)
        self.module = module

    def params(self) -> PyTree:
        return nnx.to_pure_dict(self.state)

    def trainable(self, params: PyTree) -> PyTree:
        """True at ``nnx.Param`` leaves, False at batch statistics and other state."""
        model = nnx.merge(self.graphdef, self.state)
        flat, _ = jax.tree_util.tree_flatten_with_path(
            nnx.to_pure_dict(nnx.state(model, nnx.Param))
        )
        trained = {path for path, _ in flat}
        return jax.tree_util.tree_map_with_path(lambda path, _: path in trained, params)

    def _merge(self, params: PyTree) -> nnx.Module:
        """A copy of the module holding ``params``, in inference mode (``eval()``: BatchNorm's
        running averages, no dropout), whatever mode the model was given in: a BatchNorm left
        normalizing each batch by its own statistics made a loaded model's outputs depend on
        the batch (up to 4.8 on a logit). A call's own arguments still win."""
        state = jax.tree_util.tree_map(lambda v: v, self.state)
        nnx.replace_by_pure_dict(state, params)
        module = nnx.merge(self.graphdef, state)
        inference_mode(module)
        return module

    def layers(self, params: PyTree, sample_input: Inputs) -> list[Layer]:
        module = self._merge(params)
        check_arguments(module, sample_input)
        found = [_nnx_layer(tuple(p), node) for p, node in nnx.iter_graph(module)]
        return [layer for layer in found if layer is not None]

    def apply(self, params: PyTree, x: Inputs, hooks: Mapping[str, Hook]) -> jax.Array:
        module = self._merge(params)
        if hooks:
            for path, node in nnx.iter_graph(module):
                hook = hooks.get("/".join(str(p) for p in path))
                if hook is not None and isinstance(node, nnx.Module):
                    _install(node, hook)
        return call_with(module, x)


Adapter = LinenAdapter | NNXAdapter


def adapt(model: nn.Module | nnx.Module, params: PyTree | None = None) -> Adapter:
    """The adapter for a Linen or NNX model; a Linen model's ``params`` tell whether they are
    the ``params`` collection or all of ``variables`` (`holds_collections`)."""
    if isinstance(model, nnx.Module):
        return NNXAdapter(model)
    if isinstance(model, nn.Module):
        return LinenAdapter(model, holds_collections(params))
    raise TypeError(f"expected a flax.linen.Module or flax.nnx.Module, got {type(model).__name__}")


def example_count(x: Inputs) -> int:
    """How many examples a model input holds: its arrays' leading size."""
    return len(jax.tree.leaves(x)[0])


def input_shapes(x: Inputs) -> str:
    """The shapes of a model input (an array, a tuple or a dict of them), for an error."""
    return str(jax.tree.map(lambda a: tuple(jnp.shape(a)), x))


def get_at(tree: PyTree, key: tuple) -> Any:
    for k in key:
        tree = tree[k]
    return tree


def set_at(tree: PyTree, key: tuple, value: Any) -> PyTree:
    """A copy of a nested dict with ``tree[key] = value`` (dicts along the path are copied)."""
    if not key:
        return value
    out = dict(tree)
    out[key[0]] = set_at(tree[key[0]], key[1:], value)
    return out
