"""How much each layer's quantization costs: its output error on the calibration data
(`layer_errors`) and the model's distillation loss to float with only that layer quantized
(`layer_sensitivity`), the measured losses a mixed-precision allocator (`q4lab.allocate`)
spends a bit budget on.

For a layer with inputs ``X[n, K]`` and weight ``W[K, N]`` the error of ``W_hat`` is
``||X (W - W_hat)||^2 / n`` (`q4lab.quantizers.output_error`), measured on the float model's
inputs so that every recipe is judged on the same data; ``relative_error`` divides by
``||X W||^2 / n``. This is the loss GPTQ minimises, and the raw material of sensitivity maps.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from q4lab.adapters import adapt, example_count, get_at, set_at
from q4lab.calibrate import calibrate
from q4lab.core import QTensor, stored_bytes, to_matrix
from q4lab.evaluate import float_forward
from q4lab.layer_plan import plan
from q4lab.layer_quant import unfolded_weight
from q4lab.quantize_model import quantize_model
from q4lab.quantizers import output_error
from q4lab.recipe import Recipe, Rule
from q4lab.tasks import Task, get_task


def layer_errors(
    task: Task | str, recipes: Sequence[Recipe], seed: int = 0, *, calib_padding: str = "include"
) -> list[dict]:
    """One row per (recipe, quantized layer): output error on the task's calibration split,
    on the rows that hold data (a task's `Task.row_mask`: padding changes no output), so that
    every recipe is judged on the same rows; ``calib_padding`` decides only what the recipes'
    quantizers calibrate on. ``recipe_index`` tells apart recipes that share a quantizer, bits
    and group size."""
    task = get_task(task) if isinstance(task, str) else task
    row_mask = task.calibration_row_mask(calib_padding)
    params = task.baseline(seed)
    batches = task.calibration(seed)
    sample = task.sample_input(seed)
    adapter = adapt(task.model, params)
    layers = adapter.layers(params, sample)
    needs = {layer.path: {"hessian"} for layer in layers}
    hessians = calibrate(adapter, params, needs, batches, row_mask=task.row_mask())
    rows = []
    for index, recipe in enumerate(recipes):
        qmodel = quantize_model(
            task.model,
            params,
            recipe,
            sample_input=sample,
            calibration=batches,
            row_mask=row_mask,
        )
        fields = recipe.fields()
        for path, p in qmodel.layers.items():
            qt: QTensor = get_at(qmodel.params, p.layer.key)
            w2d = to_matrix(jnp.asarray(get_at(params, p.layer.key), jnp.float32), qt.in_axes)
            h = hessians[path]["hessian"]
            w_hat = to_matrix(unfolded_weight(qt), qt.in_axes)  # in w2d's basis, transformed or not
            err = float(output_error(w2d, w_hat, h))
            rows.append(
                {
                    "task": task.name,
                    "seed": seed,
                    "layer": path,
                    "k": qt.k,
                    "n": qt.n,
                    "recipe_index": index,
                    **{key: fields[key] for key in ("recipe", "quantizer", "bits", "group_size")},
                    "output_error": err,
                    "relative_error": err / float(output_error(w2d, 0 * w2d, h)),
                }
            )
    return rows


def _fitting(recipe: Recipe, layers: list) -> Recipe:
    """``recipe`` with the layers it cannot quantize kept float (a candidate's group size that
    does not divide a layer's input): they get no row at that candidate, and an allocation
    gives them another (`q4lab.allocate`)."""
    unfit = []
    for layer in layers:
        try:
            plan(recipe, [layer])
        except ValueError:
            unfit.append(layer.path)
    if not unfit:
        return recipe
    pattern = "|".join(re.escape(path) for path in unfit)
    return dataclasses.replace(recipe, rules=(Rule.float(pattern), *recipe.rules))


def layer_sensitivity(
    task: Task | str,
    candidates: Mapping[str, Recipe],
    seed: int = 0,
    *,
    calib_size: int | None = None,
    calib_padding: str = "include",
    progress: bool | None = False,
) -> list[dict]:
    """One row per (candidate, quantized layer): how far the model's outputs move from the float
    model's when only that layer's weight is quantized by the candidate recipe.

    Each candidate (a label -> a recipe for every layer, e.g. ``{"W3": ..., "W4": ...}``)
    quantizes the model once, from the float model's inputs (``sequential=False``, so a layer's
    weights do not depend on the others'); then each layer's dequantized weight alone replaces
    the float one and the float forward runs on the calibration split (one compile for all
    probes). ``loss`` is the task's distillation loss to the float outputs there (KL of the
    output distributions for classifiers and the byte LM, ``1 - cos`` for MiniLM; the loss of
    ``qat_loss="distill"``), averaged over calibration inputs: held-out data, never the test
    split the recipes are scored on. Activations stay float: this is the weights' sensitivity.
    ``stored_bytes``: the layer's bytes in the ledger at that candidate. ``calib_padding``: as
    `q4lab.evaluate.evaluate` (the quantization's statistics; the loss is the task's own,
    which a padded position never enters). ``progress``: a bar over layers (None: only on a
    terminal).
    """
    task = get_task(task) if isinstance(task, str) else task
    row_mask = task.calibration_row_mask(calib_padding)  # a wrong value: before any work
    params = task.baseline(seed)
    batches = task.calibration(seed, calib_size)
    sample = task.sample_input(seed)
    distill = jax.jit(task.qat_loss("distill"))
    fp_outputs = [float_forward(task.model, params, b) for b in batches]
    sizes = np.array([example_count(b) for b in batches], np.float64)

    def loss_of(p) -> float:
        losses = [
            float(distill(float_forward(task.model, p, b), None, fp))
            for b, fp in zip(batches, fp_outputs, strict=True)
        ]
        return float(np.dot(losses, sizes) / sizes.sum())

    layers = adapt(task.model, params).layers(params, sample)
    rows = []
    for label, recipe in candidates.items():
        qmodel = quantize_model(
            task.model,
            params,
            dataclasses.replace(_fitting(recipe, layers), sequential=False),
            sample_input=sample,
            calibration=batches,
            row_mask=row_mask,
        )
        for path, p in tqdm(
            qmodel.layers.items(),
            desc=f"{task.name} {label}",
            unit="layer",
            disable=None if progress is None else not progress,
        ):
            qt: QTensor = get_at(qmodel.params, p.layer.key)
            w = get_at(params, p.layer.key)
            probe = set_at(params, p.layer.key, unfolded_weight(qt).astype(w.dtype))
            rows.append(
                {
                    "task": task.name,
                    "seed": seed,
                    "candidate": label,
                    "layer": path,
                    "params": qt.size,
                    "bits": qt.spec.bits,
                    "stored_bytes": stored_bytes(qt),
                    "loss": loss_of(probe),
                    "loss_kind": "distillation to float, calibration split",
                }
            )
    return rows
