"""Does ``impl="auto"`` run the fastest path? Every path that can run a call, timed side by side
by the autotuner (`q4lab.ops.autotune`), against what the fixed rules pick (`q4lab.ops.choose`
without a table: `GPU_CHOICES` on a GPU, blocked on CPU).

    python benchmarks/dispatch_check.py                               # the shapes below
    python benchmarks/dispatch_check.py --shapes 4096x4096 --m 1 16 --group 0

Weights: symmetric 4-bit codes with group-128 float16 scales (``--group 0``: per-channel), x in
bfloat16 on a GPU and float32 on CPU (``--dtype``); W4A4 takes int8 activation codes. One row per
shape, M and operation: each path's ms (paths that failed or disagreed with the reference are
listed apart), the fastest, the rules' pick and its time over the fastest, flagged ``SLOW`` when
more than 10 % slower (issue 14's dispatch rule: the cue to change `GPU_CHOICES`, or to run with
``Q4LAB_AUTOTUNE=1``) and ``NOT RUN`` when the rules' pick was not timed (it failed or disagreed,
or is not among the candidates); "tune s" is what the autotuner's measuring of this call took,
compiles included (`Q4LAB_AUTOTUNE=1` pays it once per call and device). Times are medians of
alternating rounds (`autotune.time_paths`), each path cycling through up to 8 weight copies (at
most 256 MiB; small weights may stay in cache, as they would in a small model).
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import jax
import jax.numpy as jnp
import pandas as pd

from q4lab.core import QuantSpec
from q4lab.ops import autotune, candidate_name, candidates, choose, on_gpu, tuning_paths
from q4lab.quantizers import get_quantizer

SHAPES = ("4096x4096", "8192x8192", "8192x28672")
BATCHES = (1, 16, 4096)
SLACK = autotune.SLACK


def check_call(qt, m: int, *, w4a4: bool, dtype, seconds: float | None = None) -> dict:
    """One row: every candidate of this call measured as the autotuner does, beside the rules'
    pick (taken with no table in use, whatever ``$Q4LAB_AUTOTUNE`` says)."""
    with autotune.use(None):
        rules = choose(qt, m, w4a4=w4a4, dtype=dtype)
    names = candidates(qt, m, w4a4=w4a4, dtype=dtype)
    timed = candidate_name(rules, names)  # as the autotuner passes the rules' pick
    start = time.perf_counter()
    entry = autotune.measure(
        *tuning_paths(names, qt, m, w4a4=w4a4, dtype=dtype), rules=timed, seconds=seconds
    )
    tune_seconds = time.perf_counter() - start
    ms = entry["ms"]
    ratio = ms[timed] / min(ms.values()) if timed in ms else math.nan
    return {
        "KxN": f"{qt.k}x{qt.n}",
        "M": m,
        "op": "W4A4" if w4a4 else "W4A16",
        "paths (ms)": ", ".join(f"{name} {t:.4g}" for name, t in ms.items()),
        "fastest": min(ms, key=ms.get),
        "rules": rules,
        "rules / fastest": ratio,
        "flag": "NOT RUN" if math.isnan(ratio) else "SLOW" if ratio > 1 + SLACK else "",
        "rejected": "; ".join(f"{k}: {v}" for k, v in entry["rejected"].items()),
        "tune s": tune_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="*", default=list(SHAPES))
    parser.add_argument("--m", nargs="*", type=int, default=list(BATCHES))
    parser.add_argument("--group", type=int, default=128, help="weight group size (0: per-channel)")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--seconds", type=float, help="per call (default: autotune.SECONDS)")
    parser.add_argument("--out", help="also write the table (markdown) to this file")
    args = parser.parse_args()
    dtype = jnp.dtype(args.dtype or ("bfloat16" if on_gpu() else "float32"))
    spec = QuantSpec(bits=4, group_size=args.group or None, scale_dtype="float16")
    rows = []
    for shape in args.shapes:
        k, n = (int(v) for v in shape.lower().split("x"))
        w = jax.random.normal(jax.random.key(k + n), (k, n), jnp.float32) / math.sqrt(k)
        qt = get_quantizer("minmax").quantize(w, spec)
        for m in args.m:
            for w4a4, x_dtype in ((False, dtype), (True, jnp.int8)):
                rows.append(check_call(qt, m, w4a4=w4a4, dtype=x_dtype, seconds=args.seconds))
                row = rows[-1]
                print(
                    f"{row['KxN']} M={m} {row['op']}: {row['paths (ms)']}; rules {row['rules']} "
                    f"{row['rules / fastest']:.3g}x the fastest {row['flag']} "
                    f"({row['tune s']:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
    table = pd.DataFrame(rows)
    device = jax.devices()[0]
    slow = int((table.flag == "SLOW").sum())
    text = (
        f"{device.platform} ({device.device_kind}), jax {jax.__version__}, x {dtype.name}, "
        f"{spec.describe()}\n\n{table.to_markdown(index=False, floatfmt='.3g')}\n\n"
        f"The rules pick a path more than {SLACK:.0%} slower than the fastest on {slow} of "
        f"{len(table)} calls.\n"
    )
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
