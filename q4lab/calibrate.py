"""Calibration: run the model on held-out batches and collect, per layer, only the
statistics its quantizers asked for, accumulated in float32 without keeping all activations:

  "hessian"     ``H = 2 X^T X / n`` over the layer's input rows ``X[n, K]`` (conv: im2col patches)
  "act_sample"  up to ``max_sample_rows`` input rows (conv: whole examples) spread evenly over
                every batch, for static activation ranges chosen by a clipping quantizer
                (`q4lab.core.act_params`)
  "act_bounds"  the smallest and the largest value of each input column over every calibration
                row (float32 ``[2, K]``; conv: of whole examples), for an exact min-max static
                range; for a layer given a ``rotations`` entry, of the rotated rows
  "act_extremes" up to ``max_sample_rows // 8`` distinct rows of the largest value, the smallest
                and the largest norms (`q4lab.hooks.extreme_rows`), with "act_sample": a
                min-max range where the bounds cannot be had (a smoothed and rotated layer,
                whose smoothing is known only after calibration)
  "act_absmax"  ``max |X|`` per input column (float32 ``[K]``), for SmoothQuant's scales
  "act_absmean" mean ``|X|`` per input column (float32 ``[K]``), for AWQ's scales

The model runs with whatever parameters it is given: the float model, or (sequential
quantization, as in GPTQ's reference) the model whose earlier layers are already quantized.
Given a ``row_mask`` (a function of a batch: True where its positions hold data, e.g. tokens
that are not padding) every statistic is that of the kept rows only.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from q4lab.adapters import Adapter, PyTree, RowMask, input_shapes
from q4lab.core.transforms import InputTransform
from q4lab.hooks import CaptureHook, InputsHook, extreme_rows, spread_rows


def _merge_calls(records: list[dict[str, jax.Array]]) -> dict[str, jax.Array]:
    """One layer called several times in a forward: sum the moments, stack the samples."""
    out: dict[str, jax.Array] = {"rows": sum(r["rows"] for r in records)}
    for moment in _SUMMED:
        if moment in records[0]:
            out[moment] = sum(r[moment] for r in records)
    for rows in ("sample", "sample_keep", "extremes", "extremes_keep"):
        if rows in records[0]:
            out[rows] = jnp.concatenate([r[rows] for r in records])
    if "absmax" in records[0]:
        out["absmax"] = functools.reduce(jnp.maximum, [r["absmax"] for r in records])
    if "bounds" in records[0]:
        out["bounds"] = functools.reduce(_widest, [r["bounds"] for r in records])
    return out


def _widest(a, b):
    """The bounds ``[2, K]`` (smallest, largest) holding both ``a`` and ``b``."""
    return jnp.stack([jnp.minimum(a[0], b[0]), jnp.maximum(a[1], b[1])])


# The moments a `CaptureHook` record holds that add up over calls and batches.
_SUMMED = ("xtx", "xtf", "absum")


class Calibrator:
    """Collects the statistics of ``needs`` (path -> names in the module docstring) with one
    compiled forward, reused across calls: sequential quantization reruns it after each layer
    with the parameters changed, never with a new trace. ``row_mask``: only the rows it keeps
    count (module docstring)."""

    def __init__(
        self,
        adapter: Adapter,
        needs: Mapping[str, set[str]],
        *,
        max_sample_rows: int = 2048,
        row_mask: RowMask | None = None,
    ):
        self.wanted = {path: set(n) for path, n in needs.items() if n}
        self.max_sample_rows = max_sample_rows
        self.row_mask = row_mask
        per_batch = max(1, max_sample_rows // 8)

        crossed = [path for path, n in self.wanted.items() if "cross" in n]

        def forward(p, float_p, x, active, rotations):
            float_inputs = {path: InputsHook() for path in crossed}
            mask = None if row_mask is None else row_mask_of(row_mask, x)
            if crossed:
                adapter.apply(float_p, x, float_inputs)
            hooks = {
                path: CaptureHook(
                    hessian="hessian" in n,
                    sample_rows=per_batch * ("act_sample" in n),
                    extremes="act_extremes" in n,
                    bounds="act_bounds" in n,
                    rotation=rotations.get(path),
                    absmax="act_absmax" in n,
                    absum="act_absmean" in n,
                    active=active[path],
                    float_inputs=float_inputs[path].rows if path in float_inputs else None,
                    row_mask=mask,
                )
                for path, n in self.wanted.items()
            }
            adapter.apply(p, x, hooks)
            return {path: _merge_calls(h.records) for path, h in hooks.items() if h.records}

        self._step = jax.jit(forward)

    def __call__(
        self,
        params: PyTree,
        batches: Iterable[jax.Array],
        only: Iterable[str] | None = None,
        float_params: PyTree | None = None,
        rotations: Mapping[str, InputTransform] | None = None,
    ) -> dict[str, dict[str, jax.Array]]:
        """Statistics per layer path (of the layers in ``only``, default all); moments are
        summed on the host in float64. ``only`` is a run-time argument: the other layers' moments
        are skipped (``lax.cond``) without a new compile. ``float_params``: the float model, for
        "cross" (default: ``params``). ``rotations``: per layer, the rotation its "act_bounds"
        are taken after (its seed a run-time argument)."""
        if not self.wanted:
            return {}
        float_params = params if float_params is None else float_params
        chosen = set(self.wanted) if only is None else set(only) & set(self.wanted)
        active = {path: jnp.asarray(path in chosen) for path in self.wanted}
        totals: dict[str, dict[str, Any]] = {}
        for i, batch in enumerate(batches):
            try:
                records = self._step(params, float_params, batch, active, dict(rotations or {}))
            except flax.errors.ScopeParamShapeError as err:
                raise ValueError(
                    f"calibration batch {i} of shape(s) {input_shapes(batch)} does not fit the "
                    f"model's parameters: {err}"
                ) from err
            for path, rec in records.items():
                if path not in chosen:
                    continue
                acc = totals.setdefault(path, {"rows": 0.0, "samples": [], "extremes": []})
                acc["rows"] += float(rec["rows"])
                for moment in _SUMMED:
                    if moment in rec:
                        summed = np.asarray(rec[moment], np.float64)
                        acc[moment] = acc.get(moment, 0.0) + summed
                if "absmax" in rec:
                    seen = np.asarray(rec["absmax"])
                    acc["absmax"] = np.maximum(acc.get("absmax", seen), seen)
                if "bounds" in rec:
                    seen = np.asarray(rec["bounds"])
                    acc["bounds"] = np.asarray(_widest(acc.get("bounds", seen), seen))
                if "sample" in rec:  # batches alike: thinned by the same stride
                    stride = acc.setdefault("stride", 1)
                    fresh_rows = _real(rec, "sample")[::stride]
                    acc["samples"] = [np.concatenate([*acc["samples"], fresh_rows])]
                    if len(acc["samples"][0]) >= 2 * self.max_sample_rows:  # held: < 2x
                        acc["samples"], acc["stride"] = [acc["samples"][0][::2]], 2 * stride
                if "extremes" in rec:
                    rows = np.concatenate([*acc["extremes"], _real(rec, "extremes")])
                    kept = extreme_rows(jnp.asarray(rows), max(2, self.max_sample_rows // 8))
                    acc["extremes"] = [rows[np.asarray(kept)]]
        missing = sorted(chosen - set(totals))
        if missing:
            raise ValueError(f"calibration data never reached layer(s) {missing}")
        empty = sorted(path for path, acc in totals.items() if not acc["rows"])
        if empty:  # statistics of no rows: 0/0
            why = " (the row mask kept none of their rows)" if self.row_mask is not None else ""
            raise ValueError(f"the calibration batches gave layer(s) {empty} no input rows{why}")
        stats: dict[str, dict[str, jax.Array]] = {}
        for path, acc in totals.items():
            out: dict[str, jax.Array] = {}
            if "xtx" in acc:
                out["hessian"] = jnp.asarray(2.0 * acc["xtx"] / acc["rows"], jnp.float32)
            if "xtf" in acc:
                out["cross"] = jnp.asarray(2.0 * acc["xtf"] / acc["rows"], jnp.float32)
            if "absmax" in acc:
                out["act_absmax"] = jnp.asarray(acc["absmax"])
            if "bounds" in acc:
                out["act_bounds"] = jnp.asarray(acc["bounds"])
            if "absum" in acc:
                out["act_absmean"] = jnp.asarray(acc["absum"] / acc["rows"], jnp.float32)
            if acc["samples"]:
                samples = acc["samples"][0]
                out["act_sample"] = jnp.asarray(
                    samples[spread_rows(len(samples), self.max_sample_rows)]
                )
            if acc["extremes"]:
                out["act_extremes"] = jnp.asarray(acc["extremes"][0])
            stats[path] = out
        return stats


def row_mask_of(row_mask: RowMask, batch: Any) -> jax.Array:
    """``row_mask(batch)``, checked: booleans (True where the batch holds data)."""
    try:
        mask = jnp.asarray(row_mask(batch))
    except (TypeError, KeyError, IndexError, jax.errors.TracerArrayConversionError) as err:
        raise ValueError(
            f"the row mask {getattr(row_mask, '__qualname__', row_mask)!r} failed on a "
            f"calibration batch of shape(s) {input_shapes(batch)}: {type(err).__name__}: {err} "
            "(it is called under jit, with the batch as the model takes it: use jax.numpy)"
        ) from err
    if mask.dtype != jnp.bool_:
        raise ValueError(
            f"the row mask returned {mask.dtype}{list(mask.shape)}; allowed: booleans, True "
            "where the batch holds data (e.g. ids != pad_id)"
        )
    return mask


def _real(rec: dict[str, jax.Array], rows: str) -> np.ndarray:
    """A record's sampled ``rows``, less those its row mask flagged as not real."""
    out = np.asarray(rec[rows])
    return out[np.asarray(rec[f"{rows}_keep"])] if f"{rows}_keep" in rec else out


@functools.lru_cache(maxsize=32)
def _cached(
    adapter: Adapter,
    needs: tuple[tuple[str, tuple[str, ...]], ...],
    max_sample_rows: int,
    row_mask: RowMask | None,
) -> Calibrator:
    wanted = {path: set(n) for path, n in needs}
    return Calibrator(adapter, wanted, max_sample_rows=max_sample_rows, row_mask=row_mask)


def cached_calibrator(
    adapter: Adapter,
    needs: Mapping[str, set[str]],
    *,
    max_sample_rows: int = 2048,
    row_mask: RowMask | None = None,
) -> Calibrator:
    """A `Calibrator` shared by every call with an equal (hashable) adapter, needs, sample
    bound and row mask, so a sweep compiles the calibration forward once per model and recipe
    structure."""
    key = tuple(sorted((p, tuple(sorted(n))) for p, n in needs.items()))
    return _cached(adapter, key, max_sample_rows, row_mask)


def calibrate(
    adapter: Adapter,
    params: PyTree,
    needs: Mapping[str, set[str]],
    batches: Iterable[jax.Array],
    *,
    max_sample_rows: int = 2048,
    rotations: Mapping[str, InputTransform] | None = None,
    row_mask: RowMask | None = None,
) -> dict[str, dict[str, jax.Array]]:
    """Statistics per layer path of the model with ``params`` (see `Calibrator`)."""
    calibrator = cached_calibrator(
        adapter, needs, max_sample_rows=max_sample_rows, row_mask=row_mask
    )
    return calibrator(params, batches, rotations=rotations)
