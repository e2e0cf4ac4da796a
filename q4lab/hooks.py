"""Per-layer compute injected into Flax modules: capture for calibration, and the quantized
forward (real integer arithmetic, or its fake-quant simulation).

Inputs are brought to a matrix ``x[M, K]`` whose columns follow the kernel's flattened input
axes (the `QTensor` layout): a dense layer's contracting axes, or a convolution's im2col patches
(``lax.conv_general_dilated_patches``, channel-major, reordered to the kernel's ``(*window, in)``).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from q4lab.core import QTensor
from q4lab.core.transforms import InputTransform
from q4lab.layer_quant import ActState, quantized_dot, served_with_gradients_of
from q4lab.ops import int_matmul


def dense_rows(lhs: jax.Array, dimension_numbers) -> tuple[jax.Array, tuple[int, ...]]:
    """``lhs`` of a ``dot_general`` as ``[M, K]`` (K in the kernel's axis order) + free shape."""
    (lc, rc), (lb, rb) = dimension_numbers
    if lb or rb:
        raise NotImplementedError("quantized dot_general with batch dimensions is not supported")
    contract = [lc[i] for i in sorted(range(len(rc)), key=lambda i: rc[i])]
    free = [d for d in range(lhs.ndim) if d not in lc]
    moved = jnp.transpose(lhs, free + contract)
    free_shape = tuple(lhs.shape[d] for d in free)
    k = math.prod(lhs.shape[d] for d in contract)  # from the shape: an empty batch has K too
    return moved.reshape(math.prod(free_shape), k), free_shape


def _per_example(lhs: jax.Array) -> jax.Array:
    """A conv's input as one row per example (an empty batch too: -1 would be ambiguous)."""
    return lhs.reshape(lhs.shape[0], math.prod(lhs.shape[1:]))


def _check_conv(lhs, rhs, kwargs) -> lax.ConvDimensionNumbers:
    dn = lax.conv_dimension_numbers(lhs.shape, rhs.shape, kwargs.get("dimension_numbers"))
    nd = lhs.ndim
    if dn.lhs_spec[:2] != (0, nd - 1) or dn.rhs_spec[:2] != (nd - 1, nd - 2):
        raise NotImplementedError(
            f"quantized conv needs channels-last inputs and kernels, got {dn}"
        )
    if kwargs.get("feature_group_count", 1) != 1 or kwargs.get("batch_group_count", 1) != 1:
        raise NotImplementedError("quantized conv with grouped features is not supported")
    return dn


def conv_patches(lhs, rhs, window_strides, padding, **kwargs) -> jax.Array:
    """im2col of a channels-last conv input: ``[B, *out_spatial, K]`` with K ordered as the
    kernel's ``(*window, in_features)``."""
    dn = _check_conv(lhs, rhs, kwargs)
    window = rhs.shape[:-2]
    patches = lax.conv_general_dilated_patches(
        lhs,
        filter_shape=window,
        window_strides=window_strides,
        padding=padding,
        lhs_dilation=kwargs.get("lhs_dilation"),
        rhs_dilation=kwargs.get("rhs_dilation"),
        dimension_numbers=dn,
        precision=lax.Precision.HIGHEST,
    )
    lead = patches.shape[:-1]
    channels = lhs.shape[-1]
    patches = patches.reshape(*lead, channels, math.prod(window))
    return jnp.swapaxes(patches, -1, -2).reshape(*lead, math.prod(window) * channels)


def _lax_conv(lhs, rhs, window_strides, padding, **kwargs):
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, **kwargs)


class _FloatHook:
    """Runs the layer in float and hands each call's inputs to ``_record``: the input rows
    ``x[M, K]`` (conv: im2col patches) and the rows a static activation range is taken over (conv:
    whole input examples flattened), with the shapes they were flattened from (``lead``: the
    rows' leading axes, batch first; ``examples``: the conv input's shape, None where the range
    rows are the input rows)."""

    def _record(self, x2d: jax.Array, act_rows: jax.Array, lead: tuple, examples: tuple | None):
        raise NotImplementedError

    def dot_general(self, lhs, rhs, dimension_numbers, precision=None, **kwargs):
        x2d, free_shape = dense_rows(lhs, dimension_numbers)
        self._record(x2d, x2d, free_shape, None)
        return lax.dot_general(lhs, rhs, dimension_numbers, precision=precision, **kwargs)

    def conv(self, lhs, rhs, window_strides, padding, **kwargs):
        patches = conv_patches(lhs, rhs, window_strides, padding, **kwargs)
        x2d = patches.reshape(-1, patches.shape[-1])
        self._record(x2d, _per_example(lhs), patches.shape[:-1], lhs.shape)
        return _lax_conv(lhs, rhs, window_strides, padding, **kwargs)


@dataclasses.dataclass
class CaptureHook(_FloatHook):
    """Records, per call, what calibration asked for: ``xtx`` (sum of X^T X, float32 [K, K]),
    ``rows`` (count), ``sample`` (a few input rows for static activation ranges; for
    convolutions whole input examples flattened) and, asked for, ``extremes`` (`extreme_rows` of
    them), ``bounds`` (the smallest and largest value of each column of those rows ``[2, K]``:
    an exact min-max range; with a ``rotation``, of the rotated rows), ``absmax`` and ``absum``
    (max and sum of ``|x|`` per input column: smoothing, AWQ). Given the float model's input
    rows of the same calls (``float_inputs``, from an `InputsHook` on the same batch), also
    ``xtf``: the sum of X^T X_float (GPTAQ's cross moment).

    ``row_mask``: which positions of the batch hold data (`fit_row_mask`); the statistics are
    those of the kept rows only, and ``sample_keep`` / ``extremes_keep`` say which of the
    sampled rows are real (a batch may hold fewer than are sampled). None: every row counts."""

    hessian: bool
    sample_rows: int
    extremes: bool = False
    bounds: bool = False
    rotation: InputTransform | None = None
    absmax: bool = False
    absum: bool = False
    active: jax.Array | bool = True  # False (at run time): skip the X^T X products
    float_inputs: list[jax.Array] | None = None
    row_mask: jax.Array | None = None
    records: list[dict[str, jax.Array]] = dataclasses.field(default_factory=list)

    def _record(self, x2d: jax.Array, act_rows: jax.Array, lead: tuple, examples: tuple | None):
        x32 = x2d.astype(jnp.float32)
        k = x32.shape[1]
        float_rows = None if self.float_inputs is None else self.float_inputs[len(self.records)]
        if self.row_mask is None:
            keep = act_kept = None
            rec: dict[str, jax.Array] = {"rows": jnp.asarray(x2d.shape[0], jnp.float32)}
        else:  # the rows it drops: zero in the moments, outside the bounds, never sampled
            keep = fit_row_mask(self.row_mask, lead)
            act_kept = (  # per element: a conv's range rows are whole examples, padding inside
                keep[:, None]
                if examples is None
                else fit_row_mask(self.row_mask, examples).reshape(act_rows.shape)
            )
            x32 = jnp.where(keep[:, None], x32, 0.0)
            if float_rows is not None:
                float_rows = jnp.where(keep[:, None], float_rows, 0.0)
            rec = {"rows": jnp.sum(keep, dtype=jnp.float32)}
        if self.hessian:
            rec["xtx"] = lax.cond(
                self.active,
                lambda x: jnp.dot(x.T, x, precision=lax.Precision.HIGHEST),
                lambda x: jnp.zeros((k, k), jnp.float32),
                x32,
            )
        if float_rows is not None:
            rec["xtf"] = lax.cond(
                self.active,
                lambda x, y: jnp.dot(x.T, y, precision=lax.Precision.HIGHEST),
                lambda x, y: jnp.zeros((k, k), jnp.float32),
                x32,
                float_rows,
            )
        if self.absmax:
            rec["absmax"] = jnp.max(jnp.abs(x32), axis=0)
        if self.absum:
            rec["absum"] = jnp.sum(jnp.abs(x32), axis=0)
        rows = act_rows.astype(jnp.float32)
        if self.sample_rows and act_kept is None:
            rec["sample"] = rows[spread_rows(rows.shape[0], self.sample_rows)]
            if self.extremes:
                rec["extremes"] = rows[extreme_rows(rows, EXTREME_ROWS)]
        elif self.sample_rows:
            if examples is not None:
                raise ValueError(
                    "a calibration row mask cannot leave padding out of a convolution's "
                    "sampled examples (a static range chosen by a clipping quantizer, or a "
                    "smoothed and rotated layer): use min-max ranges there, or no row mask"
                )
            picked, real = spread_kept_rows(keep, self.sample_rows)
            rec["sample"], rec["sample_keep"] = rows[picked], real
            if self.extremes:
                picked = extreme_rows(rows, EXTREME_ROWS, keep)
                first = ~jnp.any(jnp.tril(picked[:, None] == picked[None, :], -1), axis=1)
                rec["extremes"], rec["extremes_keep"] = rows[picked], keep[picked] & first
        if self.bounds:
            seen = rows if self.rotation is None else self.rotation.apply(rows)
            low = high = seen
            if act_kept is not None:
                low = jnp.where(act_kept, seen, jnp.inf)
                high = jnp.where(act_kept, seen, -jnp.inf)
            rec["bounds"] = jnp.stack(
                [jnp.min(low, axis=0, initial=jnp.inf), jnp.max(high, axis=0, initial=-jnp.inf)]
            )
        self.records.append(rec)


def fit_row_mask(mask: jax.Array, lead: tuple[int, ...]) -> jax.Array:
    """A batch's position mask (``[B, T]``, True where the inputs hold data, e.g. tokens that
    are not padding) as one flag per row of a layer whose rows are ``lead`` flattened (its
    input's axes but the contracted ones, batch first: `dense_rows`): each flag repeated over
    the axes the layer adds after the mask's (attention heads, channels), or, for rows of fewer
    axes (a row per sequence after pooling), kept if any of its positions is."""
    mask = jnp.asarray(mask).astype(bool)
    lead, n = tuple(lead), mask.ndim
    if lead[:n] == mask.shape:
        spread = mask.reshape(mask.shape + (1,) * (len(lead) - n))
        return jnp.broadcast_to(spread, lead).reshape(-1)
    if len(lead) < n and mask.shape[: len(lead)] == lead:
        return mask.reshape(math.prod(lead), -1).any(axis=1)
    raise ValueError(
        f"a calibration row mask of shape {mask.shape} does not fit a layer whose input rows "
        f"have the leading axes {lead}: the mask must mark the axes the layer's input starts "
        "with (example, position)"
    )


def spread_kept_rows(keep: jax.Array, take: int) -> tuple[jax.Array, jax.Array]:
    """`spread_rows` over the rows ``keep`` marks: ``min(take, M)`` row indices spread evenly
    over the kept rows (first and last included) and which of them to use (fewer kept rows
    than ``take`` repeat an index; a repeat and a batch with none kept are flagged False)."""
    take = min(take, keep.shape[0])
    kept_first = jnp.argsort(~keep, stable=True)  # the kept rows, in order, then the others
    n = jnp.sum(keep)
    steps = jnp.arange(take)
    at = jnp.round(steps * (jnp.maximum(n, 1) - 1) / max(take - 1, 1)).astype(jnp.int32)
    fresh = (steps == 0) | (at > jnp.roll(at, 1))
    return kept_first[at], fresh & (n > 0)


EXTREME_ROWS = 8  # rows per call kept for a static range of a smoothed and rotated layer


def spread_rows(m: int, take: int) -> np.ndarray:
    """``take`` row indices (at most ``m``) spread evenly over ``m`` rows, first and last
    included: a sample of every sequence of a batch, not of its first ones."""
    return np.unique(np.linspace(0, m - 1, min(take, m)).round().astype(np.int64))


def extreme_rows(rows: jax.Array, limit: int, keep: jax.Array | None = None) -> jax.Array:
    """Indices of ``limit >= 2`` distinct rows of ``rows[M, K]`` (all of them if M is smaller):
    the one holding the largest value, the one holding the smallest, then those with the largest
    norms. Where no exact range can be captured (smoothing then a rotation: the smoothing is
    known only after calibration) a min-max range is taken over them and the sample: a rotation
    keeps norms and bounds each rotated value by its row's norm. ``keep``: only those rows
    compete (the caller drops the others' indices, picked when too few are kept)."""
    m = rows.shape[0]
    if m <= limit:
        return jnp.arange(m)
    largest, smallest = jnp.max(rows, axis=1), jnp.min(rows, axis=1)
    norms = jnp.sum(rows * rows, axis=1)
    if keep is not None:
        largest = jnp.where(keep, largest, -jnp.inf)
        smallest = jnp.where(keep, smallest, jnp.inf)
        norms = jnp.where(keep, norms, -jnp.inf)
    ends = jnp.stack([jnp.argmax(largest), jnp.argmin(smallest)])
    norms = norms.at[ends].set(-jnp.inf)  # each row once
    by_norm = jax.lax.top_k(norms, limit - 1)[1]
    second = jnp.where(ends[1] == ends[0], by_norm[-1], ends[1])  # one row held both ends
    return jnp.concatenate([ends[:1], second[None], by_norm[: limit - 2]])


@dataclasses.dataclass
class InputsHook(_FloatHook):
    """Runs the layer in float and keeps its input rows per call (float32 ``[M, K]``)."""

    rows: list[jax.Array] = dataclasses.field(default_factory=list)

    def _record(self, x2d: jax.Array, act_rows: jax.Array, lead: tuple, examples: tuple | None):
        self.rows.append(x2d.astype(jnp.float32))


@dataclasses.dataclass
class QuantHook:
    """The quantized layer in a Flax module: `q4lab.layer_quant.quantized_dot` on its input rows.

    ``mode="int"``: ``qt`` (the weight `QTensor`) through integer ops; weight-only convs are not
    hooked (the module runs its own op on the kernel dequantized inside jit). ``"fake"``: the
    module's kernel is already the fake-quantized weight (``weight``: the same in float32, where
    the module casts its kernel to a narrower compute dtype); the hook quantizes the activations
    (``act``) and runs the float op in float32 (input transform: ``qt``'s, else ``transform``).
    ``"train"``: the values of ``"int"`` for ``qt`` (the training state frozen) with the
    gradients of ``"fake"`` for the module's kernel (its fake-quantized master weight), in input,
    weight and the learned steps.
    """

    qt: QTensor | None
    act: ActState | None
    mode: str
    transform: InputTransform | None = None
    weight: jax.Array | None = None

    def _fake_kernel(self, rhs: jax.Array) -> jax.Array:
        """The kernel the fake op multiplies: ``weight`` where it is the module's kernel (a bf16
        module rounds its kernel to bf16, the integer path does not), else ``rhs``."""
        if self.mode == "fake" and self.weight is not None and self.weight.shape == rhs.shape:
            return self.weight.astype(jnp.float32)
        return rhs

    def dot_general(self, lhs, rhs, dimension_numbers, precision=None, **kwargs):
        x2d, free_shape = dense_rows(lhs, dimension_numbers)
        out_shape = free_shape + tuple(
            rhs.shape[d] for d in range(rhs.ndim) if d not in dimension_numbers[0][1]
        )
        if self.mode == "int":
            y = quantized_dot(x2d, self.qt, self.act, "int")
        else:
            w2d = self._fake_kernel(rhs).reshape(x2d.shape[1], -1)
            transform = self.transform if self.qt is None else self.qt.transform
            frozen = self.qt if self.mode == "train" else None
            y = quantized_dot(x2d, w2d, self.act, self.mode, transform, frozen=frozen)
        return y.reshape(out_shape).astype(lhs.dtype)

    def conv(self, lhs, rhs, window_strides, padding, **kwargs):
        if self.mode == "int":
            return self._int_conv(self.act, lhs, rhs, window_strides, padding, **kwargs)

        def simulate(x, w):  # float32 products in full, as the integer path's
            full = kwargs | {"precision": lax.Precision.HIGHEST}
            return _lax_conv(
                x.astype(jnp.float32), w.astype(jnp.float32), window_strides, padding, **full
            )

        rows = _per_example(lhs)
        step = self.act.step(rows) if self.mode == "train" else None  # one range for both paths
        xq, _ = self.act.quantize(rows, self.mode, step)
        x_fake = xq.reshape(lhs.shape)
        if self.mode == "fake":
            return simulate(x_fake, self._fake_kernel(rhs)).astype(lhs.dtype)
        act, x, step = lax.stop_gradient((self.act, lhs, step))
        served = self._int_conv(act, x, rhs, window_strides, padding, step=step, **kwargs)
        return served_with_gradients_of(simulate, served, x_fake, rhs)

    def _int_conv(self, act, lhs, rhs, window_strides, padding, step=None, **kwargs):
        """The conv as integer codes: im2col patches of the activation codes (one scale per
        example, see ActSpec) times the weight codes (``rhs``: only its shape; ``step``: the
        activations' range when the caller has it)."""
        xq, scale = act.quantize(_per_example(lhs), "int", step)
        codes = xq.reshape(lhs.shape).astype(jnp.float32)  # small integers: exact in float32
        patches = conv_patches(codes, rhs, window_strides, padding, **kwargs)
        lead = patches.shape[:-1]
        per_example = math.prod(lead[1:])
        row_scale = jnp.repeat(scale, per_example, axis=0) if scale.shape[0] > 1 else scale
        xc = patches.reshape(-1, patches.shape[-1]).astype(xq.dtype)
        y = int_matmul(xc, row_scale, self.qt).reshape(*lead, self.qt.n)

        def nan_inputs():  # the outputs whose receptive field holds a NaN
            nan = jnp.isnan(lhs).astype(jnp.float32)
            return conv_patches(nan, rhs, window_strides, padding, **kwargs).max(axis=-1) > 0

        return act.keep_nan(nan_inputs, y).astype(lhs.dtype)
