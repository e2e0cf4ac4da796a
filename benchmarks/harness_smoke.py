"""The harness on this backend: every point of an experiment, with its compile and run times.

    python benchmarks/harness_smoke.py experiments/quickstart.py            # every point
    python benchmarks/harness_smoke.py experiments/quickstart.py --limit 8  # the first 8

Each point runs as a sweep runs it (`q4lab.sweep.runner.evaluate_point`: baseline, calibration,
quantization, evaluation), without writing results. XLA's backend compile times are collected
through `jax.monitoring` while the point runs: "compile max" is the longest single compile (the
issue's limit is 10 s a layer shape), "compile s" their sum, "wall s" the whole point. The first
point also pays for the float baseline and the shared compiles.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import pandas as pd

from q4lab.sweep import load_experiment
from q4lab.sweep.experiment import describe_point
from q4lab.sweep.runner import evaluate_point

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"

_compiles: list[float] = []


def _listen(event: str, duration: float, **_: object) -> None:
    if event == BACKEND_COMPILE:
        _compiles.append(duration)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("--limit", type=int, default=0, help="run only the first N points")
    parser.add_argument("--max-compile", type=float, default=10.0, help="seconds; exit 1 above")
    parser.add_argument("--out", help="also write the table (markdown) to this file")
    args = parser.parse_args()

    jax.monitoring.register_event_duration_secs_listener(_listen)
    points = load_experiment(args.experiment).points
    points = points[: args.limit] if args.limit else points
    rows = []
    for point in points:
        _compiles.clear()
        start = time.perf_counter()
        record = evaluate_point(point)
        wall = time.perf_counter() - start
        rows.append(
            {
                "point": describe_point(point),
                "score": record["score"],
                "compile max": max(_compiles, default=0.0),
                "compiles": len(_compiles),
                "compile s": sum(_compiles),
                "wall s": wall,
            }
        )
        cells = (
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in rows[-1].items()
        )
        print(" | ".join(cells), file=sys.stderr, flush=True)
    table = pd.DataFrame(rows)
    device = jax.devices()[0]
    text = (
        f"{device.platform} ({device.device_kind}), jax {jax.__version__}, {args.experiment}\n\n"
        + table.to_markdown(index=False, floatfmt=".3g")
        + "\n"
    )
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    slow = table[table["compile max"] > args.max_compile]
    if len(slow):
        print(f"{len(slow)} point(s) compiled longer than {args.max_compile} s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
