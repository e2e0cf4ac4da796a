"""`Sweep`: the points of an experiment (tasks x recipe fields x seeds), validated up front.

A point is a flat dict of the fields in `q4lab.sweep.fields.FIELDS` (the codec: `recipe_of`
turns a point into a `Recipe`, `config_hash` names it, so a results table knows which points it
already holds).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from q4lab.sweep.fields import Point, check_field_names, with_defaults


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
        if not isinstance(self.name, str) or not re.fullmatch(
            r"[A-Za-z0-9_][A-Za-z0-9_.-]*", self.name
        ):
            raise ValueError(
                f"Sweep name={self.name!r} is invalid; allowed: letters, digits, '_', '-' and "
                "'.' (not first), e.g. 'w4a4': it names the results folder"
            )
        where = f"Sweep {self.name!r}"
        check_field_names(list(self.grid), f"{where} grid")
        for i, group in enumerate(self.zipped):
            check_field_names(list(group), f"{where} zipped[{i}]")
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

    def _keeps(self, point: Point) -> bool:
        try:
            return bool(self.where(point))
        except Exception as err:  # e.g. a misspelled field: KeyError('bit')
            raise ValueError(
                f"Sweep {self.name!r}: where(point) raised {type(err).__name__}: {err}; a point "
                f"has the fields {', '.join(point)}"
            ) from err

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
            if self.where is None or self._keeps(full):
                points.append(full)
        return points
