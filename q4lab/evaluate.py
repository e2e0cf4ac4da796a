"""`evaluate(task, recipe, seed)`: quantize a task's float baseline, measure it, one flat record."""

from __future__ import annotations

import functools
import time
import warnings

import jax
import numpy as np

from q4lab.adapters import Layer, RowMask, adapt, example_count
from q4lab.calibrate import row_mask_of
from q4lab.manifest import manifest
from q4lab.qat import QATConfig, QATModel
from q4lab.qat import train as train_qat
from q4lab.quantize_model import quantize_model
from q4lab.quantized_model import QuantizedModel
from q4lab.recipe import Recipe
from q4lab.tasks import Task, get_task


@functools.partial(jax.jit, static_argnums=0)
def float_forward(model, params, x):
    """The float model's output (one compile per model, reused for any params of its shapes;
    Linen ``params`` may be all of its variables, `q4lab.adapters.holds_collections`)."""
    return adapt(model, params).apply(params, x, {})


def _check_kept(task: Task, row_mask: RowMask, calibration: list) -> None:
    """Warn when the row mask keeps every calibration position: excluding padding then changes
    nothing (a mask written for another pad id, or batches without padding)."""
    masks = [np.asarray(row_mask_of(row_mask, b)) for b in calibration]
    if masks and all(m.all() for m in masks):
        warnings.warn(
            f"task {task.name!r}: its row mask keeps every calibration position, so "
            "calib_padding='exclude' computes what 'include' does (is the pad id right?)",
            stacklevel=3,
        )


def evaluate(
    task: Task | str,
    recipe: Recipe,
    seed: int = 0,
    *,
    calib_size: int | None = None,
    calib_padding: str = "include",
    qat: QATConfig | None = None,
    progress: bool | None = False,
    train_progress: bool | None = None,
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
    example, and ``fake_agreement`` the fraction of identical argmax outputs along the last axis
    (a classifier's class; a language model's next token at each position, where rows of
    commits before 4569d2e took one argmax over an example's flattened positions and
    vocabulary: every published row). Wider activation codes move more often, not less: a step
    2^(b-4) times smaller is crossed by the same ulp that much more often, though each move is
    smaller (`q4lab quantize --task charlm --group 128 --act-bits 8 4`: median 4.2e-3 at A8 and
    8.5e-7 at A4, worst example 6.0e-3 and 8.9e-2).
    ``calib_padding``: ``"exclude"`` leaves padded positions out of the calibration statistics
    (`Task.row_mask`). ``progress``: a bar over the layers being quantized (None: only on a
    terminal).

    With ``qat``, the quantized model is fine-tuned (`q4lab.qat`) and frozen; the task's metrics
    are those of the frozen integer model, beside ``ptq_score`` (before training),
    ``qat_fake_score`` (the training forward at the end) and the training's loss and cost
    (``qat_loss_start`` / ``_end``: the mean loss over the first / last tenth of the steps, one
    batch's loss being noisy; so two methods from one model can start apart).
    ``train_progress``: a bar over training steps (None: only on a terminal).

    ``layers`` holds one dict per quantizable layer (`layer_rows`): the runner stores them in
    the experiment's side table ``layers.parquet``.
    """
    task = get_task(task) if isinstance(task, str) else task
    row_mask = task.calibration_row_mask(calib_padding)  # a wrong value: before any work
    params = task.baseline(seed)
    calibration = task.calibration(seed, calib_size)
    if row_mask is not None:
        _check_kept(task, row_mask, calibration)
    sample = task.sample_input(seed)
    start = time.perf_counter()
    qmodel = quantize_model(
        task.model,
        params,
        recipe,
        sample_input=sample,
        calibration=calibration,
        row_mask=row_mask,
        progress=progress,
    )
    quantize_seconds = time.perf_counter() - start

    def fp_forward(x):
        return float_forward(task.model, params, x)

    trained = {}
    if qat is not None:
        qmodel, trained = _fine_tune(task, qmodel, qat, params, fp_forward, seed, train_progress)

    start = time.perf_counter()
    metrics = task.metrics(qmodel.apply, fp_forward, seed)
    eval_seconds = time.perf_counter() - start
    score, fp_score = metrics[task.metric], metrics[f"fp_{task.metric}"]

    x = task.check_input(seed)
    real_out, fake_out = np.asarray(qmodel.apply(x)), np.asarray(qmodel.apply(x, fake=True))
    examples = example_count(x)
    real, fake = real_out.reshape(examples, -1), fake_out.reshape(examples, -1)
    per_example = np.max(np.abs(real - fake), axis=-1) / np.max(np.abs(fake), axis=-1)
    return {
        "task": task.name,
        "seed": seed,
        **recipe.fields(),
        "training": "ptq" if qat is None else f"qat {qat.method}",
        "calib_examples": sum(example_count(b) for b in calibration),
        **metrics,
        "metric": task.metric,
        "higher_is_better": task.higher_is_better,
        "score": score,
        "fp_score": fp_score,
        "delta_score": score - fp_score,
        "fake_rel_diff": float(np.median(per_example)),
        "fake_rel_diff_max": float(np.max(per_example)),
        "fake_agreement": float(np.mean(real_out.argmax(-1) == fake_out.argmax(-1))),
        **trained,
        **qmodel.ledger().totals(),
        "quantize_seconds": quantize_seconds,
        "eval_seconds": eval_seconds,
        **manifest(),
        "layers": layer_rows(qmodel, recipe, _layers(task, params, sample)),
    }


_LAYERS: dict[tuple, list[Layer]] = {}


def _layers(task: Task, params, sample) -> list[Layer]:
    """The task model's quantizable layers (traced once per model and input shape)."""
    key = (task.model, str(jax.tree.map(lambda a: (a.shape, a.dtype), sample)))
    if key not in _LAYERS:
        _LAYERS[key] = adapt(task.model, params).layers(params, sample)
    return _LAYERS[key]


def layer_rows(qmodel: QuantizedModel, recipe: Recipe, layers: list[Layer]) -> list[dict]:
    """One dict per quantizable layer: the rule that matched it (``rule`` -1: none), what it
    got, and the bytes its kernel stores (the ledger's count; a float layer's ``bits`` is its
    dtype's width, 32 for float32)."""
    stored = {leaf.path: leaf for leaf in qmodel.ledger().leaves}
    rows = []
    for layer in layers:
        match = recipe.match(layer.path)
        rule = None if match is None or match[1].keeps_float else match[1]
        leaf = stored[jax.tree_util.keystr(tuple(jax.tree_util.DictKey(k) for k in layer.key))]
        rows.append(
            {
                "layer": layer.path,
                "k": layer.k,
                "n": leaf.params // layer.k,
                "rule": -1 if match is None else match[0],
                "quantizer": "float" if rule is None else rule.quantizer_label(),
                "bits": round(8 * leaf.stored / leaf.params) if rule is None else rule.weight.bits,
                # as quantized: a group of at least K is one group, per-channel
                "group_size": 0 if rule is None else qmodel.layers[layer.path].spec.group_size or 0,
                "act_bits": rule.act.bits if rule is not None and rule.act else 16,
                "stored_bytes": leaf.stored,
                "bits_per_weight": 8 * leaf.stored / leaf.params,
            }
        )
    return rows


def _fine_tune(task, ptq, config, params, fp_forward, seed, progress):
    """Quantization-aware training of ``ptq``: the frozen model and the record's QAT fields."""
    metric = task.metric
    ptq_score = task.metrics(ptq.apply, fp_forward, seed)[metric]
    model, state = QATModel.start(ptq, config.method)
    state, log = train_qat(
        model,
        state,
        task.qat_sampler(seed, config.batch_size),
        task.qat_loss(config.loss),
        config,
        fp_params=params,
        seed=seed,
        progress=progress,
        desc=f"qat {task.name} {config.method}",
    )
    fake = jax.jit(model.apply)
    fake_score = task.metrics(lambda x: fake(state, x), fp_forward, seed)[metric]
    steady = log.losses[1:] if len(log.losses) > 1 else log.losses
    tail = max(1, len(log.losses) // 10)
    return model.freeze(state), {
        "ptq_score": ptq_score,
        "qat_fake_score": fake_score,
        "qat_loss_start": float(log.losses[:tail].mean()),
        "qat_loss_end": float(log.losses[-tail:].mean()),
        "qat_seconds": log.seconds,
        "qat_seconds_per_step": (log.seconds - log.compile_seconds) / max(1, len(steady)),
    }
