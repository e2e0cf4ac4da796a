"""Quantization-aware training (QAT): fine-tune a post-training quantized model with its weights
and activations fake-quantized in the forward pass, then freeze it to packed integer codes.

  PTQ `QuantizedModel` ──`QATModel.start`──► params (float pytree) ──optax──► params
                                                                        │ `QATModel.freeze`
                                                                        ▼
                                          `QuantizedModel` (QTensors): the same numbers, in int

The training forward takes its values from the integer path of the model `QATModel.freeze`
would give at that step, and its gradients from the fake-quantized forward (straight-through
and LSQ): what is trained is what is served, so each layer's values are the frozen model's,
value for value (a float simulation in the forward would differ from the integer kernels by an
ulp here and there, enough to move activation codes downstream). A whole model's agree to
float32 rounding: XLA may fuse the float epilogues of the two graphs otherwise
(`benchmarks/qat_start.py`).

Training state (``params``, a plain pytree that `jax.grad` and optax see):
  ``params["model"]``  every parameter of the model, each quantized kernel being its float
                       master weight: the float kernel for rounding quantizers, GPTQ's
                       dequantized weight for GPTQ (so training starts exactly at the PTQ model),
                       in the layer's original basis (an input transform is folded each step);
                       batch statistics and other non-parameter state ride along untrained
  ``params["steps"]``  per quantized layer, with ``method="lsq"``: ``w_gain`` ``[G, N]`` on the
                       weight steps and ``act_gain`` (scalar) on the activation step

Methods: ``"ste"`` keeps the post-training steps and trains the master weights through the
straight-through estimator; ``"lsq"`` also learns every step (Esser et al., 2020;
`q4lab.core.lsq`), activation steps as a gain on the static or dynamic range.
`QATModel.freeze` is exact: the frozen model's integer forward is the training forward's
computation, layer by layer; its fake (float-simulated) forward agrees with both as any
quantized model's does.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from q4lab.adapters import Adapter, PyTree, get_at, set_at
from q4lab.core import QuantSpec
from q4lab.hooks import QuantHook
from q4lab.layer_quant import ActState, WeightQuant, unfolded_weight
from q4lab.losses import DISTILLATION, LOSSES, Loss
from q4lab.quantized_model import QuantizedModel
from q4lab.recipe import ActSpec

METHODS: tuple[str, ...] = ("ste", "lsq")


@dataclasses.dataclass(frozen=True, kw_only=True)
class QATConfig:
    """How to fine-tune: ``steps`` of AdamW at peak ``lr`` (linear warm-up over the first 10 %,
    cosine decay), gradients clipped to global norm 1, with the ``loss`` "task" (labels) or
    "distill" (the float model's outputs). ``method`` must be the `QATModel`'s; ``batch_size``
    sizes a task's sampler (`q4lab.evaluate`): `train` takes batches as they are drawn."""

    steps: int = 200
    lr: float = 1e-4
    method: str = "lsq"
    loss: str = "task"
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"qat_method={self.method!r} is invalid; allowed: {METHODS}")
        if self.loss not in LOSSES:
            raise ValueError(f"qat_loss={self.loss!r} is invalid; allowed: {LOSSES}")
        for name, value in (("qat_steps", self.steps), ("qat_batch_size", self.batch_size)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{name}={value!r} is invalid; allowed: an int >= 1")
        lr = self.lr
        if isinstance(lr, bool) or not isinstance(lr, int | float | np.number):
            raise ValueError(f"qat_lr={lr!r} is invalid; allowed: a number > 0")
        if not np.isfinite(lr) or lr <= 0:  # nan passed `lr <= 0` and trained on NaN
            raise ValueError(f"qat_lr={lr!r} is invalid; allowed: a finite number > 0")


@dataclasses.dataclass(frozen=True)
class _Layer:
    """What the training forward knows of a quantized layer (static)."""

    path: str
    key: tuple
    spec: QuantSpec
    in_axes: tuple[int, ...]
    act: ActSpec | None
    hooked: bool  # `QuantizedModel.int_hooked`


@dataclasses.dataclass(frozen=True)
class QATModel:
    """The training forward and `freeze` of a post-training quantized model ``start``."""

    ptq: QuantizedModel
    method: str
    layers: tuple[_Layer, ...]
    consts: dict[str, dict]  # fixed per layer: PTQ steps, zeros, perm, transform
    dtypes: PyTree  # each parameter's dtype in the model: masters train in float32

    @property
    def adapter(self) -> Adapter:
        return self.ptq.adapter

    @classmethod
    def start(cls, ptq: QuantizedModel, method: str = "lsq") -> tuple[QATModel, PyTree]:
        """The QAT model of ``ptq`` and its initial training state (module docstring)."""
        if method not in METHODS:
            raise ValueError(f"qat_method={method!r} is invalid; allowed: {METHODS}")
        if ptq.float_params is None:
            raise ValueError(
                "quantization-aware training starts from the float weights, which a loaded "
                "model does not hold; allowed: the QuantizedModel quantize_model returns"
            )
        layers, consts = [], {}
        model = ptq.float_params
        steps: dict[str, dict[str, jax.Array]] = {}
        for path, p in ptq.layers.items():
            qt = get_at(ptq.params, p.layer.key)
            if qt.spec.float_zero:
                raise ValueError(
                    f"layer {path!r} has real-valued zero points ({qt.spec.describe()}); "
                    "quantization-aware training trains with integer ones: allowed: "
                    "zero_point='int'"
                )
            act = ptq.acts.get(path)
            hooked = ptq.int_hooked(path)
            layers.append(_Layer(path, p.layer.key, qt.spec, qt.in_axes, act and act.spec, hooked))
            consts[path] = {
                "scale0": qt.scale.astype(jnp.float32),
                "zero": qt.int_zero(),
                "perm": qt.perm,
                "transform": qt.transform,
                "act_scale": act and act.scale,
                "act_zero": act and act.zero,
                "act_gain": act and act.gain,  # a frozen LSQ model's dynamic gain: kept
            }
            if not p.rounds_to_nearest:  # GPTQ: start from the weights it chose
                model = set_at(model, p.layer.key, unfolded_weight(qt))
            if method == "lsq":
                steps[path] = {"w_gain": jnp.ones_like(consts[path]["scale0"])}
                if act is not None:
                    steps[path]["act_gain"] = jnp.ones((), jnp.float32)
        dtypes = jax.tree.map(lambda a: a.dtype, model)
        qat = cls(ptq, method, tuple(layers), consts, dtypes)
        return qat, {"model": jax.tree.map(_master, model), "steps": steps}

    def _weight(self, layer: _Layer, params: PyTree) -> WeightQuant:
        c = self.consts[layer.path]
        return WeightQuant(
            master=get_at(params["model"], layer.key).astype(jnp.float32),
            scale0=c["scale0"],
            zero=c["zero"],
            perm=c["perm"],
            gain=params["steps"].get(layer.path, {}).get("w_gain"),
            spec=layer.spec,
            in_axes=layer.in_axes,
            transform=c["transform"],
        )

    def _act(self, layer: _Layer, params: PyTree) -> ActState:
        c = self.consts[layer.path]
        learned, held = params["steps"].get(layer.path, {}).get("act_gain"), c.get("act_gain")
        gain = held if learned is None else learned if held is None else learned * held
        return ActState(layer.act, c["act_scale"], c["act_zero"], gain)

    def _as_model(self, masters: PyTree) -> PyTree:
        """The float32 masters in the model's own dtypes (what its forward and a frozen model
        hold)."""
        return jax.tree.map(lambda a, d: a.astype(d) if _floating(a) else a, masters, self.dtypes)

    def apply(self, params: PyTree, x: jax.Array) -> jax.Array:
        """The training forward, a pure function of ``params``: the values of the frozen
        model's integer forward (`freeze`, computed inside), the gradients of the fake-quantized
        forward, in the master weights and (LSQ) the steps (`q4lab.layer_quant`, mode
        ``"train"``). Layers the integer forward does not hook (weight-only convs) multiply
        their fake-quantized kernel, which is exactly the frozen codes dequantized."""
        weights = self._as_model(params["model"])
        hooks = {}
        for layer in self.layers:
            weight = self._weight(layer, params)
            kernel = weight.value()  # unhooked (weight-only conv): the codes dequantized, float32
            if layer.hooked:  # the integer path serves the values; this kernel, the gradients
                kernel = kernel.astype(get_at(weights, layer.key).dtype)
            weights = set_at(weights, layer.key, kernel)
            if layer.hooked:
                act = None if layer.act is None else self._act(layer, params)
                frozen = jax.lax.stop_gradient(weight.freeze())
                hooks[layer.path] = QuantHook(frozen, act, "train")
        return self.adapter.apply(weights, x, hooks)

    def freeze(self, params: PyTree) -> QuantizedModel:
        """The `QuantizedModel` of ``params``: packed codes of the master weights with the
        learned steps; static activation steps absorb their gain, dynamic ones keep it."""
        float_params = self._as_model(params["model"])
        qparams, acts = float_params, {}
        for layer in self.layers:
            qparams = set_at(qparams, layer.key, self._weight(layer, params).freeze())
            if layer.act is None:
                continue
            act = self._act(layer, params)
            if act.scale is not None and act.gain is not None:
                scale, zero = act.step(act.scale)  # static: the range ignores the rows
                act = ActState(act.spec, scale, zero)
            acts[layer.path] = act
        ptq = self.ptq
        return QuantizedModel(self.adapter, qparams, float_params, ptq.layers, acts, ptq.recipe)


def _floating(a: jax.Array) -> bool:
    return jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating)


def _master(a: jax.Array) -> jax.Array:
    """A float parameter as the optimizer keeps it: float32 (a bfloat16 master rounds most
    Adam updates of a typical weight away: 9 % of weights moved in 100 steps at 1e-4)."""
    return a.astype(jnp.float32) if _floating(a) and jnp.asarray(a).dtype.itemsize < 4 else a


@dataclasses.dataclass(frozen=True)
class TrainLog:
    losses: np.ndarray  # per step
    seconds: float  # wall time of the steps (the first one includes compiling)
    compile_seconds: float  # the first step


def train(
    qat: QATModel,
    params: PyTree,
    batch: Callable[[np.random.Generator], tuple[jax.Array, jax.Array | None]],
    loss: Loss,
    config: QATConfig,
    *,
    fp_params: PyTree | None = None,
    seed: int = 0,
    progress: bool | None = None,
    desc: str = "qat",
) -> tuple[PyTree, TrainLog]:
    """Fine-tune ``params`` for ``config.steps`` steps on batches drawn by ``batch(rng)``
    (inputs, targets or None) with ``loss(outputs, targets, float outputs)``; the float outputs
    come from ``fp_params``, the unquantized model (None: the float parameters ``qat`` was
    quantized from, ``qat.ptq.float_params``), with ``config.loss == "distill"`` only (None
    otherwise). Deterministic in ``seed``. ``progress``: a bar over steps with the running loss
    (None: only on a terminal)."""
    if config.method != qat.method:
        raise ValueError(
            f"QATConfig.method={config.method!r} is invalid for a QATModel started with "
            f"method={qat.method!r}; allowed: {qat.method!r}"
        )
    if loss in DISTILLATION and config.loss != "distill":
        raise ValueError(
            f"loss {loss.__name__} distills from the float model's outputs, which train computes "
            f"only for QATConfig(loss='distill'); allowed with QATConfig.loss={config.loss!r}: "
            "a loss of the labels"
        )
    if fp_params is None:
        fp_params = qat.ptq.float_params
    warmup = min(max(1, config.steps // 10), config.steps - 1)  # one step: no warm-up
    schedule = optax.warmup_cosine_decay_schedule(0.0, config.lr, warmup, config.steps)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.0))
    # only parameters train: batch statistics and other state (an NNX model's RNG counts, which
    # have no gradient) ride along, and the optimizer never sees them
    trains = {
        "model": qat.adapter.trainable(params["model"]),
        "steps": jax.tree.map(lambda _: True, params["steps"]),
    }

    def merge(trained, kept):
        return jax.tree.map(lambda t, a, b: a if t else b, trains, trained, kept)

    trained = jax.tree.map(lambda t, v: v if t else None, trains, params)
    kept = jax.tree.map(lambda t, v: None if t else v, trains, params)
    opt_state = opt.init(trained)

    def objective(t, kept, x, y, fp_out):
        return loss(qat.apply(merge(t, kept), x), y, fp_out)

    @jax.jit
    def step(t, kept, s, x, y):
        fp_out = None
        if config.loss == "distill":
            fp_out = jax.lax.stop_gradient(qat.adapter.apply(fp_params, x, {}))
        value, grads = jax.value_and_grad(objective)(t, kept, x, y, fp_out)
        updates, s = opt.update(grads, s, t)
        return optax.apply_updates(t, updates), s, value

    rng = np.random.default_rng(seed)
    losses = np.zeros(config.steps, np.float32)
    start = time.perf_counter()
    compile_seconds = 0.0
    with tqdm(
        total=config.steps,
        desc=desc,
        unit="step",
        disable=None if progress is None else not progress,
        dynamic_ncols=True,
    ) as bar:
        for i in range(config.steps):
            x, y = batch(rng)
            trained, opt_state, value = step(trained, kept, opt_state, x, y)
            losses[i] = float(value)  # also waits for the step: honest timings
            if i == 0:
                compile_seconds = time.perf_counter() - start
            if not bar.disable and (i % 10 == 0 or i == config.steps - 1):
                bar.set_postfix(loss=f"{losses[max(0, i - 9) : i + 1].mean():.4f}", refresh=False)
            bar.update(1)
    return merge(trained, kept), TrainLog(losses, time.perf_counter() - start, compile_seconds)


__all__ = [
    "LOSSES",
    "METHODS",
    "QATConfig",
    "QATModel",
    "TrainLog",
    "train",
]
