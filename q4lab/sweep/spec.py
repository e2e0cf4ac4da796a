"""`Sweep`: the points of an experiment (tasks x recipe fields x seeds), validated up front.

A point is a flat dict of the fields in `FIELDS`; missing fields take their defaults. `recipe_of`
turns a point into a `Recipe` (one rule for every layer) and `config_hash` names it, so a
results table knows which points it already holds.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from q4lab.core import QuantSpec
from q4lab.qat import QATConfig
from q4lab.recipe import ActSpec, Recipe, TransformSpec

Point = dict[str, Any]

# field -> (default, what it means); the order is the column order of a point
FIELDS: dict[str, tuple[Any, str]] = {
    "task": (None, "a registered task name (required)"),
    "seed": (0, "the float baseline's and the data split's seed"),
    "quantizer": ("minmax", "a registered quantizer name"),
    "options": ({}, "the quantizer's options, e.g. {'act_order': True}"),
    "bits": (4, "weight bits, 2..8"),
    "symmetric": (True, "signed weight codes, or unsigned with a zero point"),
    "group_size": (0, "weight group size along the input axis; 0 = per-channel"),
    "scale_dtype": ("float16", "dtype of the stored scales"),
    "act_bits": (16, "activation bits; 16 keeps activations in float"),
    "act_mode": ("dynamic", "activation ranges at run time or from calibration: dynamic, static"),
    "act_symmetric": (True, "signed activation codes, or with a zero point"),
    "act_clipping": ("minmax", "the clipping quantizer choosing activation ranges"),
    "act_clipping_options": ({}, "its options, e.g. {'percentile': 99.9}"),
    "rotation": ("none", "input rotation folded into each dense layer: none, hadamard"),
    "smooth_alpha": (0.0, "SmoothQuant's migration strength in (0, 1] (dense layers); 0 = off"),
    "sequential": (True, "calibrate each layer with the earlier layers already quantized"),
    "calib_size": (0, "calibration examples to use; 0 = the task's whole calibration split"),
    "qat_steps": (0, "quantization-aware training steps after quantizing; 0 = post-training only"),
    "qat_lr": (1e-4, "peak learning rate of quantization-aware training (AdamW, cosine)"),
    "qat_method": ("lsq", "ste (steps frozen) or lsq (steps learned, Esser et al. 2020)"),
    "qat_loss": ("task", "task (the task's loss, with labels) or distill (to the float model)"),
    "qat_batch_size": (64, "training batch size of quantization-aware training"),
}
QAT_FIELDS = tuple(name for name in FIELDS if name.startswith("qat_"))
# fields added after tables were published: left out of the hash at their default
LATE_FIELDS = ("rotation", "smooth_alpha")


def with_defaults(point: Point) -> Point:
    """Every field of `FIELDS`, in order; missing ones take their defaults."""
    return {name: point.get(name, default) for name, (default, _) in FIELDS.items()}


def _canonical(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def config_hash(point: Point) -> str:
    """A stable 16-hex-digit name of a point's full configuration (defaults included). The
    training fields of a post-training point (``qat_steps=0``) and the `LATE_FIELDS` at their
    default are left out: they change nothing, and the tables published before they existed
    keep their names."""
    full = with_defaults(point)
    if not full["qat_steps"]:
        full = {k: v for k, v in full.items() if k not in QAT_FIELDS}
    full = {k: v for k, v in full.items() if k not in LATE_FIELDS or v != FIELDS[k][0]}
    text = json.dumps(_canonical(full), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def recipe_of(point: Point) -> Recipe:
    """The recipe of a point: one rule, every quantizable layer."""
    p = with_defaults(point)
    weight = QuantSpec(
        bits=p["bits"],
        symmetric=p["symmetric"],
        group_size=p["group_size"] or None,
        scale_dtype=p["scale_dtype"],
    )
    act = None
    if p["act_bits"] != 16:
        act = ActSpec(
            bits=p["act_bits"],
            mode=p["act_mode"],
            granularity="per_row" if p["act_mode"] == "dynamic" else "per_tensor",
            symmetric=p["act_symmetric"],
            clipping=p["act_clipping"],
            clipping_options=p["act_clipping_options"],
        )
    transform = None
    if p["rotation"] != "none" or p["smooth_alpha"]:
        transform = TransformSpec(
            rotation=p["rotation"], smooth_alpha=p["smooth_alpha"] or None, seed=p["seed"]
        )
    return Recipe.single(
        quantizer=p["quantizer"],
        options=p["options"],
        weight=weight,
        act=act,
        transform=transform,
        sequential=p["sequential"],
    )


def qat_of(point: Point) -> QATConfig | None:
    """The quantization-aware training of a point, or None (``qat_steps=0``)."""
    p = with_defaults(point)
    if p["qat_steps"] == 0:
        return None
    return QATConfig(
        steps=p["qat_steps"],
        lr=p["qat_lr"],
        method=p["qat_method"],
        loss=p["qat_loss"],
        batch_size=p["qat_batch_size"],
    )


def _check_field_names(names: Sequence[str], where: str) -> None:
    for name in names:
        if name not in FIELDS:
            close = difflib.get_close_matches(name, FIELDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{where}: unknown field {name!r}{hint}; allowed: {', '.join(FIELDS)}")


@dataclasses.dataclass(frozen=True)
class Sweep:
    """The grid of an experiment.

    ``grid``: field -> values; every combination is a point. ``zipped``: groups of fields whose
    value lists have equal length and vary together (e.g. ``{"bits": [8, 4], "group_size":
    [0, 128]}``), crossed with the grid. ``where``: a predicate that drops invalid points.
    """

    name: str
    grid: Mapping[str, Sequence[Any]]
    zipped: Sequence[Mapping[str, Sequence[Any]]] = ()
    where: Callable[[Point], bool] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        where = f"Sweep {self.name!r}"
        _check_field_names(list(self.grid), f"{where} grid")
        for i, group in enumerate(self.zipped):
            _check_field_names(list(group), f"{where} zipped[{i}]")
            lengths = {name: len(values) for name, values in group.items()}
            if len(set(lengths.values())) > 1:
                raise ValueError(f"{where} zipped[{i}]: value lists differ in length: {lengths}")
        for name, values in self.grid.items():
            if isinstance(values, str) or not isinstance(values, Sequence) or not values:
                raise ValueError(
                    f"{where} grid field {name!r}={values!r} is invalid; allowed: a non-empty "
                    "list of values"
                )
        axes = list(self.grid) + [name for group in self.zipped for name in group]
        repeated = sorted({name for name in axes if axes.count(name) > 1})
        if repeated:
            raise ValueError(f"{where}: field(s) {repeated} appear in more than one axis")
        if "task" not in axes:
            raise ValueError(f"{where}: no 'task' field; allowed tasks: see `q4lab ls`")

    def points(self) -> list[Point]:
        """Every point of the grid (zipped groups crossed in), in order, after ``where``."""
        axes: list[list[dict[str, Any]]] = [
            [{name: v} for v in values] for name, values in self.grid.items()
        ]
        for group in self.zipped:
            names = list(group)
            axes.append(
                [dict(zip(names, vals, strict=True)) for vals in zip(*group.values(), strict=True)]
            )
        points = []
        for combo in itertools.product(*axes):
            point: Point = {}
            for part in combo:
                point.update(part)
            full = with_defaults(point)
            if self.where is None or self.where(full):
                points.append(full)
        return points


def validate_point(point: Point) -> Recipe:
    """Check a point's fields (task, calibration size, recipe); return its recipe."""
    from q4lab.tasks import available_tasks

    if point["task"] not in available_tasks():
        raise ValueError(
            f"task={point['task']!r} is unknown; allowed: {', '.join(available_tasks())}"
        )
    for name in ("seed", "calib_size"):
        value = point[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}={value!r} is invalid; allowed: an int >= 0")
    steps = point["qat_steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"qat_steps={steps!r} is invalid; allowed: an int >= 0 (0: no training)")
    if (qat := qat_of(point)) is not None:
        from q4lab.tasks import get_task

        get_task(point["task"]).qat_loss(qat.loss)  # e.g. minilm has no labels: distill only
    for name in ("options", "act_clipping_options"):
        if not isinstance(point[name], Mapping):
            raise ValueError(f"{name}={point[name]!r} is invalid; allowed: a dict")
    return recipe_of(point)
