"""`evaluate(task, recipe, seed)`: quantize a task's float baseline, measure it, one flat record."""

from __future__ import annotations

import functools
import time

import jax
import numpy as np

from q4lab.manifest import manifest
from q4lab.quantize_model import quantize_model
from q4lab.recipe import Recipe
from q4lab.tasks import Task, get_task


@functools.partial(jax.jit, static_argnums=0)
def _float_forward(model, params, x):
    return model.apply({"params": params}, x)


def evaluate(
    task: Task | str,
    recipe: Recipe,
    seed: int = 0,
    *,
    calib_size: int | None = None,
    progress: bool | None = False,
) -> dict[str, object]:
    """The task's metrics of ``recipe`` applied to its float baseline for ``seed``.

    The record holds: task, seed, the recipe's fields, the task's metrics (real int4 forward)
    and their float values (``fp_<name>``); ``metric`` names the headline one, repeated as
    ``score`` / ``fp_score`` / ``delta_score`` so tables of different tasks line up; agreement of
    the real and fake-quant outputs on one evaluation batch (below); the size ledger totals,
    timings and the manifest.

    Real and fake paths agree per layer to float rounding (~1e-7). End to end, with quantized
    activations a one-ulp difference upstream can move an activation code across a rounding
    boundary, so a few logits may differ by one activation step: ``fake_rel_diff`` is the median
    over examples of the max relative output difference, ``fake_rel_diff_max`` the worst
    example, and ``fake_agreement`` the fraction of identical argmax outputs. ``progress``: a bar
    over the layers being quantized (None: only on a terminal).
    """
    task = get_task(task) if isinstance(task, str) else task
    params = task.baseline(seed)
    calibration = task.calibration(seed, calib_size)
    start = time.perf_counter()
    qmodel = quantize_model(
        task.model,
        params,
        recipe,
        sample_input=task.sample_input(seed),
        calibration=calibration,
        progress=progress,
    )
    quantize_seconds = time.perf_counter() - start

    start = time.perf_counter()
    metrics = task.metrics(qmodel.apply, lambda x: _float_forward(task.model, params, x), seed)
    eval_seconds = time.perf_counter() - start
    score, fp_score = metrics[task.metric], metrics[f"fp_{task.metric}"]

    x = task.check_input(seed)
    real = np.asarray(qmodel.apply(x)).reshape(len(x), -1)
    fake = np.asarray(qmodel.apply(x, fake=True)).reshape(len(x), -1)
    per_example = np.max(np.abs(real - fake), axis=-1) / np.max(np.abs(fake), axis=-1)
    return {
        "task": task.name,
        "seed": seed,
        **recipe.fields(),
        "calib_examples": sum(len(b) for b in calibration),
        **metrics,
        "metric": task.metric,
        "higher_is_better": task.higher_is_better,
        "score": score,
        "fp_score": fp_score,
        "delta_score": score - fp_score,
        "fake_rel_diff": float(np.median(per_example)),
        "fake_rel_diff_max": float(np.max(per_example)),
        "fake_agreement": float(np.mean(real.argmax(-1) == fake.argmax(-1))),
        **qmodel.ledger().totals(),
        "quantize_seconds": quantize_seconds,
        "eval_seconds": eval_seconds,
        **manifest(),
    }
