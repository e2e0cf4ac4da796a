"""What the shipped experiments would run on a GPU, checked from this CPU (issue 14 without a
device: the quantized matmuls of every experiment, as the GPU rules would run them).

    python benchmarks/gpu_dry_run.py                                   # experiments/*.py
    python benchmarks/gpu_dry_run.py experiments/w4a4.py --out dry.md

1. Each experiment's 4-bit points are reduced to one per structure: the fields that decide a
   model's quantized matmuls (`STRUCTURE`, every point field but `VALUE_FIELDS`: task, group
   size, activation bits and mode, symmetry, scale dtype, rotation, rules, calibration size;
   with QAT its method, loss and batch size), by min-max weights at seed 0, and one QAT step
   where the point trains (QAT's training forward runs the same ops, at its batch's M). The
   quantizer, the seed, clipping, smoothing and the number of QAT steps change the codes'
   values, not the calls (so does the symmetric grid). A mixed-precision budget point
   stands for uniform 4-bit points at each of its groups. Each point runs here as a sweep runs
   it, and every ``w4a16_matmul`` / ``int_matmul`` call its model makes is recorded: operation,
   K x N, scale grid, M, activation dtype, row-scale rows. Where a point of the structure stores
   GPTQ's act-order permutation (act-order with dynamic groups, so grouped weights; by GPTQ's
   options or AWQ's final GPTQ), its grouped calls are also checked with one.
2. Each distinct call is checked as a GPU would run it, without one:
   - "GPU runs": the path ``impl="auto"`` takes on a GPU (`choose` with ``backend="gpu"``: the
     `GPU_CHOICES` rules; K-major weights, which no experiment lays out, show their non-Hopper
     path), and "Triton kernel": its tiling for the call, or why it cannot take it;
   - "lowered": that path lowered for CUDA from here (`q4lab.ops.lowered_for_gpu`; a Triton
     kernel is lowered to its Triton IR), ``ok`` or the error; "TF32 dots": the float32 dots in
     it at the default precision, which a GPU rounds (`q4lab.ops.rounded_dots`);
   - "max err": that path run here on random operands of the call's shape (a Triton kernel
     through Pallas' interpreter) against the reference, max |delta| / max |y|, flagged above
     1e-4 (exact weights, float32 sums in another order); "run error": what stopped it.

What it cannot show: compile and run times on a GPU (`gpu_check.sh`, step smoke). Exit status 1
when a call fails to lower or to run, has TF32 dots, or disagrees.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import sys
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

import q4lab.evaluate  # noqa: F401  (imports the modules whose op calls are recorded)
from q4lab import ops
from q4lab.core import QTensor
from q4lab.ops import autotune, choose, lowered_for_gpu, pallas_gpu, rounded_dots
from q4lab.sweep import load_experiment
from q4lab.sweep.fields import BUDGET_FIELDS, FIELDS, QAT_FIELDS
from q4lab.sweep.runner import evaluate_point

TOLERANCE = 1e-4  # relative to max |y|: exact weights, float32 sums in another order
# The point fields that change only the codes' values, not which matmuls a model makes (the
# quantizer, seed, clipping, smoothing, calibration order, QAT's steps and rate), and the
# budget fields (`_four_bit` expands them). Every other field is structure: a field added to
# `FIELDS` later splits points until it is listed here.
VALUE_FIELDS = (
    "seed",
    "quantizer",
    "options",
    "symmetric_grid",  # the scales' values; codes, kernels and shapes alike
    "act_clipping",
    "act_clipping_options",
    "smooth_alpha",
    "sequential",
    "calib_padding",  # which calibration rows count: the ranges' values
    "qat_steps",
    "qat_lr",
    *BUDGET_FIELDS,
)
STRUCTURE = tuple(f for f in FIELDS if f not in VALUE_FIELDS and f not in QAT_FIELDS)
QAT_STRUCTURE = tuple(f for f in QAT_FIELDS if f not in VALUE_FIELDS)  # where the point trains
DRY_RUN_VALUES = {"seed": 0, "quantizer": "minmax", "options": {}}  # what the dry run runs instead
OPS = {"w4a16_matmul": ops.w4a16_matmul, "int_matmul": ops.int_matmul}


@dataclasses.dataclass
class Call:
    """One distinct quantized matmul: its stand-in weight and what made it."""

    op: str
    qt: QTensor
    m: int
    dtype: jnp.dtype  # of x (W4A16) or of the activation codes (W4A4)
    scale_rows: int | None  # W4A4: rows of x_scale (M dynamic, 1 static)
    impl: str
    sources: set[str] = dataclasses.field(default_factory=set)

    @property
    def w4a4(self) -> bool:
        return self.op == "int_matmul"

    @property
    def key(self) -> str:
        text = autotune.key(self.qt, self.m, w4a4=self.w4a4, dtype=self.dtype)
        scales = f" x_scale[{self.scale_rows}]" if self.w4a4 and self.scale_rows == 1 else ""
        return text + scales + ("" if self.impl == "auto" else f" impl={self.impl}")


def _structure(point: dict) -> str:
    qat = [point[field] for field in QAT_STRUCTURE] if point["qat_steps"] else []
    return repr([point[field] for field in STRUCTURE] + qat)


def stores_perm(point: dict) -> bool:
    """Whether this point's weights keep GPTQ's act-order permutation (`q4lab.quantizers.gptq`:
    act-order with dynamic groups), by its quantizer options (AWQ's final quantizer included)."""
    quantizer, options = point["quantizer"], dict(point["options"])
    if quantizer == "awq":
        quantizer, options = options.get("quantizer"), dict(options.get("quantizer_options", ()))
    dynamic_groups = point["group_size"] > 0 and not options.get("static_groups")
    return quantizer == "gptq" and bool(options.get("act_order")) and dynamic_groups


def _four_bit(points: list[dict]) -> Iterator[dict]:
    """The 4-bit points; a budget point as uniform 4-bit points at each of its groups."""
    for point in points:
        if not point["bits_budget"]:
            yield from [point] if point["bits"] == 4 else []
        elif 4 in point["budget_widths"]:
            for group in point["budget_groups"] or [point["group_size"]]:
                yield point | {"bits": 4, "group_size": group, "bits_budget": 0.0}


def structures(points: list[dict]) -> list[tuple[dict, bool]]:
    """One point per structure of the experiment's 4-bit points (module docstring), each with
    whether a point of that structure stores an act-order permutation."""
    chosen: dict[str, tuple[dict, bool]] = {}
    for point in _four_bit(points):
        structure = _structure(point)
        first = point | DRY_RUN_VALUES | {"qat_steps": min(point["qat_steps"], 1)}
        first, perm = chosen.get(structure, (first, False))
        chosen[structure] = (first, perm or stores_perm(point))
    return list(chosen.values())


@contextlib.contextmanager
def recording(calls: dict[str, Call], source: str, seen: set[str]) -> Iterator[None]:
    """Record into ``calls`` every op call q4lab's modules make while a model is traced inside
    the block, and their keys into ``seen`` (the modules call the ops by the names they
    imported, which are swapped for recording wrappers)."""

    def wrap(op: str, fn: Callable) -> Callable:
        def recorded(*args, impl: str = "auto"):
            *activations, qt = args  # (x,) or W4A4's (xc, x_scale)
            call = Call(
                op=op,
                qt=qt,
                m=activations[0].shape[0],
                dtype=jnp.dtype(activations[0].dtype),
                scale_rows=activations[1].shape[0] if len(activations) == 2 else None,
                impl=impl,
            )
            if call.key not in calls:
                calls[call.key] = dataclasses.replace(call, qt=autotune.stand_in(qt))
            calls[call.key].sources.add(source)
            seen.add(call.key)
            return fn(*args, impl=impl)

        return recorded

    swapped = [
        (module, name, fn)
        for module in list(sys.modules.values())
        if getattr(module, "__name__", "").startswith("q4lab.")
        and not module.__name__.startswith("q4lab.ops")
        for name, fn in OPS.items()
        if getattr(module, name, None) is fn
    ]
    if not swapped:
        raise RuntimeError("no q4lab module calls the ops by these names; nothing to record")
    for module, name, fn in swapped:
        setattr(module, name, wrap(name, fn))
    try:
        yield
    finally:
        for module, name, fn in swapped:
            setattr(module, name, fn)


def with_permutation(call: Call) -> Call:
    """``call`` on a weight whose rows are stored in GPTQ's act-order (a random ``perm``)."""
    perm = np.random.default_rng(call.qt.k).permutation(call.qt.k)
    qt = dataclasses.replace(call.qt, perm=jnp.asarray(perm, jnp.uint16))
    return dataclasses.replace(call, qt=qt, sources=set())


def _gpu_path(call: Call) -> str:
    if call.impl != "auto":
        return call.impl
    if call.w4a4 and call.dtype != jnp.int8:  # int_matmul sends these to xla on every backend
        return "xla"
    return choose(call.qt, call.m, w4a4=call.w4a4, dtype=call.dtype, backend="gpu")


def _kernel(call: Call) -> str:
    """The Triton kernel's tiling for this call, or why it cannot take it."""
    why = pallas_gpu.unsupported(call.qt, call.m, w4a4=call.w4a4)
    if why:
        return f"no: {why}"
    c = pallas_gpu.default_config(call.m, w4a4=call.w4a4)
    split = "" if call.w4a4 else f", split_k {c.split_k}"
    return f"block_m {c.block_m}, block_n {c.block_n}{split}"


def _as_run(path: str, op: Callable, *, on_gpu: bool) -> Callable:
    """``op`` by ``path``: on the GPU (for lowering) or here (a Triton kernel interpreted)."""
    kernel = pallas_gpu.w4a4_pallas if op is ops.int_matmul else pallas_gpu.w4a16_pallas
    if path == "pallas":  # the kernel itself: impl="pallas" is refused off a GPU
        return lambda *a: kernel(*a, interpret=not on_gpu)
    return lambda *a: op(*a, impl=path)


def _first_line(error: Exception) -> str:
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:120]}"


def check(call: Call) -> dict:
    """One row of the table (module docstring)."""
    start = time.perf_counter()
    path, op = _gpu_path(call), OPS[call.op]
    activations = autotune.activation_stand_ins(
        call.qt.k, call.m, w4a4=call.w4a4, dtype=call.dtype, scale_rows=call.scale_rows
    )
    args = (*activations, call.qt)
    lowered, rounded, error, run_error = "ok", 0, float("nan"), ""
    try:
        rounded = len(
            rounded_dots(lowered_for_gpu(_as_run(path, op, on_gpu=True), *args).as_text())
        )
    except Exception as e:
        lowered = _first_line(e)
    try:
        y = np.asarray(jax.jit(_as_run(path, op, on_gpu=False))(*args))
        ref = np.asarray(jax.jit(lambda *a: op(*a, impl="reference"))(*args))
        error = float(np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-30))
    except Exception as e:
        run_error = _first_line(e)
    passed = lowered == "ok" and not rounded and error <= TOLERANCE  # NaN fails
    return {
        "experiments": ", ".join(sorted(call.sources)),
        "call": call.key,
        "GPU runs": path,
        "Triton kernel": _kernel(call) if call.qt.spec.nibbles else "",
        "lowered": lowered,
        "TF32 dots": rounded,
        "max err": error,
        "run error": run_error,
        "flag": "" if passed else "FAIL",
        "s": time.perf_counter() - start,
    }


def record_experiment(path: str, calls: dict[str, Call]) -> int:
    """Run ``path``'s structures here, recording their calls; returns how many points ran."""
    name = path.rsplit("/", 1)[-1].removesuffix(".py")
    chosen = structures(load_experiment(path).points)
    for point, perm in chosen:
        start, seen = time.perf_counter(), set()
        jax.clear_caches()  # calls are seen while a model is traced: trace this point's afresh
        with recording(calls, name, seen):
            evaluate_point(point)
        for key in sorted(seen) if perm else []:
            if calls[key].qt.spec.nibbles and calls[key].qt.scale.shape[0] > 1:
                variant = with_permutation(calls[key])
                calls.setdefault(variant.key, variant).sources.add(name)
        fields = ", ".join(f"{field}={point[field]!r}" for field in STRUCTURE)
        took = time.perf_counter() - start
        print(f"{name}: {fields}, act-order {perm} ({took:.1f} s)", file=sys.stderr, flush=True)
    return len(chosen)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiments", nargs="*", default=sorted(glob.glob("experiments/*.py")))
    parser.add_argument("--out", help="also write the table (markdown) to this file")
    args = parser.parse_args()
    calls: dict[str, Call] = {}
    with autotune.use(None):  # the rules, whatever $Q4LAB_AUTOTUNE says
        ran = sum(record_experiment(path, calls) for path in args.experiments)
        rows = []
        for call in sorted(calls.values(), key=lambda c: (c.op, c.qt.k, c.qt.n, c.m, c.key)):
            rows.append(check(call))
            cells = (
                f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()
            )
            print(" | ".join(cells), file=sys.stderr, flush=True)
    table = pd.DataFrame(rows)
    text = (
        f"{len(calls)} distinct quantized matmuls of {ran} points ({', '.join(args.experiments)}),"
        f" checked as a GPU runs them from {jax.default_backend()}, jax {jax.__version__}\n\n"
        + table.to_markdown(index=False, floatfmt=".2g")
        + "\n"
    )
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    failed = table[table["flag"] != ""]
    if len(failed):
        print(
            f"{len(failed)} call(s) failed (lowering, TF32 dots, running or disagreeing)",
            file=sys.stderr,
        )
    return int(len(failed) > 0)


if __name__ == "__main__":
    raise SystemExit(main())
