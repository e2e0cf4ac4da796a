"""The harness on this backend: every point of an experiment, with its compile and run times.

    python benchmarks/harness_smoke.py experiments/quickstart.py            # every point
    python benchmarks/harness_smoke.py experiments/quickstart.py --limit 8  # the first 8
    python benchmarks/harness_smoke.py experiments/quickstart.py --where seed=0 bits=4
    python benchmarks/harness_smoke.py experiments/digits.py --where quantizer=mse quantizer=gptq

Each point runs as a sweep runs it (`q4lab.sweep.runner.evaluate_point`: baseline, calibration,
quantization, evaluation), without writing results. XLA's backend compile times are collected
through `jax.monitoring` while the point runs: "compile max" is the longest single compile (the
issue's limit is 10 s a layer shape), "compile s" their sum, "wall s" the whole point. The first
point also pays for the float baseline and the shared compiles. ``--where KEY=VALUE``: only the
points whose field equals the value (a Python literal); a key given twice takes either value.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import pandas as pd

from q4lab.recipe import literal_value
from q4lab.sweep import load_experiment
from q4lab.sweep.experiment import describe_point
from q4lab.sweep.runner import evaluate_point

BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"

_compiles: list[float] = []


def _listen(event: str, duration: float, **_: object) -> None:
    if event == BACKEND_COMPILE:
        _compiles.append(duration)


def _select(points: list[dict], conditions: list[str]) -> list[dict]:
    """The points whose fields match every ``KEY=VALUE`` (values as Python literals; a key given
    more than once matches any of its values)."""
    wanted: dict[str, list] = {}
    for condition in conditions:
        key, eq, value = condition.partition("=")
        if not eq:
            raise SystemExit(f"--where {condition!r}: expected KEY=VALUE")
        if points and key not in points[0]:
            fields = ", ".join(sorted(points[0]))
            raise SystemExit(f"--where {condition!r}: no field {key!r}; fields: {fields}")
        wanted.setdefault(key, []).append(literal_value(value))
    chosen = [p for p in points if all(p[k] in values for k, values in wanted.items())]
    if conditions and not chosen:
        raise SystemExit(f"no point of the experiment has {' '.join(conditions)}")
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("--where", nargs="+", default=[], help="only points with KEY=VALUE ...")
    parser.add_argument("--limit", type=int, default=0, help="run only the first N points")
    parser.add_argument("--max-compile", type=float, default=10.0, help="seconds; exit 1 above")
    parser.add_argument("--out", help="also write the table (markdown) to this file")
    args = parser.parse_args()

    jax.monitoring.register_event_duration_secs_listener(_listen)
    points = _select(load_experiment(args.experiment).points, args.where)
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
