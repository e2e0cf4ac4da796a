"""Loading a model saved in the packed format (`q4lab.export`) without its float weights: the
config and arrays read and checked, the module's adapter and parameters rebuilt, and
`LoadedModel`, the integer forward of what was saved.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors
from flax import nnx

from q4lab.adapters import (
    Adapter,
    Layer,
    LinenAdapter,
    PyTree,
    adapt,
    call_with,
    input_shapes,
    set_at,
)
from q4lab.core import QTensor
from q4lab.core.qtensor import check_arrays
from q4lab.core.transforms import InputTransform
from q4lab.export.schema import (
    _ACT_ROLES,
    _QTENSOR_ROLES,
    _TRANSFORM_ROLES,
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    _act_spec,
    _config_digest,
    _is_file_name,
    _key_of,
    _name,
    _plain,
    _quant_spec,
    _rule_from_json,
)
from q4lab.layer_plan import LayerPlan
from q4lab.layer_quant import ActState
from q4lab.model_settings import differences, settings
from q4lab.quantized_model import QuantizedModel
from q4lab.recipe import Recipe


@dataclasses.dataclass
class LoadedModel(QuantizedModel):
    """A `QuantizedModel` read back by `load`: packed weights and activation states, no float
    weights. ``apply(x)`` is the integer forward of the saved model, bit for bit; the
    fake-quant simulation needs the float weights, so ``fake=True`` raises a ValueError
    (quantization-aware training, `q4lab.qat`, starts from them too: not from a loaded model).
    ``config`` is the ``q4lab.json`` it was read from, with ``source``: the directory."""

    config: dict[str, Any] = dataclasses.field(kw_only=True)

    def apply(self, x: Any, *, fake: bool = False) -> jax.Array:
        if fake:
            source = self.config.get("source", "a saved model")
            raise ValueError(
                f"fake=True is invalid for a model loaded from {source}: the fake-quant "
                "simulation needs the float weights, which a saved model does not hold; "
                "allowed: fake=False (the integer forward)"
            )
        saved = f"{self.config['model']['class']} saved in {self.config.get('source')}"
        if isinstance(self.adapter, LinenAdapter):  # a Linen module holds no parameters to
            self._check_linen_shapes(x, saved)  # check at load: its first call finds out
        try:
            return super().apply(x)
        except (
            flax.errors.ScopeParamShapeError,
            flax.errors.ScopeParamNotFoundError,
            flax.errors.ScopeCollectionNotFound,  # a collection the module reads, not saved
        ) as err:
            raise ValueError(f"model is not of the saved architecture ({saved}): {err}") from err

    def _check_linen_shapes(self, x: Any, saved: str) -> None:
        """Raise unless the module, called on inputs of ``x``'s shapes, holds exactly the saved
        parameters with their shapes (a module reading fewer would run without an error)."""
        signature = input_shapes(x)
        checked = self.__dict__.setdefault("_checked_inputs", set())
        if signature in checked:
            return
        adapter = self.adapter
        variables = jax.eval_shape(
            lambda x: call_with(adapter.module.init, x, jax.random.key(0)), x
        )
        if adapter.variables:  # the collections saved (not those a call sows, such as losses)
            wanted = _leaf_shapes({c: v for c, v in variables.items() if c in self.params})
        else:
            wanted = _leaf_shapes(variables.get("params", {}))
        differ = _leaves_differ(wanted, _leaf_shapes(self.params))
        if differ:
            raise ValueError(f"model is not of the saved architecture ({saved}): {differ}")
        checked.add(signature)


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise ValueError(
            f"{path} is missing: {directory} is not a saved q4lab model "
            "(written by QuantizedModel.save)"
        )
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{path} is not a q4lab export: its format is not {FORMAT!r}")
    version = config.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{path}: format_version={version!r} is invalid; allowed: an int >= 1")
    name = config.get("weights_file", WEIGHTS_FILE)
    if not _is_file_name(name):
        raise ValueError(
            f"{path}: weights_file={name!r} is invalid; allowed: a file name in {directory}"
        )
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format version {version}, newer than this q4lab reads (versions up to "
            f"{FORMAT_VERSION}); upgrade q4lab to load it"
        )
    return config


def weights_path(directory: str | os.PathLike) -> Path:
    """The weights file of the model saved in ``directory`` (the one its config names)."""
    where = Path(directory)
    return where / _read_config(where).get("weights_file", WEIGHTS_FILE)


def _read_arrays(directory: Path, config: dict[str, Any]) -> dict[str, jax.Array]:
    """Every tensor of ``config["tensors"]``, checked against its entry (dtype, shape, sha256)."""
    path = directory / config.get("weights_file", WEIGHTS_FILE)
    if not path.is_file():
        raise ValueError(f"{path} is missing: the weights of the model saved in {directory}")
    try:
        with safetensors.safe_open(path, framework="np") as f:  # one read: tensors and metadata
            raw = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (not a dict)
            meta = f.metadata() or {}
    except (safetensors.SafetensorError, OSError, ValueError, KeyError) as err:
        raise ValueError(f"{path} is not a readable safetensors file: {err}") from None
    recorded = meta.get("format", "").partition("/config-sha256:")[2]  # files from 2026-11-29
    if recorded and recorded != _config_digest(config):
        raise ValueError(
            f"{directory / CONFIG_FILE} does not describe {path.name}: its sha256 differs from "
            "the one the weights were saved with (a config edited by hand, or the files of "
            "two saves); save the model again"
        )
    entries: dict[str, dict] = config["tensors"]
    if missing := sorted(set(entries) - set(raw)):
        raise ValueError(f"{path} lacks tensor(s) {missing} that {CONFIG_FILE} describes")
    if extra := sorted(set(raw) - set(entries)):
        raise ValueError(f"{path} holds tensor(s) {extra} that {CONFIG_FILE} does not describe")
    out = {}
    for name, entry in entries.items():
        a = raw[name]
        where = f"tensor {name!r} ({entry['role']}" + (
            f" of layer {entry['layer']!r})" if entry.get("layer") else ")"
        )
        want = np.dtype(entry.get("stored_as", entry["dtype"]))
        if a.dtype != want or list(a.shape) != entry["shape"]:
            raise ValueError(
                f"{where} in {path} is {a.dtype}{list(a.shape)}; {CONFIG_FILE} records "
                f"{want}{entry['shape']}"
            )
        if hashlib.sha256(a.tobytes()).hexdigest() != entry["sha256"]:
            raise ValueError(f"{where} in {path} is corrupted: its sha256 differs from the record")
        if "stored_as" in entry:
            a = a.view(jnp.dtype(entry["dtype"]))
        value = jnp.asarray(a)
        if "key_impl" in entry:
            value = jax.random.wrap_key_data(value, impl=entry["key_impl"])
        out[name] = value
    return out


def _adapter(config: dict[str, Any], model: nn.Module | nnx.Module | None, where: Path) -> Adapter:
    info = config["model"]
    framework, cls = info["framework"], info["class"]
    given = model
    if model is None:
        if info.get("task") is None:
            raise ValueError(
                f"model=None is invalid for {where}: it was saved from a {framework} model "
                f"({cls}) that is not a q4lab task; allowed: model=<a {cls.rsplit('.', 1)[-1]} "
                "instance>" + (" of the same architecture" if framework == "nnx" else "")
            )
        from q4lab.tasks import available_tasks, get_task

        if info["task"] not in available_tasks():
            raise ValueError(
                f"{where} was saved from task {info['task']!r}, which is not registered in this "
                f"process (registered: {', '.join(available_tasks())}); allowed: import the "
                f"module that registers it before loading (q4lab --plugin <module> on the command "
                f"line), or load(..., model=<a {cls.rsplit('.', 1)[-1]} instance>)"
            )
        model = get_task(info["task"]).model
    is_nnx = isinstance(model, nnx.Module)
    if not is_nnx and not isinstance(model, nn.Module):
        raise ValueError(
            f"model={type(model).__name__} is invalid; allowed: a flax.linen.Module or a "
            "flax.nnx.Module instance"
        )
    if ("nnx" if is_nnx else "linen") != framework:
        raise ValueError(
            f"model={type(model).__name__} is invalid for {where}: it was saved from a "
            f"{framework} model ({cls}); allowed: a {framework} model"
        )
    saved_as, named = cls.rsplit(".", 1)[-1], type(model).__name__
    if given is not None and named != saved_as:  # (its module may differ: a notebook's __main__)
        raise ValueError(
            f"model={named} is invalid for {where}: it was saved from a {cls}; allowed: a "
            f"{saved_as}"
        )
    differ = differences(info.get("settings", {}), settings(model)) if "settings" in info else []
    if differ:
        raise ValueError(
            f"model={named}(...) is invalid for {where}: it is configured otherwise than the saved "
            f"{saved_as} ({'; '.join(differ[:3])}{'; ...' if len(differ) > 3 else ''}); allowed: "
            f"a {saved_as} configured as the one saved"
        )
    if is_nnx:
        return adapt(model)
    return LinenAdapter(model, bool(info.get("variables", False)))  # files before: params only


def _params(adapter: Adapter, config: dict[str, Any], arrays: dict[str, jax.Array]) -> PyTree:
    """The parameter dict: float leaves and rebuilt `QTensor`s at their keys."""
    entries = config["tensors"]
    leaves: dict[tuple, Any] = {}
    for name, entry in entries.items():
        if entry["role"] == "float":
            leaves[tuple(entry["key"])] = arrays[name]
    for d in config["layers"]:
        key, q = tuple(d["key"]), d.get("qtensor")
        if q is None:
            raise ValueError(f"layer {_name(key)}: its entry in {CONFIG_FILE} has no 'qtensor'")
        held = {r: arrays.get(f"{_name(key)}.{r}") for r in (*_QTENSOR_ROLES, *_TRANSFORM_ROLES)}
        transform = None
        if q["transform"]:
            transform = InputTransform(smooth=held["smooth"], seed=held["seed"])
        try:
            leaves[key] = QTensor(
                codes=held["codes"],
                scale=held["scale"],
                zero=held["zero"],
                perm=held["perm"],
                spec=_quant_spec(q["spec"]),
                shape=tuple(q["shape"]),
                in_axes=tuple(q["in_axes"]),
                transform=transform,
                layout=q.get("layout", "rows"),  # files written before layouts: rows
            )
            check_arrays(leaves[key])  # the arrays its spec holds, as `QTensor` does not check
        except ValueError as error:  # the QTensor's own checks (its layout), naming the layer
            raise ValueError(f"layer {_name(key)}: {error}") from error
    if isinstance(adapter, LinenAdapter):
        params: PyTree = {}
        for key, leaf in leaves.items():
            node = params
            for k in key[:-1]:
                node = node.setdefault(k, {})
            node[key[-1]] = leaf
        return params
    # NNX: the same leaves as the given model's state, each replaced
    template = adapter.params()
    differ = _leaves_differ(_leaf_shapes(template), _leaf_shapes(leaves))
    if differ:
        raise ValueError(f"model is not of the saved architecture: {differ}")
    for key, leaf in leaves.items():
        template = set_at(template, key, leaf)
    return template


def _leaf_shapes(tree: PyTree | dict[tuple, Any]) -> dict[tuple, tuple[int, ...]]:
    """Each parameter's key and (logical) shape: of a nested dict, or of a dict keyed by keys."""
    if tree and all(isinstance(k, tuple) for k in tree):
        return {k: tuple(np.shape(v)) for k, v in tree.items()}
    flat, _ = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda v: isinstance(v, QTensor))
    return {_key_of(path): tuple(np.shape(v)) for path, v in flat}


def _leaves_differ(wanted: dict[tuple, tuple], stored: dict[tuple, tuple]) -> str | None:
    """How the model's parameters (``wanted``) and the file's differ: the keys one lacks, or the
    first whose shapes differ; None when they agree."""
    if set(wanted) != set(stored):
        extra, missing = sorted(set(wanted) - set(stored)), sorted(set(stored) - set(wanted))
        return "; ".join(
            ([f"it has parameters the file lacks: {[_name(k) for k in extra]}"] if extra else [])
            + (
                [f"the file has parameters it lacks: {[_name(k) for k in missing]}"]
                if missing
                else []
            )
        )
    for key, shape in stored.items():
        if shape != wanted[key]:
            return f"parameter {_name(key)!r} has shape {wanted[key]}, the file {shape}"
    return None


def load(directory: str | os.PathLike, model: nn.Module | nnx.Module | None = None) -> LoadedModel:
    """The model saved in ``directory`` by `QuantizedModel.save`, without float weights:
    ``load(d).apply(x)`` equals the saved model's ``apply(x)`` (integer forward) bit for bit on
    the same backend, and ``ledger()`` is the same.

    ``model``, the module definition the weights belong to:
      Linen  the module (``model=UserCNN()``; no params: they all come from the file), or None
             when the model was saved with ``task=``: the task's module is rebuilt by name.
      NNX    an instance of the same architecture (``UserNNX(nnx.Rngs(0))``): its own weights
             are not read, every parameter comes from the file (shapes checked).

    Raises a ValueError naming the file, the tensor or the versions when a file is missing, was
    written by a newer format version, or a tensor's dtype, shape or sha256 differs from
    ``q4lab.json``; a saved rule whose quantizer is not registered here is named too.
    """
    where = Path(directory)
    config = _read_config(where)
    try:
        return _load(where, config, model)
    except (KeyError, TypeError, IndexError, AttributeError) as err:
        raise ValueError(
            f"{where / CONFIG_FILE} is malformed: {type(err).__name__}: {err} (a config edited "
            "by hand, or not written by QuantizedModel.save)"
        ) from err


def _load(where: Path, config: dict[str, Any], model: nn.Module | nnx.Module | None) -> LoadedModel:
    arrays = _read_arrays(where, config)
    adapter = _adapter(config, model, where)
    rules = {}
    for d in config["rules"]:
        try:
            rules[d["index"]] = _rule_from_json(d)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where / CONFIG_FILE}: recipe rule {d['index']}: {err}") from None
    layers, acts = {}, {}
    for d in config["layers"]:
        layer = Layer(**{f.name: _plain(d[f.name]) for f in dataclasses.fields(Layer)})
        i = d["rule_index"]
        layers[layer.path] = LayerPlan(
            layer=layer, rule=rules[i], rule_index=i, spec=_quant_spec(d["spec"])
        )
        if d["act"] is not None:
            held = {r: arrays.get(f"acts/{layer.path}.{r}") for r in _ACT_ROLES}
            acts[layer.path] = ActState(_act_spec(d["act"]), **held)
    recipe = None
    if config.get("recipe") is not None:
        recipe = Recipe(tuple(rules[i] for i in sorted(rules)), **config["recipe"])
    params = _params(adapter, config, arrays)
    used = {f"acts/{path}.{role}" for path, act in acts.items() for role in _ACT_ROLES}
    for d in config["layers"]:
        roles = (*_QTENSOR_ROLES, *(_TRANSFORM_ROLES if d["qtensor"]["transform"] else ()))
        used |= {f"{_name(tuple(d['key']))}.{role}" for role in roles}
    used |= {n for n, e in config["tensors"].items() if e["role"] == "float"}
    if unused := sorted(set(arrays) - used):
        raise ValueError(
            f"{where / CONFIG_FILE} leaves tensor(s) {unused} of the weights unused: the config "
            "does not describe the model its weights hold"
        )
    return LoadedModel(
        adapter=adapter,
        params=params,
        float_params=None,
        layers=layers,
        acts=acts,
        recipe=recipe,
        config=config | {"source": str(where)},
    )
