"""Packed export: write a `QuantizedModel` to a directory, and `load` it back without its float
weights or calibration data.

A saved model is a directory of two files:

  ``weights-<digest>.safetensors``  (named by the first 16 hex digits of its sha256; files
      before 2026-11-29: ``weights.safetensors``) every array the model holds, bytes as held
      (safetensors has no int4: packed codes and zero points are the QTensor's ``uint8``
      bytes): per quantized layer its codes, scales, zeros, act-order permutation, input
      transform (smoothing scales, rotation seed) and activation state (static scale / zero,
      learned gain); every float leaf (biases, embeddings, layers left float). bfloat16 arrays
      are stored as their ``uint16`` bits.
  ``q4lab.json`` ``format`` / ``format_version``; ``weights_file``; ``model``: how to rebuild the
      module (Linen or NNX, its class, its settings: a Linen module's fields, an NNX module's plain
      attributes, `q4lab.model_settings`; the q4lab task it came from if any); ``rules``: each rule
      that quantized a layer, by its index in the recipe (pattern, quantizer and options,
      ``QuantSpec``, ``ActSpec``, ``TransformSpec``, and its text form; every rule, float ones too,
      with the recipe's ``name`` and ``sequential`` in ``recipe``); ``layers``: each quantized layer
      (its kernel's key, kind, shape, input axes, rule and effective spec, activation spec, code
      layout); ``tensors``: each array by name (role, layer, parameter key, dtype, shape, sha256 of
      its bytes); ``ledger`` totals; the ``manifest`` (versions, device, git commit).

Tensor names: a parameter leaf is its key joined by "/" (``Dense_0/bias``); a quantized kernel's
arrays add their role (``Dense_0/kernel.codes``, ``.scale``, ``.zero``, ``.perm``, ``.smooth``,
``.seed``); activation states are ``acts/<layer>.scale`` (``.zero``, ``.gain``).

The safetensors file is the ledger's bytes (`QuantizedModel.ledger`) plus its header and the few
bytes of activation states (which the ledger does not count). Its one metadata value names the
format, its version and the sha256 of ``q4lab.json`` but its manifest and file fields, so a
config edited by hand, or from another save, is refused. Saving writes the weights under a new
name, then ``q4lab.json`` (the commit: each by a temporary file, synced and renamed), then
removes the weights file the replaced config named: a save cut short leaves the previous model
whole, or a new file no config names.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy
from flax import nnx

from q4lab.adapters import (
    Adapter,
    Layer,
    LinenAdapter,
    NNXAdapter,
    PyTree,
    adapt,
    call_with,
    get_at,
    input_shapes,
    set_at,
)
from q4lab.core import QTensor, QuantSpec
from q4lab.core.qtensor import check_arrays
from q4lab.core.transforms import InputTransform
from q4lab.files import atomic_write_bytes
from q4lab.layer_quant import ActState
from q4lab.manifest import manifest
from q4lab.model_settings import differences, settings
from q4lab.quantize_model import LayerPlan, QuantizedModel
from q4lab.recipe import ActSpec, Recipe, Rule, TransformSpec

FORMAT = "q4lab.packed"
# raise when a reader of the previous version would misread a new file. 2: some codes are laid
# out K-major (`QTensor.layout`); a file whose codes are all in rows is written as version 1,
# which readers of that version read right. 3: some zero points are real-valued (HQQ), held
# in the scale dtype; a file without them is written as 1 or 2. 4: a Linen model's parameters
# are all its variables (``model.variables``: batch statistics too).
FORMAT_VERSION = 4
CONFIG_FILE = "q4lab.json"
WEIGHTS_FILE = "weights.safetensors"  # the weights' name in files written before 2026-11-29
_NOT_HASHED = ("manifest", "weights_file", "weights_bytes")  # the config's sha256 leaves out

_QTENSOR_ROLES = ("codes", "scale", "zero", "perm")
_TRANSFORM_ROLES = ("smooth", "seed")
_ACT_ROLES = ("scale", "zero", "gain")
# dtypes safetensors' numpy API reads back as themselves; others are stored as unsigned bits
_INTS = (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64)
_NATIVE = {np.dtype(t) for t in (np.bool_, *_INTS, np.float16, np.float32, np.float64)}


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


# ---------------------------------------------------------------------------------- encoding


def _is_pairs(value: Any) -> bool:
    return (
        isinstance(value, tuple)
        and bool(value)
        and all(isinstance(i, tuple) and len(i) == 2 and isinstance(i[0], str) for i in value)
    )


def _to_json(value: Any) -> Any:
    """Dataclasses as objects of their fields, option pairs as objects, tuples as lists. A
    `QuantSpec` leaves out ``zero_point`` and ``symmetric_grid`` at their defaults, so files
    that do not use them stay readable by readers from before the fields."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = dataclasses.fields(value)
        if isinstance(value, QuantSpec):
            late = {"zero_point": value.float_zero, "symmetric_grid": value.symmetric_grid != "max"}
            fields = [f for f in fields if late.get(f.name, True)]
        return {f.name: _to_json(getattr(value, f.name)) for f in fields}
    if _is_pairs(value):
        return {k: _to_json(v) for k, v in value}
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_to_json(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _plain(value: Any) -> Any:
    """JSON back to hashable Python: lists become tuples (objects stay dicts: options)."""
    if isinstance(value, list):
        return tuple(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _quant_spec(d: dict) -> QuantSpec:
    return QuantSpec(**_plain(d))


def _rule_to_json(rule: Rule) -> dict[str, Any]:
    out = _to_json(rule)
    out["options"] = _to_json(dict(rule.options))
    if rule.act is not None:
        out["act"]["clipping_options"] = _to_json(dict(rule.act.clipping_options))
    return out


def _act_spec(d: dict | None) -> ActSpec | None:
    return None if d is None else ActSpec(**_plain(d))


def _rule_from_json(d: dict) -> Rule:
    d = dict(d)
    d.pop("text", None)
    d.pop("index", None)
    transform = d.pop("transform", None)
    return Rule(
        **_plain({k: v for k, v in d.items() if k not in ("weight", "act")}),
        weight=_quant_spec(d["weight"]),
        act=_act_spec(d.get("act")),
        transform=None if transform is None else TransformSpec(**_plain(transform)),
    )


def _layer_to_json(p: LayerPlan, qt: QTensor, act: ActState | None) -> dict[str, Any]:
    """A quantized layer: its `Layer` fields, rule, effective spec, the static fields of its
    `QTensor` (whose arrays are tensors ``<key>.<role>``) and its activation spec."""
    return {
        **_to_json(p.layer),
        "rule_index": p.rule_index,
        "spec": _to_json(p.spec),
        "qtensor": {
            "spec": _to_json(qt.spec),
            "shape": list(qt.shape),
            "in_axes": list(qt.in_axes),
            "transform": qt.transform is not None,
            "layout": qt.layout,
        },
        "act": None if act is None else _to_json(act.spec),
    }


# ------------------------------------------------------------------------------------ arrays


def _name(key: tuple) -> str:
    return "/".join(str(k) for k in key)


def _key_of(path: tuple) -> tuple:
    """A `jax.tree_util` key path of a nested dict as a plain tuple of its keys."""
    key = []
    for entry in path:
        if not isinstance(entry, jax.tree_util.DictKey):
            raise ValueError(
                f"parameter at {jax.tree_util.keystr(path)} is not in a nested dict; "
                "allowed: parameters as nested dicts (Linen params, NNX pure dicts)"
            )
        key.append(entry.key if isinstance(entry.key, int) else str(entry.key))
    return tuple(key)


def _stored(a: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """The array safetensors holds and the entry describing it (dtype, shape, sha256)."""
    info: dict[str, Any] = {}
    if jax.dtypes.issubdtype(getattr(a, "dtype", None), jax.dtypes.prng_key):
        info["key_impl"] = str(jax.random.key_impl(a))
        a = jax.random.key_data(a)
    a = np.asarray(a, order="C")  # (not ascontiguousarray: it makes a scalar 1-d)
    info |= {"dtype": a.dtype.name, "shape": list(a.shape)}
    if a.dtype not in _NATIVE:
        a = a.view(f"uint{8 * a.dtype.itemsize}")
        info["stored_as"] = a.dtype.name
    info["sha256"] = hashlib.sha256(a.tobytes()).hexdigest()
    return a, info


def _collect(qmodel: QuantizedModel) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """Every array of ``qmodel`` by tensor name, and its entry in ``q4lab.json``."""
    arrays: dict[str, np.ndarray] = {}
    entries: dict[str, dict] = {}
    layer_of = {p.layer.key: path for path, p in qmodel.layers.items()}

    def put(name: str, value: Any, **entry: Any) -> None:
        if name in arrays:
            raise ValueError(f"two arrays would be saved as tensor {name!r}; rename a module")
        arrays[name], info = _stored(value)
        entries[name] = entry | info

    flat, _ = jax.tree_util.tree_flatten_with_path(
        qmodel.params, is_leaf=lambda x: isinstance(x, QTensor)
    )
    for path, leaf in flat:
        key = _key_of(path)
        if not isinstance(leaf, QTensor):
            put(_name(key), leaf, role="float", key=list(key), layer=None)
            continue
        held = {"codes": leaf.codes, "scale": leaf.scale, "zero": leaf.zero, "perm": leaf.perm}
        if leaf.transform is not None:
            held |= {"smooth": leaf.transform.smooth, "seed": leaf.transform.seed}
        for role, a in held.items():
            if a is not None:
                put(f"{_name(key)}.{role}", a, role=role, key=list(key), layer=layer_of.get(key))
    for path, act in qmodel.acts.items():
        for role in _ACT_ROLES:
            if (a := getattr(act, role)) is not None:
                put(f"acts/{path}.{role}", a, role=f"act_{role}", key=None, layer=path)
    return arrays, entries


def _same_model(a: nn.Module | nnx.Module, b: nn.Module | nnx.Module) -> bool:
    """Equal Linen modules (their configuration), or NNX instances of one graph (class and
    settings, such as an activation function) whose states hold the same shapes: the weights
    are what a saved model replaces."""
    if not (isinstance(a, nnx.Module) and isinstance(b, nnx.Module)):
        return a == b
    shapes = [jax.tree.map(jnp.shape, nnx.to_pure_dict(nnx.state(m))) for m in (a, b)]
    return nnx.graphdef(a) == nnx.graphdef(b) and shapes[0] == shapes[1]


def _model_json(adapter: Adapter, task: str | None) -> dict[str, Any]:
    module = adapter.module
    framework = "nnx" if isinstance(adapter, NNXAdapter) else "linen"
    if task is not None:
        from q4lab.tasks import get_task

        if not _same_model(get_task(task).model, module):
            raise ValueError(
                f"task={task!r} is invalid: the model is not that task's model "
                f"(get_task({task!r}).model); allowed: the name of the task the model came "
                "from, or None"
            )
    cls = type(module)
    how = (
        "q4lab.load(dir)"
        if task is not None
        else f"q4lab.load(dir, model=<a {cls.__name__} instance"
        + (">)" if framework == "linen" else " of the same architecture>)")
    )
    return {
        "framework": framework,
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "settings": settings(module),
        "variables": isinstance(adapter, LinenAdapter) and adapter.variables,
        "task": task,
        "load": how,
    }


def save(
    qmodel: QuantizedModel,
    directory: str | os.PathLike,
    *,
    task: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``qmodel`` to ``directory`` (created if needed): ``weights-<digest>.safetensors``
    and ``q4lab.json`` (module docstring). Returns the directory.

    A directory that already holds a saved model is refused (FileExistsError) unless
    ``overwrite=True``, so that saving never replaces another model unasked; a save cut short
    leaves the model it replaces loadable.

    ``task``: the registered name of the q4lab task the model came from
    (``get_task(task).model``, checked), so that ``load(directory)`` rebuilds the module itself;
    otherwise `load` needs the module (``model=``). Raises a ValueError if a rule does not
    survive the JSON round trip (options that are not JSON values).
    """
    out = Path(directory)
    replaced = _saved_files(out)  # the model saved here before, if any
    held = sorted(p.name for p in replaced)
    if held and not overwrite:
        raise FileExistsError(
            f"{out} already holds a saved model ({', '.join(held)}); pass overwrite=True to "
            "replace it, or save to another directory"
        )
    arrays, entries = _collect(qmodel)
    if qmodel.recipe is not None:  # every rule, float ones too
        rules = dict(enumerate(qmodel.recipe.rules))
    else:
        rules = {p.rule_index: p.rule for p in qmodel.layers.values()}
    rules_json = []
    for i, rule in sorted(rules.items()):
        d = {"index": i, "text": rule.describe(), **_rule_to_json(rule)}
        try:
            back = _rule_from_json(json.loads(json.dumps(d)))
        except (TypeError, ValueError) as err:
            back = err
        if back != rule:
            raise ValueError(
                f"recipe rule {i} (pattern {rule.pattern!r}) cannot be saved: its options do not "
                f"survive JSON ({back!r} != {rule!r}); allowed: numbers, strings, bools, None, "
                "lists and mappings of those"
            )
        rules_json.append(d)
    layers = [
        _layer_to_json(p, get_at(qmodel.params, p.layer.key), qmodel.acts.get(path))
        for path, p in qmodel.layers.items()
    ]
    model = _model_json(qmodel.adapter, task)
    float_zeros = any(d["qtensor"]["spec"].get("zero_point") == "float" for d in layers)
    needs = [  # the oldest format version that reads the file right
        (model["variables"], 4),
        (float_zeros, 3),
        (any(d["qtensor"]["layout"] != "rows" for d in layers), 2),
    ]
    version = max((v for used, v in needs if used), default=1)
    config = {
        "format": FORMAT,
        "format_version": version,
        "model": model,
        "rules": rules_json,
        "recipe": None
        if qmodel.recipe is None
        else {"name": qmodel.recipe.name, "sequential": qmodel.recipe.sequential},
        "layers": layers,
        "tensors": entries,
        "ledger": qmodel.ledger().totals(),
    }
    # one key: safetensors writes its metadata from a hash map, so two keys come out in either
    # order and the same model would give files of different bytes
    meta = {"format": f"{FORMAT}/{version}/config-sha256:{_config_digest(config)}"}
    data = safetensors.numpy.save(arrays, metadata=meta)
    weights = f"weights-{hashlib.sha256(data).hexdigest()[:16]}.safetensors"
    config |= {"weights_file": weights, "weights_bytes": len(data), "manifest": manifest()}
    out.mkdir(parents=True, exist_ok=True)
    for stale in (*out.glob("weights*.safetensors*.tmp"), *out.glob(f"{CONFIG_FILE}*.tmp")):
        stale.unlink(missing_ok=True)  # the temporary files of a save that was killed
    replaced = replaced or [  # no model here: a save cut short left its weights
        p for p in out.iterdir() if _WEIGHTS_NAME.fullmatch(p.name) and p.name != WEIGHTS_FILE
    ]
    atomic_write_bytes(out / weights, data)
    atomic_write_bytes(out / CONFIG_FILE, (json.dumps(config, indent=1) + "\n").encode())
    _sync(out)  # the renames on disk: the new config is the one read from here on
    for old in replaced:
        if old.name not in (weights, CONFIG_FILE):
            old.unlink(missing_ok=True)
    return out


_WEIGHTS_NAME = re.compile(r"weights(-[0-9a-f]{16})?\.safetensors")  # what `save` writes


def _saved_files(directory: Path) -> list[Path]:
    """The files of the model saved in ``directory`` (none without its config): the config,
    the weights it names, and weights files only `save` names so (a save cut short left them)."""
    config = directory / CONFIG_FILE
    if not config.is_file():
        return []
    ours = [p for p in directory.iterdir() if _WEIGHTS_NAME.fullmatch(p.name)]
    try:
        named = directory / json.loads(config.read_text()).get("weights_file", WEIGHTS_FILE)
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError, TypeError):
        named = None
    return [config, *dict.fromkeys([*ours, *([named] if named and named.is_file() else [])])]


def _sync(directory: Path) -> None:
    """Flush ``directory``'s entries (the renames into it) to disk, where the OS allows."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _config_digest(config: dict[str, Any]) -> str:
    """The sha256 of what ``q4lab.json`` says about the model (not its manifest or file names)."""
    kept = {k: v for k, v in config.items() if k not in _NOT_HASHED}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------------------------ load


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
    if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
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
        from q4lab.tasks import get_task

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


__all__ = [
    "CONFIG_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "LoadedModel",
    "load",
    "save",
    "weights_path",
]
