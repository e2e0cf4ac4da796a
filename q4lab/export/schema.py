"""The packed format's names and its JSON: the file names, format version and tensor roles of a
saved model (`q4lab.export`), and the conversion of rules, specs and layers to and from the JSON
of ``q4lab.json``. Saving (`q4lab.export.saving`) and loading (`q4lab.export.loading`) share it,
so that what one writes the other reads back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from q4lab.core import QTensor, QuantSpec
from q4lab.layer_plan import LayerPlan
from q4lab.layer_quant import ActState
from q4lab.recipe import ActSpec, Rule, TransformSpec

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


# ---------------------------------------------------------------------------- tensor names


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


def _is_file_name(name: Any) -> bool:
    """Whether a config's ``weights_file`` names a file in the model's own directory (a plain
    name: no folder, not ``.`` or ``..``), the only file loading reads or saving replaces."""
    return isinstance(name, str) and Path(name).name == name and name not in ("", ".", "..")


def _config_digest(config: dict[str, Any]) -> str:
    """The sha256 of what ``q4lab.json`` says about the model (not its manifest or file names)."""
    kept = {k: v for k, v in config.items() if k not in _NOT_HASHED}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()
