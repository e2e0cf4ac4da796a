"""Experiment files: a Python file in ``experiments/`` that defines ``sweep = Sweep(...)``.

`load_experiment` runs the file and validates every point against the registered tasks,
quantizers and the layers of each task's model before anything runs: a bad field raises one
ValueError naming the file, the point and the field with its allowed values.
"""

from __future__ import annotations

import dataclasses
import functools
import runpy
import sys
import traceback
from pathlib import Path

import jax
from flax import nnx

from q4lab.adapters import adapt
from q4lab.layer_plan import plan
from q4lab.sweep.fields import (
    Point,
    config_hash,
    effective_hash,
    inert_fields,
    validate_point,
)
from q4lab.sweep.spec import Sweep


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A loaded, validated experiment: its sweep and the points with recipes and hashes."""

    path: Path
    sweep: Sweep
    points: tuple[Point, ...]
    hashes: tuple[str, ...]
    # points left out as another's twin: only fields that change nothing there differ
    merged: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.sweep.name


def describe_point(point: Point) -> str:
    """A short label of a point (progress bars, error messages)."""
    keys = ("task", "seed", "quantizer", "bits", "group_size", "act_bits")
    if point.get("act_bits", 16) != 16 and point.get("act_mode", "dynamic") != "dynamic":
        keys += ("act_mode",)
    if point.get("symmetric") is False:
        keys += ("symmetric",)
    if point.get("zero_point", "auto") != "auto":
        keys += ("zero_point",)
    if point.get("symmetric_grid", "max") != "max":
        keys += ("symmetric_grid",)
    if point.get("calib_padding", "include") != "include":
        keys += ("calib_padding",)
    if point.get("qat_steps"):
        keys += ("qat_steps", "qat_method")
    if point.get("bits_budget"):
        keys += ("bits_budget",)
    if point.get("rules"):
        keys += ("rules",)
    return ", ".join(f"{k}={point[k]!r}" for k in keys)


@functools.lru_cache(maxsize=16)
def _layers(task_name: str, seed: int):
    from q4lab.tasks import get_task

    task = get_task(task_name)
    sample = task.sample_input(seed)
    if isinstance(task.model, nnx.Module):  # an instance: its own state gives the layers
        adapter = adapt(task.model)
        return adapter.layers(adapter.params(), sample), task.calibration_count(seed)
    variables = jax.eval_shape(task.model.init, jax.random.key(0), sample)
    shapes = variables if set(variables) != {"params"} else variables["params"]
    return adapt(task.model, shapes).layers(shapes, sample), task.calibration_count(seed)


def validate(sweep: Sweep, where: str) -> list[Point]:
    """The sweep's points, every one checked against its task's model."""
    try:
        points = sweep.points()
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err.__cause__
    if not points:
        raise ValueError(f"{where}: the sweep has no points (is `where` dropping every one?)")
    for i, point in enumerate(points):
        try:
            recipe = validate_point(point)
            layers, calib = _layers(point["task"], point["seed"])
            plan(recipe, layers)
            if point["calib_size"] > calib:
                raise ValueError(
                    f"calib_size={point['calib_size']} exceeds the calibration split of "
                    f"{point['task']!r}; allowed: 0..{calib}"
                )
        except ValueError as err:
            raise ValueError(f"{where}: point {i} ({describe_point(point)}): {err}") from None
    return points


def search_last(*folders: str | Path) -> None:
    """Append each folder not yet on ``sys.path`` to its end: modules there import, and none
    hides an installed package of the same name."""
    for folder in folders:
        if str(folder) not in sys.path:
            sys.path.append(str(folder))


def run_experiment_file(path: str | Path, cwd: str | Path | None = None) -> dict:
    """Run an experiment file's Python and return its namespace (errors name the file's line).

    The file's folder and the current folder (``cwd``, default this process's) go last on
    ``sys.path``, so the file can import a module beside it or from where q4lab runs (a
    quantizer of one's own registers when its module is imported). Last, not first as
    ``python file.py`` puts its folder: ``experiments/mnist1d.py`` would hide the ``mnist1d``
    package.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"experiment file {str(path)!r} does not exist")
    search_last(path.resolve().parent, Path(cwd or Path.cwd()).resolve())
    try:
        return runpy.run_path(str(path), run_name="__experiment__")
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    except SyntaxError as err:
        raise ValueError(f"{path}, line {err.lineno}: {err.msg}") from None
    except Exception as err:  # the file's own Python failed: say where in it, not in q4lab
        frames = traceback.extract_tb(err.__traceback__)
        lines = [f.lineno for f in frames if Path(f.filename).resolve() == path.resolve()]
        at = f", line {lines[-1]}" if lines else ""
        raise ValueError(f"{path}{at}: {type(err).__name__}: {err}") from err


def same_as(kept: Point, merged: Point) -> str:
    """The fields in which ``kept`` differs from ``merged``, as ``name=value``."""
    return ", ".join(f"{k}={v!r}" for k, v in kept.items() if merged.get(k) != v)


def load_experiment(path: str | Path) -> Experiment:
    """Run an experiment file (`run_experiment_file`), take its ``sweep`` and validate it
    (nothing is run or written)."""
    path = Path(path)
    namespace = run_experiment_file(path)
    sweep = namespace.get("sweep")
    if not isinstance(sweep, Sweep):
        raise ValueError(f"{path}: defines no `sweep = Sweep(...)` (found {type(sweep).__name__})")
    points = validate(sweep, str(path))
    hashes = [config_hash(p) for p in points]
    first: dict[str, int] = {}
    for i, digest in enumerate(hashes):
        if (j := first.setdefault(digest, i)) != i:
            raise ValueError(
                f"{path}: the sweep repeats points (identical configurations): point {i} is "
                f"point {j} ({describe_point(points[j])})"
            )
    kept, seen, merged = [], {}, []
    for point, digest in zip(points, hashes, strict=True):
        same = seen.setdefault(effective_hash(point), point)
        if same is point:
            kept.append((point, digest))
        else:  # one configuration twice: it runs once (a table would count its seeds twice)
            fields = ", ".join(f"{f}={point[f]!r}" for f in inert_fields(point))
            kept_as = same_as(same, point)
            merged.append(f"{fields} of {describe_point(point)}: runs as the one with {kept_as}")
    points, hashes = [p for p, _ in kept], [h for _, h in kept]
    return Experiment(path, sweep, tuple(points), tuple(hashes), tuple(merged))
