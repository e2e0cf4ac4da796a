"""Per-layer output error of quantized weights on the calibration data of a task.

For a layer with inputs ``X[n, K]`` and weight ``W[K, N]`` the error of ``W_hat`` is
``||X (W - W_hat)||^2 / n`` (`q4lab.quantizers.output_error`), measured on the float model's
inputs so that every recipe is judged on the same data; ``relative_error`` divides by
``||X W||^2 / n``. This is the loss GPTQ minimises, and the raw material of sensitivity maps.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

from q4lab.adapters import adapt, get_at
from q4lab.calibrate import calibrate
from q4lab.core import QTensor, to_matrix
from q4lab.core.qtensor import dequantize_matrix
from q4lab.quantize_model import quantize_model
from q4lab.quantizers import output_error
from q4lab.recipe import Recipe
from q4lab.tasks import Task, get_task


def layer_errors(task: Task | str, recipes: Sequence[Recipe], seed: int = 0) -> list[dict]:
    """One row per (recipe, quantized layer): output error on the task's calibration split."""
    task = get_task(task) if isinstance(task, str) else task
    params = task.baseline(seed)
    batches = task.calibration(seed)
    sample = task.sample_input(seed)
    adapter = adapt(task.model)
    layers = adapter.layers(params, sample)
    hessians = calibrate(adapter, params, {layer.path: {"hessian"} for layer in layers}, batches)
    rows = []
    for recipe in recipes:
        qmodel = quantize_model(
            task.model, params, recipe, sample_input=sample, calibration=batches
        )
        fields = recipe.fields()
        for path, p in qmodel.layers.items():
            qt: QTensor = get_at(qmodel.params, p.layer.key)
            w2d = to_matrix(jnp.asarray(get_at(params, p.layer.key), jnp.float32), qt.in_axes)
            h = hessians[path]["hessian"]
            err = float(output_error(w2d, dequantize_matrix(qt), h))
            rows.append(
                {
                    "task": task.name,
                    "seed": seed,
                    "layer": path,
                    "k": qt.k,
                    "n": qt.n,
                    **{key: fields[key] for key in ("recipe", "quantizer", "bits", "group_size")},
                    "output_error": err,
                    "relative_error": err / float(output_error(w2d, 0 * w2d, h)),
                }
            )
    return rows
