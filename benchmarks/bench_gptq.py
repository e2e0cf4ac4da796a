"""GPTQ compile and run time for one layer, per shape, on the default JAX device.

    python benchmarks/bench_gptq.py [--rows 2048] [--repeats 3]

The column loop is a `lax.fori_loop`, so the compiled program is the same for every width:
compile time should stay flat while run time grows with K^2 N. Round-to-nearest (min-max) on the
same weight is timed alongside for scale. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from q4lab.core import QuantSpec
from q4lab.quantizers import GPTQ, get_quantizer
from q4lab.quantizers.gptq import gptq_matrix

SHAPES = [(768, 768), (3072, 768), (4096, 4096)]  # (K inputs, N outputs)


def _timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(k: int, n: int, rows: int, repeats: int, spec: QuantSpec, gptq: GPTQ) -> dict:
    key_x, key_w = jax.random.split(jax.random.key(k * 7919 + n))
    x = jax.random.normal(key_x, (rows, k)) * jnp.linspace(0.2, 2.0, k)
    hessian = jax.block_until_ready(2.0 * x.T @ x / rows)
    w = jax.random.normal(key_w, (k, n)) / np.sqrt(k)

    start = time.perf_counter()
    compiled = gptq_matrix.lower(gptq, w, hessian, spec).compile()
    compile_s = time.perf_counter() - start
    run_s = _timed(lambda: compiled(w, hessian), repeats)

    rtn = get_quantizer("minmax")
    rtn.params(w, spec)  # compile
    rtn_s = _timed(lambda: rtn.params(w, spec), repeats)
    return {"K": k, "N": n, "compile_s": compile_s, "run_s": run_s, "rtn_params_s": rtn_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2048, help="calibration rows for H")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    spec = QuantSpec(bits=4, group_size=128, scale_dtype="float16")
    gptq = GPTQ(act_order=True)
    rows = [bench(k, n, args.rows, args.repeats, spec, gptq) for k, n in SHAPES]
    table = pd.DataFrame(rows)
    table["compile / first"] = table["compile_s"] / table["compile_s"].iloc[0]
    table["run / first"] = table["run_s"] / table["run_s"].iloc[0]
    table["K^2 N / first"] = (table.K**2 * table.N) / (table.K.iloc[0] ** 2 * table.N.iloc[0])
    device = jax.devices()[0]
    print(f"GPTQ W4 g128 act-order, {args.rows} calibration rows, {device.platform} ({device})\n")
    table[["K", "N"]] = table[["K", "N"]].astype(str)
    print(table.to_markdown(index=False, floatfmt=".3g"))


if __name__ == "__main__":
    main()
