"""What a Flax module is beyond its weights, as plain text: a saved model records it, and loading
into a module configured otherwise (another activation, width, compute dtype) is refused.

``settings(module)`` maps each submodule's path to its settings: a Linen module's dataclass
fields, an NNX module's plain attributes (not its variables, submodules or RNG streams). Values
are written as a reader would compare them, the same in every process: a function or class by
its name (no module path: a class saved from a notebook's ``__main__`` loads from a module), a
``jax.custom_jvp`` function (``relu``, ``relu6``) by the function it wraps, a
``functools.partial`` by its function and arguments, sets sorted, no memory addresses. The
train/eval flags (``use_running_average``, ``deterministic``) are left out: q4lab runs a model in
inference mode whatever mode it was given in.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import nnx

MODE_FLAGS = ("use_running_average", "deterministic")  # set by eval()/train(): not settings
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def describe(value: Any) -> str:
    """``value`` as text that two processes agree on (module docstring)."""
    if isinstance(value, jax.custom_jvp | jax.custom_vjp):
        return describe(value.fun)
    if isinstance(value, functools.partial):
        args = [describe(a) for a in value.args]
        args += [f"{k}={describe(v)}" for k, v in sorted(value.keywords.items())]
        return f"partial({describe(value.func)}, {', '.join(args)})"
    if isinstance(value, type):
        return value.__name__
    if callable(value) and hasattr(value, "__qualname__"):
        return value.__qualname__
    if isinstance(value, nn.Module):  # a Linen submodule given as a field
        return f"{type(value).__name__}({_fields_text(value)})"
    if isinstance(value, dict):
        items = sorted((describe(k), describe(v)) for k, v in value.items())
        return "{" + ", ".join(f"{k}: {v}" for k, v in items) + "}"
    if isinstance(value, set | frozenset):
        return "{" + ", ".join(sorted(describe(v) for v in value)) + "}"
    if isinstance(value, list | tuple):
        return f"{type(value).__name__}({', '.join(describe(v) for v in value)})"
    if isinstance(value, np.dtype):
        return str(value)
    return _ADDRESS.sub("", repr(value))


def _fields_text(module: nn.Module) -> str:
    return ", ".join(f"{k}={v}" for k, v in _linen_fields(module).items())


def _linen_fields(module: nn.Module) -> dict[str, str]:
    return {
        f.name: describe(getattr(module, f.name))
        for f in dataclasses.fields(module)
        if f.name not in ("parent", "name", *MODE_FLAGS)
    }


def settings(module: nn.Module | nnx.Module) -> dict[str, dict[str, str]]:
    """Per submodule path (``""``: the module itself), its class and settings as text."""
    if isinstance(module, nn.Module):
        return {"": {"class": type(module).__name__, **_linen_fields(module)}}
    out = {}
    for path, node in nnx.iter_graph(module):
        if not isinstance(node, nnx.Module) or isinstance(node, nnx.Rngs | nnx.RngStream):
            continue
        plain = {
            name: describe(value)
            for name, value in sorted(vars(node).items())
            if not name.startswith("_")
            and name not in MODE_FLAGS
            and not isinstance(value, nnx.Variable | nnx.Module | nnx.Rngs | nnx.RngStream)
            and not isinstance(value, jax.Array | np.ndarray)
            and not _holds_graph(value)
        }
        out["/".join(map(str, path))] = {"class": type(node).__name__, **plain}
    return out


def _holds_graph(value: Any) -> bool:
    """A container of modules or variables (an ``nnx.List`` of layers): the walk visits them."""
    leaves = jax.tree.leaves(value, is_leaf=lambda v: isinstance(v, nnx.Module | nnx.Variable))
    return any(isinstance(v, nnx.Module | nnx.Variable) for v in leaves)


def differences(saved: dict[str, dict[str, str]], given: dict[str, dict[str, str]]) -> list[str]:
    """How ``given`` differs from ``saved``, one line per setting (at most a few): a submodule
    one lacks, or a setting both hold with other values. A setting only one side holds is left
    out (a Flax release that adds an attribute to its layers changes no computation)."""
    lines = []
    for path in sorted(set(saved) | set(given)):
        where = path or "the model"
        if path not in given or path not in saved:
            held = "the saved model" if path in saved else "the given model"
            lines.append(f"{where}: only {held} has it")
            continue
        for name in sorted(set(saved[path]) & set(given[path])):
            if saved[path][name] != given[path][name]:
                lines.append(
                    f"{where}.{name}: saved {saved[path][name]}, given {given[path][name]}"
                )
    return lines
