"""How the benchmarks time a jitted call: weight copies no cache holds, a warm-up, the median.

Only jax is imported here, so `compare_commits.py` times any commit of q4lab with the same timer
as `bench_ops.py` (its child imports q4lab from the commit being timed, and this module from the
checkout that runs it).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

ROTATION_BYTES = 512 << 20
GPU_ROTATION_BYTES = 8 << 30  # HBM is large: enough copies that no cache holds the next one
MAX_COPIES = 64


def on_gpu() -> bool:
    """True when jax's default backend is a GPU (as `q4lab.ops.on_gpu`, without importing q4lab)."""
    return jax.default_backend() in ("gpu", "cuda", "rocm")


def copy_count(nbytes: int) -> int:
    """How many copies of ``nbytes`` fill the rotation budget (at least 2, at most 64)."""
    budget = GPU_ROTATION_BYTES if on_gpu() else ROTATION_BYTES
    return int(min(MAX_COPIES, max(2, math.ceil(budget / nbytes))))


def replicate(tree, count: int) -> list:
    """``count`` copies of a pytree of arrays, each in buffers of its own."""
    return [jax.tree_util.tree_map(lambda a: jnp.array(a, copy=True), tree) for _ in range(count)]


WARM_CALLS, WARM_SECONDS = 200, 15.0
GPU_WARM_CALLS = 20  # no allocator warm-up on a GPU: a few calls settle clocks and caches
ONE_CALL_PER_WAIT = 1e-3  # seconds: above this the cost of waiting for each call is noise


def median_seconds(fn: Callable, args: list[tuple], seconds: float) -> float:
    """Median seconds per call, cycling through ``args`` (one tuple per weight copy).

    CPU: one call per measurement, after a warm-up of ``WARM_CALLS`` calls (at most
    ``WARM_SECONDS``): the first ~100 calls of a process run up to 8x slower until glibc's
    allocator keeps the large temporaries instead of mapping them afresh each call
    (``benchmarks/NOTES.md``). GPU: calls shorter than ``ONE_CALL_PER_WAIT`` are timed queued
    back to back (`pipelined_seconds`)."""
    jax.block_until_ready(fn(*args[0]))  # compile
    start = time.perf_counter()
    calls = 0
    warm_calls = GPU_WARM_CALLS if on_gpu() else WARM_CALLS
    while calls < 2 or (calls < warm_calls and time.perf_counter() - start < WARM_SECONDS):
        jax.block_until_ready(fn(*args[calls % len(args)]))
        calls += 1
    per_call = (time.perf_counter() - start) / calls
    if on_gpu() and per_call < ONE_CALL_PER_WAIT:
        return pipelined_seconds(fn, args, seconds)
    repeats = int(min(50, max(3, seconds / per_call)))
    times = []
    for i in range(repeats):
        a = args[i % len(args)]
        begin = time.perf_counter()
        jax.block_until_ready(fn(*a))
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


PIPELINED_CALLS = 64  # calls queued before one wait


def pipelined_seconds(fn: Callable, args: list[tuple], seconds: float) -> float:
    """Seconds per call of ``PIPELINED_CALLS`` calls queued back to back (cycling through the
    weight copies: JAX dispatches asynchronously) before one wait, median over repeats. Waiting
    after each call cost about 0.1 ms on the H200 of 2026-11-28, as much as one memory-bound call
    at these sizes: timed one call at a time, every fast path looked the same
    (benchmarks/RESULTS.md). Queued, the GPU runs call after call while the host dispatches the
    next; a call shorter than the host's dispatch is still bounded by it."""
    times = []
    start = time.perf_counter()
    while len(times) < 3 or (len(times) < 20 and time.perf_counter() - start < seconds):
        begin = time.perf_counter()
        outputs = [fn(*args[i % len(args)]) for i in range(PIPELINED_CALLS)]
        jax.block_until_ready(outputs)
        times.append((time.perf_counter() - begin) / PIPELINED_CALLS)
        del outputs
    return statistics.median(times)
