"""Run an experiment: every point not yet in its results table, one row each, resumable.

Executors: "local" (in this process, one point after another: compiled functions are reused
across points of equal shapes) and "ray" (points become Ray tasks on a local or remote cluster;
only this driver writes rows). Each finished row is appended atomically before the next is
awaited, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from q4lab.sweep.experiment import (
    Experiment,
    describe_point,
    run_experiment_file,
    search_last,
)
from q4lab.sweep.fields import Point, config_hash, qat_of, recipe_of
from q4lab.sweep.store import ResultsStore
from q4lab.sweep.tracking import WandbLogger, WandbSettings

EXECUTORS = ("local", "ray")


def evaluate_point(point: Point, progress: bool | None = False) -> dict[str, Any]:
    """The results record of one point (runs wherever the executor puts it); ``progress``: a
    bar over the layers being quantized (None: only on a terminal)."""
    from q4lab.evaluate import evaluate

    allocation = {"allocation": "rules" if point["rules"] else "uniform"}
    if point["bits_budget"]:  # mixed precision: the allocation becomes the point's rules
        from q4lab.sweep.mixed import allocated_point

        point, allocation = allocated_point(point, progress)
    record = evaluate(
        point["task"],
        recipe_of(point),
        point["seed"],
        calib_size=point["calib_size"] or None,
        calib_padding=point["calib_padding"],
        qat=qat_of(point),
        progress=progress,
    )
    return record | allocation


def point_row(point: Point, record: dict, experiment: str = "") -> dict:
    """The results row of ``point`` evaluated to ``record`` (`evaluate_point`): what `q4lab run`
    appends to a table and `q4lab quantize` prints. Dict and list fields are stored as JSON."""
    fields = {
        k: json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v
        for k, v in point.items()
    }
    return {"experiment": experiment, "config_hash": config_hash(point), **fields, **record}


FAILED_POINT = "the point that failed: "  # the note `run_experiment` adds to its error


def _local(points: list[Point], bar: tqdm) -> Iterator[tuple[int, dict]]:
    for i, point in enumerate(points):
        bar.set_postfix_str(describe_point(point), refresh=True)
        try:
            record = evaluate_point(point)
        except Exception as err:
            err.add_note(FAILED_POINT + describe_point(point))
            raise
        yield i, record


@contextlib.contextmanager
def local_ray_environment() -> Iterator[None]:
    """Environment for starting a local Ray that never reaches outside this machine.

    Ray probes cloud metadata endpoints (169.254.169.254, metadata.google.internal) at start-up
    unless usage stats are off *and* ``~/ray_bootstrap_config.yaml`` names a local provider; so
    HOME points at a private directory holding that file while Ray's processes start. The
    baseline cache is pinned by path first, so workers still find it.
    """
    from q4lab.tasks.base import cache_dir

    saved = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="q4lab-ray-home-") as home:
        Path(home, "ray_bootstrap_config.yaml").write_text("provider:\n  type: local\n")
        os.environ.update(
            {
                "Q4LAB_CACHE": str(cache_dir()),
                "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_AUTH_MODE": "disabled",
                "HOME": home,
            }
        )
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)


_SETUPS_RUN: set[tuple] = set()  # what a Ray worker has imported and run


def _evaluate_after_setup(
    point: Point, modules: tuple[tuple[str, str], ...], path: str, cwd: str
) -> dict[str, Any]:
    """`evaluate_point` in a Ray worker that first registers the quantizers of one's own as
    this process did, once: imports their ``modules`` (name, folder; by ``q4lab --plugin`` or
    the experiment file) and runs the experiment file (classes it defines itself)."""
    setup = (modules, path, cwd)
    if setup not in _SETUPS_RUN:
        for name, folder in modules:
            search_last(folder)
            importlib.import_module(name)
        run_experiment_file(path, cwd)
        _SETUPS_RUN.add(setup)
    return evaluate_point(point)


def _own_quantizer_modules() -> tuple[tuple[str, str], ...] | None:
    """None when every registered quantizer is q4lab's; else the importable modules (name, the
    folder to find it in) that define the others (none for classes of an experiment file)."""
    from q4lab.quantizers import available, quantizer_class

    names = {quantizer_class(n).__module__ for n in available()}
    own = sorted(m for m in names if not m.startswith("q4lab."))
    if not own:
        return None
    files = {m: getattr(sys.modules.get(m), "__file__", None) for m in own}
    return tuple((m, str(_import_root(m, f))) for m, f in files.items() if f)


def _import_root(module: str, file: str) -> Path:
    """The folder on ``sys.path`` from which ``module``, held in ``file``, imports."""
    depth = module.count(".") + (Path(file).name == "__init__.py")
    return Path(file).resolve().parents[depth]


def _ray(
    points: list[Point], bar: tqdm, address: str | None, experiment: Path
) -> Iterator[tuple[int, dict]]:
    import ray

    with contextlib.ExitStack() as stack:
        if address is None:
            stack.enter_context(local_ray_environment())
            ray.init(
                num_cpus=os.cpu_count(),
                include_dashboard=False,
                object_store_memory=256 * 2**20,
                log_to_driver=False,
            )
        else:
            ray.init(address=address, log_to_driver=False)
        stack.callback(ray.shutdown)
        modules = _own_quantizer_modules()
        if modules is not None:  # the workers register them as this process did
            remote = ray.remote(num_cpus=1)(_evaluate_after_setup)
            setup = (modules, str(experiment.resolve()), str(Path.cwd()))
            pending = {remote.remote(p, *setup): i for i, p in enumerate(points)}
        else:
            remote = ray.remote(num_cpus=1)(evaluate_point)
            pending = {remote.remote(p): i for i, p in enumerate(points)}
        while pending:
            bar.set_postfix_str(f"{len(pending)} running or queued on Ray", refresh=True)
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(ref)
            try:
                record = ray.get(ref)
            except Exception as err:
                err.add_note(FAILED_POINT + describe_point(points[i]))
                raise
            yield i, record


def changed_quantizers(experiment: Experiment, results_dir: str | Path = "results") -> list[str]:
    """Each quantizer whose rows in ``results_dir/<name>/runs.parquet`` were made by other code
    or defaults than it has now (`quantizer_identity`): ``"<then> (n rows) -> <now>"``. Such
    rows are kept as they are (their points are done); the caller says so."""
    from q4lab.quantizers import quantizer_identity

    table = ResultsStore(Path(results_dir) / experiment.name).read()
    if "quantizer_identity" not in table:  # rows from before it was recorded
        return []
    recorded = dict(zip(table["config_hash"], table["quantizer_identity"], strict=True))
    changed: dict[tuple[str, str], int] = {}
    for point, h in zip(experiment.points, experiment.hashes, strict=True):
        then = recorded.get(h)
        if not isinstance(then, str) or point.get("bits_budget"):  # mixed: per-layer quantizers
            continue
        now = quantizer_identity(recipe_of(point).base.build_quantizer())
        if then != now:
            changed[then, now] = changed.get((then, now), 0) + 1
    return [f"{then} ({n} row{'s' * (n > 1)}) -> {now}" for (then, now), n in changed.items()]


def missing_points(experiment: Experiment, results_dir: str | Path = "results") -> int:
    """How many points of ``experiment`` are not yet in ``results_dir/<name>/runs.parquet``."""
    done = ResultsStore(Path(results_dir) / experiment.name).done()
    return sum(h not in done for h in experiment.hashes)


def run_experiment(
    experiment: Experiment,
    results_dir: str | Path = "results",
    *,
    executor: str = "local",
    address: str | None = None,
    wandb: WandbSettings | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Run the points of ``experiment`` missing from ``results_dir/<name>/runs.parquet``.

    Returns the whole table. A point that raises stops the sweep after the rows finished so far
    are written, its error noted with the point (`FAILED_POINT`); rerunning resumes from there.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor={executor!r} is invalid; allowed: {', '.join(EXECUTORS)}")
    directory = Path(results_dir) / experiment.name
    store = ResultsStore(directory)
    logger = WandbLogger(wandb or WandbSettings(), experiment.name, directory)
    with store.writer(), _interrupt_between_points() as interrupted:
        store.discard_partial_writes()
        logger.finish_pending(store.read)  # a row saved, then interrupted before its log
        done = store.done()
        todo = [
            (p, h)
            for p, h in zip(experiment.points, experiment.hashes, strict=True)
            if h not in done
        ]
        total = len(experiment.points)
        points = [p for p, _ in todo]
        with tqdm(
            total=total,
            initial=total - len(todo),
            desc=experiment.name,
            unit="point",
            disable=not progress,
            dynamic_ncols=True,
        ) as bar:
            if executor == "local":
                results = _local(points, bar)
            else:
                results = _ray(points, bar, address, experiment.path)
            for i, record in results:
                layers = record.pop("layers", None)
                row = point_row(todo[i][0], record, experiment.name)
                with logger.pending(row["config_hash"]):
                    store.append(row, layers)
                    logger.log(row)
                bar.update(1)
                interrupted()
    return store.read()


@contextlib.contextmanager
def _interrupt_between_points() -> Iterator[Callable[[], None]]:
    """Ctrl-C stops the sweep: SIGINT raises KeyboardInterrupt where it lands, as it does by
    default, and also sets a flag that the returned check raises on after each saved row. A
    KeyboardInterrupt raised inside a callback that swallows exceptions (JAX's garbage
    collection hook) was lost, and the sweep ran on to its end."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return
    pressed = threading.Event()

    def on_sigint(signum, frame):
        pressed.set()
        raise KeyboardInterrupt

    def check() -> None:
        if pressed.is_set():
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield check
    finally:
        signal.signal(signal.SIGINT, previous)
