"""Saving a `QuantizedModel` in the packed format (`q4lab.export`): its arrays collected by
tensor name, its config, and the two-file commit: a content-named weights file, then
``q4lab.json``, so that a save cut short leaves the model it replaces whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from flax import nnx

from q4lab.adapters import Adapter, LinenAdapter, NNXAdapter, get_at
from q4lab.core import QTensor
from q4lab.export.schema import (
    _ACT_ROLES,
    CONFIG_FILE,
    FORMAT,
    WEIGHTS_FILE,
    _config_digest,
    _is_file_name,
    _key_of,
    _layer_to_json,
    _name,
    _rule_from_json,
    _rule_to_json,
)
from q4lab.files import atomic_write_bytes
from q4lab.manifest import manifest
from q4lab.model_settings import settings
from q4lab.quantized_model import QuantizedModel

# dtypes safetensors' numpy API reads back as themselves; others are stored as unsigned bits
_INTS = (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64)
_NATIVE = {np.dtype(t) for t in (np.bool_, *_INTS, np.float16, np.float32, np.float64)}


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
    and ``q4lab.json`` (`q4lab.export`). Returns the directory.

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
        name = json.loads(config.read_text()).get("weights_file", WEIGHTS_FILE)
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        name = None
    named = directory / name if _is_file_name(name) else None  # not one leaving the directory
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
