"""`evaluate(task, recipe, seed)`: quantize a task's float baseline, measure it, one flat record."""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from q4lab.manifest import manifest
from q4lab.quantize_model import quantize_model
from q4lab.recipe import Recipe
from q4lab.tasks import Task, get_task


@functools.partial(jax.jit, static_argnums=0)
def _float_forward(model, params, x):
    return model.apply({"params": params}, x)


def evaluate(
    task: Task | str, recipe: Recipe, seed: int = 0, *, calib_size: int | None = None
) -> dict[str, object]:
    """Accuracy of ``recipe`` applied to the task's float baseline for ``seed``.

    The record holds: task, seed, the recipe's fields, ``accuracy`` (real int4 forward) and
    ``fp_accuracy``, agreement of the real and fake-quant logits on the test set (below), the
    size ledger totals, timings and the manifest.

    Real and fake paths agree per layer to float rounding (~1e-7). End to end, with quantized
    activations a one-ulp difference upstream can move an activation code across a rounding
    boundary, so a few logits may differ by one activation step: ``fake_rel_diff`` is the median
    over test examples of the max relative logit difference, ``fake_rel_diff_max`` the worst
    example, and ``fake_agreement`` the fraction of identical predictions.
    """
    task = get_task(task) if isinstance(task, str) else task
    params = task.baseline(seed)
    data = task.splits(seed)
    start = time.perf_counter()
    qmodel = quantize_model(
        task.model,
        params,
        recipe,
        sample_input=task.sample_input(seed),
        calibration=task.calibration(seed, calib_size),
    )
    quantize_seconds = time.perf_counter() - start

    fp_accuracy = task.accuracy(lambda x: _float_forward(task.model, params, x), seed)
    start = time.perf_counter()
    accuracy = task.accuracy(qmodel.apply, seed)
    eval_seconds = time.perf_counter() - start

    x_test = jnp.asarray(data.x_test[: task.eval_batch_size])
    real = np.asarray(qmodel.apply(x_test))
    fake = np.asarray(qmodel.apply(x_test, fake=True))
    per_example = np.max(np.abs(real - fake), axis=-1) / np.max(np.abs(fake), axis=-1)
    return {
        "task": task.name,
        "seed": seed,
        **recipe.fields(),
        "calib_examples": sum(len(b) for b in task.calibration(seed, calib_size)),
        "accuracy": accuracy,
        "fp_accuracy": fp_accuracy,
        "delta_accuracy": accuracy - fp_accuracy,
        "fake_rel_diff": float(np.median(per_example)),
        "fake_rel_diff_max": float(np.max(per_example)),
        "fake_agreement": float(np.mean(real.argmax(-1) == fake.argmax(-1))),
        **qmodel.ledger().totals(),
        "quantize_seconds": quantize_seconds,
        "eval_seconds": eval_seconds,
        **manifest(),
    }
