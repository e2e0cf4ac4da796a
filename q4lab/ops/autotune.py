"""Dispatch by measurement on the device at hand (``impl="auto"`` with a table in use).

With a table in use (`use`, `install`; ``Q4LAB_AUTOTUNE=1`` installs one kept in a file per
device kind, `q4lab.autotune_cache`), `q4lab.ops.choose` meets a call it has not seen —
operation, weight shape, scale grid, layout, M, activation dtype (`key`) — by running every
implementation that can take it (`q4lab.ops.matmul.candidates`) on stand-in operands of that
shape (`stand_in`: random codes and scales, a random permutation where the weight has one). A
path whose result disagrees with the trusted one (`AGREEMENT`) is never picked; a path that fails
to lower or run is noted and skipped. The rest are timed in alternating rounds (`time_paths`).
The rules' pick (`GPU_CHOICES` on a GPU, blocked on CPU) runs unless another path is more than
`SLACK` faster (`decide`), so timing noise does not move the choice; the times are kept in the
table. Later
calls with the same key, in this process or (through the file) another one on the same kind of
device, pick without timing. If measuring itself fails (e.g. out of memory), the rules' pick runs
and a warning says why.

Without a table (the default), ``auto`` follows the rules alone. Choices are made while a
function is traced, for the default backend: a jitted model compiled before a table was put in
use keeps the paths it was traced with.
"""

from __future__ import annotations

import contextlib
import contextvars
import statistics
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from q4lab.core import QTensor
from q4lab.ops.lowering import on_gpu

Table = MutableMapping[str, dict[str, Any]]

# A path must agree with the trusted one to this fraction of max |y|: the GPU's 16-bit forms
# round code * scale to bfloat16 (bench_ops measured up to ~4e-3), a broken kernel is off by O(1).
AGREEMENT = 2e-2
SLACK = 0.10  # another path replaces the rules' pick only when more than this much faster
ROTATION_BYTES = 256 << 20  # weight copies cycled while timing, so no cache holds the next one
MAX_COPIES = 8
ROUNDS, MAX_ROUNDS = 5, 50  # timing rounds over all paths: at least, at most
SECONDS = 0.2  # rounds continue past ROUNDS while the timing has taken less than this
GPU_QUEUED = 8  # calls queued before one wait on a GPU (a wait alone costs ~0.1 ms there)

_process_table: list[Table | None] = [None]
_UNSET = object()
_context_table: contextvars.ContextVar[Any] = contextvars.ContextVar("q4lab_autotune")


def current() -> Table | None:
    """The table `choose` fills and reads, or None (dispatch by the rules alone): the one of
    the innermost `use` block in this thread, else the process's (`install`)."""
    table = _context_table.get(_UNSET)
    return _process_table[0] if table is _UNSET else table


def install(table: Table | None) -> None:
    """Use ``table`` for the rest of the process outside `use` blocks (None: the rules)."""
    _process_table[0] = table


@contextlib.contextmanager
def use(table: Table | None) -> Iterator[Table | None]:
    """Use ``table`` inside the block, in this thread (None: the rules there)."""
    token = _context_table.set(table)
    try:
        yield table
    finally:
        _context_table.reset(token)


def activation_stand_ins(
    k: int, m: int, *, w4a4: bool = False, dtype=jnp.float32, scale_rows: int | None = None
) -> tuple[jax.Array, ...]:
    """Random concrete activations for a call of M rows on a K-row weight (also while tracing):
    ``(x,)`` of ``dtype`` (W4A16), or ``(xc, x_scale)`` (W4A4): centered codes of ``dtype``
    when it is an integer type, else int8 (4-bit asymmetric ones reach +-15), and
    ``[scale_rows or M, 1]`` float32 row scales."""
    rng = np.random.default_rng(m)
    with jax.ensure_compile_time_eval():
        if w4a4:
            codes = dtype if jnp.issubdtype(dtype, jnp.integer) else jnp.int8
            xc = jnp.asarray(rng.integers(-15, 16, (m, k)), codes)
            return xc, jnp.asarray(rng.uniform(0.5, 1.5, (scale_rows or m, 1)), jnp.float32)
        return (jnp.asarray(rng.standard_normal((m, k)), jnp.float32).astype(dtype),)


def key(qt: QTensor, m: int, *, w4a4: bool, dtype) -> str:
    """What a measured choice depends on, as one readable string, e.g.
    ``"w4a16 8192x28672 g128 float16 sym rows m16 bfloat16"``."""
    rows = qt.scale.shape[0]
    grid = f"g{qt.k // rows}" if rows > 1 else "per-tensor" if qt.scale.size == 1 else "per-channel"
    parts = [
        "w4a4" if w4a4 else "w4a16",
        f"{qt.k}x{qt.n}",
        grid,
        jnp.dtype(qt.scale.dtype).name,
        "sym" if qt.spec.symmetric else "asym",
        qt.layout,
        *(["perm"] if qt.perm is not None else []),
        f"m{m}",
        jnp.dtype(dtype).name,
    ]
    return " ".join(parts)


def _random(rng: np.random.Generator, like: jax.Array) -> np.ndarray:
    """Random integers over ``like``'s whole dtype, in its shape (any bytes are valid codes)."""
    info = np.iinfo(like.dtype)
    return rng.integers(info.min, info.max, like.shape, dtype=like.dtype, endpoint=True)


def stand_in(qt: QTensor, seed: int = 0) -> QTensor:
    """A weight of ``qt``'s structure (spec, shape, layout, dtypes) with concrete random arrays:
    what timing needs from a weight that may be a tracer. No input transform (the ops refuse one:
    `q4lab.layer_quant.quantized_dot` applies it before)."""
    rng = np.random.default_rng(seed)
    with jax.ensure_compile_time_eval():
        scale = rng.uniform(0.5, 1.5, qt.scale.shape) / (8 * np.sqrt(qt.k))
        return QTensor(
            codes=jnp.asarray(_random(rng, qt.codes)),
            scale=jnp.asarray(scale, qt.scale.dtype),
            zero=None if qt.zero is None else jnp.asarray(_random(rng, qt.zero)),
            perm=None if qt.perm is None else jnp.asarray(rng.permutation(qt.k), qt.perm.dtype),
            spec=qt.spec,
            shape=qt.shape,
            in_axes=qt.in_axes,
            layout=qt.layout,
        )


def weight_copies(qt: QTensor, seed: int = 0) -> list[QTensor]:
    """`stand_in` and copies of it in buffers of their own, enough to fill `ROTATION_BYTES`
    (1 to `MAX_COPIES`), so that timing reads the weight from memory as a model's layer does."""
    first = stand_in(qt, seed)
    nbytes = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(first))
    count = int(np.clip(ROTATION_BYTES // max(nbytes, 1), 1, MAX_COPIES))
    with jax.ensure_compile_time_eval():
        copy = lambda a: jnp.array(a, copy=True)  # noqa: E731
        return [first] + [jax.tree_util.tree_map(copy, first) for _ in range(count - 1)]


def time_paths(
    paths: Mapping[str, Callable], args: list[tuple], seconds: float | None = None
) -> dict[str, float]:
    """Median seconds per call of each compiled path, cycling through ``args`` (one tuple per
    weight copy, each path from its own offset). The paths take turns, one measurement each per
    round, so a slow spell of the machine falls on all of them; rounds go on past `ROUNDS` while
    they have taken less than ``seconds`` (default `SECONDS`). On a GPU each measurement queues
    `GPU_QUEUED` calls."""
    seconds = SECONDS if seconds is None else seconds
    queued = GPU_QUEUED if on_gpu() else 1
    for fn in paths.values():  # warm-up: each path's buffers and clocks
        jax.block_until_ready([fn(*a) for a in args])
    times: dict[str, list[float]] = {name: [] for name in paths}
    start = time.perf_counter()
    for done in range(MAX_ROUNDS):
        if done >= ROUNDS and time.perf_counter() - start > seconds:
            break
        for offset, (name, fn) in enumerate(paths.items()):
            calls = [args[(done + offset + i) % len(args)] for i in range(queued)]
            begin = time.perf_counter()
            jax.block_until_ready([fn(*a) for a in calls])
            times[name].append((time.perf_counter() - begin) / queued)
    return {name: statistics.median(t) for name, t in times.items()}


def measure(
    paths: Mapping[str, Callable],
    args: list[tuple],
    trusted: Callable,
    *,
    rules: str | None = None,
    seconds: float | None = None,
) -> dict[str, Any]:
    """Check each path against ``trusted`` on ``args[0]``, time those that agree, and return the
    table entry: ``impl`` (`decide`), ``rules``, ``ms`` per timed path and ``rejected`` (path ->
    why)."""
    with jax.ensure_compile_time_eval():
        expected = np.asarray(trusted(*args[0]), np.float32)
        bound = AGREEMENT * max(float(np.abs(expected).max()), np.finfo(np.float32).tiny)
        agreeing, rejected = {}, {}
        for name, fn in paths.items():
            try:
                y = expected if fn is trusted else np.asarray(fn(*args[0]), np.float32)
            except Exception as err:  # a kernel that does not lower or run on this device
                rejected[name] = f"failed: {err!r:.200}"
                continue
            error = float(np.abs(y - expected).max())
            if not error <= bound:
                rejected[name] = f"disagrees: max |y - trusted| {error:.3g} > {bound:.3g}"
                continue
            agreeing[name] = fn
        if not agreeing:
            raise RuntimeError(f"no path ran and agreed with the trusted one: {rejected}")
        timed = time_paths(agreeing, args, seconds)
    ms = {name: round(t * 1e3, 6) for name, t in timed.items()}
    return {"impl": decide(ms, rules), "rules": rules, "ms": ms, "rejected": rejected}


def decide(ms: Mapping[str, float], rules: str | None) -> str:
    """The path to run given each timed path's time: the rules' pick when it was timed and is
    within `SLACK` of the fastest, else the fastest."""
    fastest = min(ms, key=ms.get)
    return rules if rules in ms and ms[rules] <= (1 + SLACK) * ms[fastest] else fastest


_failed: set[str] = set()  # keys whose measuring failed in this process: not tried again


def pick(
    table: Table,
    entry_key: str,
    names: tuple[str, ...],
    rules: str | None,
    paths: Callable[[], tuple[dict[str, Callable], list[tuple], Callable]],
) -> str | None:
    """The implementation to run for ``entry_key``, from the times ``table`` holds and today's
    ``rules`` pick (`decide`; ``rules`` as named in ``names``, or None). Measured first when the
    table holds no entry, or one over other candidates than ``names`` (a kernel added, or no
    longer taking the call). ``paths()`` gives the candidates' compiled functions, their
    arguments (one tuple per weight copy) and the trusted path. None when measuring failed (with
    a warning, once per key and process): the caller runs its rules' pick."""
    entry = table.get(entry_key)
    measured = entry is not None and set(entry.get("ms", ())) | set(entry.get("rejected", ()))
    if measured == set(names) and entry.get("ms"):
        return decide(entry["ms"], rules)
    if entry_key in _failed:
        return None
    try:
        entry = measure(*paths(), rules=rules)
    except Exception as err:  # e.g. out of memory for the stand-ins or the trusted form
        _failed.add(entry_key)
        warnings.warn(
            f"autotuning '{entry_key}' failed ({err!r:.300}); auto runs the rules' pick",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    table[entry_key] = entry
    return entry["impl"]
