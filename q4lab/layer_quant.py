"""The quantized layer: its weight and activation quantization state, and `quantized_dot`, the
one function every mode of the forward pass goes through.

Modes:
  int    packed weight codes (`QTensor`) and integer activation codes through `q4lab.ops`
  fake   the same values simulated in float (straight-through gradients, steps frozen)
  train  the integer path's values with the fake path's gradients, for trainable state: float
         master weights and, with LSQ, learned steps (`q4lab.core.lsq`)

A learned step is a *gain* on the post-training step: ``s = s0 * gain``, ``gain`` initialised
to 1. A product rounds the same way in every program (an ``exp`` may not), so `WeightQuant.freeze`
stores the very steps the training forward used, and Adam's updates of a gain are relative
changes of the step whatever its magnitude. A gain counts at least `MIN_GAIN` (`floored`): a
large learning rate drove gains to zero and below, and a step of 0 or less is no grid.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable

import jax
import jax.numpy as jnp

from q4lab.core import (
    QTensor,
    QuantSpec,
    act_codes,
    act_fake_quant,
    act_lsq_fake_quant,
    affine,
    dequantize,
    dequantize_matrix,
    from_matrix,
    lsq_grad_scale,
    lsq_round_trip,
    quantize,
    stored_scale,
    to_matrix,
)
from q4lab.core.transforms import InputTransform, smoothing_scales
from q4lab.ops import int_matmul, w4a16_matmul
from q4lab.recipe import ActSpec, TransformSpec

MODES: tuple[str, ...] = ("int", "fake", "train")

MIN_GAIN = 1e-3  # a learned step may shrink to a thousandth of the post-training one, no further


def floored(gain: jax.Array) -> jax.Array:
    """``gain``, at least `MIN_GAIN` (the module docstring); unchanged, gradient included, above."""
    return jnp.maximum(gain, MIN_GAIN)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ActState:
    """A layer's activation quantization: the spec, a calibrated step (static ranges) and a gain.

    ``scale``/``zero``: the static range (``[1, 1]``), None for dynamic ranges (computed from
    each batch's rows). ``gain``: a learned float32 factor on the step (None: 1, no learning).
    """

    spec: ActSpec = dataclasses.field(metadata={"static": True})
    scale: jax.Array | None = None
    zero: jax.Array | None = None
    gain: jax.Array | None = None

    def step(self, rows: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        """Scale (and zero) of activation rows ``[M, K]``; a gain multiplies the step found by
        the static or dynamic range (the range itself gets no gradient)."""
        if self.scale is None:
            scale, zero = self.spec.params(rows)
        else:
            scale, zero = self.scale, self.zero
        if self.gain is None:
            return scale, zero
        base = jax.lax.stop_gradient(scale.astype(jnp.float32))
        return stored_scale(base * floored(self.gain), self.spec.quant_spec()), zero

    def quantize(
        self, rows: jax.Array, mode: str, step: tuple[jax.Array, jax.Array | None] | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """Centered codes (``mode="int"``) or fake-quantized float32 rows, and the step. With a
        gain in training, LSQ's gradients reach it; otherwise the straight-through estimator.
        ``step``: `step`'s result for these rows when the caller already has it."""
        scale, zero = self.step(rows) if step is None else step
        qspec = self.spec.quant_spec()
        if mode == "int":
            return act_codes(rows, scale, zero, qspec), scale
        if mode == "train" and self.gain is not None:
            return act_lsq_fake_quant(rows, scale, zero, qspec), scale
        return act_fake_quant(rows, scale, zero, qspec), scale

    def keep_nan(self, nan_inputs: Callable[[], jax.Array], out: jax.Array) -> jax.Array:
        """``out[..., N]`` NaN where ``nan_inputs()`` (``out.shape[:-1]``) says an output read a
        NaN input. Codes cast a NaN to 0, so against a static range such an output would be
        finite where the float simulation gives NaN (a dynamic range is NaN itself there)."""
        if self.scale is None:
            return out
        return jnp.where(nan_inputs()[..., None], jnp.nan, out)


def quantized_dot(
    x2d: jax.Array,
    weight: QTensor | jax.Array,
    act: ActState | None,
    mode: str,
    transform: InputTransform | None = None,
    *,
    frozen: QTensor | None = None,
) -> jax.Array:
    """``x2d[M, K]`` times a quantized weight ``[K, N]``, float32 ``[M, N]``.

    ``mode="int"``: ``weight`` is the `QTensor`; activations become integer codes
    (`q4lab.ops.int_matmul`), or stay float against the packed codes (`w4a16_matmul`).
    ``"fake"``: ``weight`` is the float matrix its fake quantization gives (the dequantized
    codes) and the activations are fake-quantized: the float simulation of ``"int"``, equal to
    it up to the order of float sums.
    ``"train"``: the values of ``"int"`` for ``frozen`` (the `QTensor` of the training state,
    `WeightQuant.freeze`) and the gradients of ``"fake"`` for ``weight`` (`WeightQuant.value`,
    the same numbers as a float matrix): the model trained is the model served, value for value.
    The input transform (int, train: the `QTensor`'s; fake: ``transform``) is applied to ``x2d``
    first: activations are quantized in the basis the weight was folded into.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is invalid; allowed: {', '.join(MODES)}")
    qt = weight if mode == "int" else frozen
    if mode == "train" and qt is None:
        raise ValueError("mode='train' needs frozen=, the QTensor whose values the forward takes")
    if qt is not None and qt.transform is not None:
        transform, qt = qt.transform, dataclasses.replace(qt, transform=None)
    if transform is not None:
        x2d = transform.apply(x2d)
    if mode == "int":
        return _integer_dot(x2d, qt, act)
    served, step = None, None
    if mode == "train":  # one range per batch for both paths (an MSE range is a search)
        step = None if act is None else act.step(x2d)
        served = _integer_dot(*jax.lax.stop_gradient((x2d, qt, act, step)))
    if act is not None:
        x2d, _ = act.quantize(x2d, mode, step)
    if served is None:
        return _float_dot(x2d, weight)
    return served_with_gradients_of(_float_dot, served, x2d, weight)


def _integer_dot(
    x2d: jax.Array,
    qt: QTensor,
    act: ActState | None,
    step: tuple[jax.Array, jax.Array | None] | None = None,
) -> jax.Array:
    if act is None:
        return w4a16_matmul(x2d, qt)
    xc, scale = act.quantize(x2d, "int", step)
    return act.keep_nan(lambda: jnp.isnan(x2d).any(axis=1), int_matmul(xc, scale, qt))


def _float_dot(x: jax.Array, w: jax.Array) -> jax.Array:
    """float32 products in full (a GPU's default would round them to TF32, 2.5e-4 off the
    integer path)."""
    return jnp.dot(
        x.astype(jnp.float32), w.astype(jnp.float32), precision=jax.lax.Precision.HIGHEST
    )


def served_with_gradients_of(
    simulate: Callable[..., jax.Array], served: jax.Array, *operands: jax.Array
) -> jax.Array:
    """``served`` (the integer path's values) forward, the gradients of ``simulate(*operands)``
    (their float simulation, the fake-quantized operands' straight-through and LSQ gradients
    included) backward; ``served`` itself gets none. AQT's rule (Lew et al. 2022, google/aqt:
    "what you train is what you serve"), needed here because a one-ulp difference between the
    simulation and the integer kernels moves activation codes across rounding boundaries
    downstream: a model trained on the simulation is not exactly the model frozen.
    ``simulate`` must close over no arrays; its forward is not run (XLA drops the unused
    primal of its VJP)."""

    @jax.custom_vjp
    def forward(served, *operands):
        return served

    def forward_fwd(served, *operands):
        return served, operands

    def forward_bwd(operands, g):
        out, vjp = jax.vjp(simulate, *operands)
        return (jnp.zeros_like(g), *vjp(g.astype(out.dtype)))

    forward.defvjp(forward_fwd, forward_bwd)
    return forward(served, *operands)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class WeightQuant:
    """A quantized weight in training: the float master weight, its post-training steps and
    zeros on the `QTensor` grid, the row permutation (GPTQ act-order), a learned gain and the
    input transform (the master weight is in the layer's original basis; the codes are those of
    its fold).

    ``gain`` None: steps frozen (the straight-through estimator trains the master weight only).
    """

    master: jax.Array  # logical shape, float32
    scale0: jax.Array  # [G, N] float32: the post-training quantizer's steps
    zero: jax.Array | None  # [G, N] int32 or None (symmetric)
    perm: jax.Array | None
    gain: jax.Array | None
    spec: QuantSpec = dataclasses.field(metadata={"static": True})
    in_axes: tuple[int, ...] = dataclasses.field(metadata={"static": True})
    transform: InputTransform | None = None

    def steps(self) -> jax.Array:
        """The ``[G, N]`` steps in the stored dtype, as float32 (gradient to the gain)."""
        return stored_scale(
            self.scale0 if self.gain is None else self.scale0 * floored(self.gain), self.spec
        )

    def _matrix(self) -> jax.Array:
        """The master weight as the ``[K, N]`` matrix the codes quantize (folded)."""
        w2d = to_matrix(self.master, self.in_axes)
        return w2d if self.transform is None else self.transform.fold(w2d)

    def value(self) -> jax.Array:
        """The fake-quantized weight in its logical shape (float32; with a transform, folded):
        exactly what `freeze`'s codes dequantize to. Gradients: straight-through to the master
        weight inside the range and, with a gain, LSQ's to the steps."""
        w2d = self._matrix()
        if self.perm is not None:
            w2d = w2d[self.perm]
        wg = affine.group_view(w2d, self.spec)
        steps = self.steps()
        if self.gain is None:
            steps = jax.lax.stop_gradient(steps)
        zero = None if self.zero is None else self.zero[:, None, :]
        g = lsq_grad_scale(wg.size // steps.size, self.spec)
        w_hat = lsq_round_trip(wg, steps[:, None, :], zero, self.spec, g).reshape(w2d.shape)
        if self.perm is not None:
            w_hat = w_hat[jnp.argsort(self.perm)]
        return from_matrix(w_hat, self.master.shape, self.in_axes)

    def freeze(self) -> QTensor:
        """The packed `QTensor` of the current master weight and steps."""
        w = from_matrix(self._matrix(), self.master.shape, self.in_axes)
        qt = quantize(w, self.spec, self.steps(), self.zero, in_axes=self.in_axes, perm=self.perm)
        return dataclasses.replace(qt, transform=self.transform)


def folded_weight(transform: InputTransform, w: jax.Array, in_axes: tuple[int, ...]) -> jax.Array:
    """``transform.fold`` of a weight in its logical shape (float32): what its codes quantize."""
    return from_matrix(transform.fold(to_matrix(w, in_axes)), w.shape, in_axes)


def unfolded_weight(qt: QTensor) -> jax.Array:
    """The dequantized weight in the layer's original basis (what a float forward multiplies):
    ``transform.unfold`` of the dequantized codes."""
    if qt.transform is None:
        return dequantize(qt)
    return from_matrix(qt.transform.unfold(dequantize_matrix(qt)), qt.shape, qt.in_axes)


def _layer_seed(seed: int, path: str) -> jax.Array:
    """A layer's rotation seed: the recipe's seed mixed with the layer path (uint32)."""
    return jnp.asarray((seed * 1_000_003 + zlib.crc32(path.encode())) % 2**32, jnp.uint32)


def make_transform(
    spec: TransformSpec, path: str, w2d: jax.Array, stats: dict[str, jax.Array] | None
) -> InputTransform:
    """The input transform of layer ``path`` (float weight ``w2d[K, N]``) by ``spec``;
    smoothing reads the calibrated per-channel ``act_absmax``."""
    smooth = None
    if spec.smooth_alpha is not None:
        w_absmax = jnp.max(jnp.abs(w2d.astype(jnp.float32)), axis=1)
        smooth = smoothing_scales(stats["act_absmax"], w_absmax, spec.smooth_alpha)
    rotated = rotation(spec, path)
    return InputTransform(smooth=smooth, seed=None if rotated is None else rotated.seed)


def rotation(spec: TransformSpec | None, path: str) -> InputTransform | None:
    """The rotation alone of layer ``path``'s transform (None if it has none): known before
    calibration, which takes a static range's bounds after it."""
    if spec is None or not spec.rotates:
        return None
    return InputTransform(seed=_layer_seed(spec.seed, path))


def transform_stats(
    transform: InputTransform, stats: dict[str, jax.Array] | None
) -> dict[str, jax.Array] | None:
    """Calibration statistics of ``transform.apply(x)`` from those of ``x``; "act_bounds" were
    taken after the rotation already (`rotation`): a positive per-column smoothing keeps each
    column's order, a smoothing before the rotation leaves them unknown (dropped)."""
    if stats is None:
        return None
    out = {k: v for k, v in stats.items() if k not in ("act_absmax", "act_absmean")}
    if "act_bounds" in out and transform.smooth is not None:
        if transform.seed is None:
            out["act_bounds"] = out["act_bounds"] / transform.smooth
        else:
            del out["act_bounds"]
    if "hessian" in out:
        out["hessian"] = transform.covariance(out["hessian"])
    if "cross" in out:  # X^T X_float of the transformed inputs: R^T C R (`covariance` of C^T)
        out["cross"] = transform.covariance(out["cross"].T)
    for rows in ("act_sample", "act_extremes"):
        if rows in out:
            out[rows] = transform.apply(out[rows])
    return out


__all__ = [
    "MODES",
    "ActState",
    "WeightQuant",
    "folded_weight",
    "make_transform",
    "rotation",
    "quantized_dot",
    "served_with_gradients_of",
    "transform_stats",
    "unfolded_weight",
]
