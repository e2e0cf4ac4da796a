"""CPU speed of two commits side by side: the auto INT4 paths and the dense dot, each commit in
processes of its own, taking turns.

    python benchmarks/compare_commits.py 3ae195c              # that commit against this checkout
    python benchmarks/compare_commits.py 3ae195c HEAD --rounds 3 --shapes 8192x8192 --m 128

"On CPU nothing gets slower" compares two versions of the code on one machine, and a table taken
on another day does not show it: on this repository's 2-core machine the same code's times move
by 20 % from one process to the next, and now and then a process runs a path 3-6x slower for all
its calls (benchmarks/NOTES.md, 2026-11-28). So each round runs every commit once, in its own
process, and the table shows per cell each commit's best round, the ratio of the bests (> 1:
the second commit is slower) and how far apart each commit's own rounds were.

A commit is checked out with ``git worktree`` into a temporary folder and imported from there
(PYTHONPATH); "." ("here" in the table) is this checkout as it stands, uncommitted changes
included. The timing child runs on the CPU (``JAX_PLATFORMS=cpu``) and imports from q4lab only
what every commit since 3ae195c (the first CPU table) has: `w4a16_matmul`, `int_matmul`,
`QuantSpec` and the min-max quantizer. Its timer is bench_ops' (`timing.py`, from the checkout
that runs this script, so both commits are timed alike).

Paths: "dense float32" (x @ W), "W4A16 auto" (`w4a16_matmul`), "W4A4 auto" (`int_matmul` on int8
activation codes with row scales; without bench_ops' activation quantization). Weights as in
bench_ops: symmetric 4-bit codes, group-128 float16 scales, copies cycled through 512 MiB so no
cache holds the one being read; the time is the median of calls after a warm-up.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

SHAPES = ["4096x4096", "8192x8192", "8192x28672"]
BATCHES = [1, 16, 128]
SLOWER = 1.10  # a best time this much over the base's is flagged
SECONDS = 1.0  # timing budget per cell, as bench_ops --seconds
MARK = "compare_commits: "  # starts the child's result lines (a commit may print others)


def child(shapes: list[str], batches: list[int]) -> None:
    """Time this process's q4lab (from PYTHONPATH); one JSON line per shape, M and path."""
    import jax
    import jax.numpy as jnp
    from timing import copy_count, median_seconds, replicate

    import q4lab
    from q4lab.core import QuantSpec
    from q4lab.ops import int_matmul, w4a16_matmul
    from q4lab.quantizers import get_quantizer

    spec = QuantSpec(bits=4, group_size=128, scale_dtype="float16")
    dense_fn = jax.jit(lambda x, w: x @ w)
    w4a16_fn = jax.jit(lambda x, w: w4a16_matmul(x, w))
    w4a4_fn = jax.jit(lambda xc, s, w: int_matmul(xc, s, w))
    for shape in shapes:
        k, n = map(int, shape.split("x"))
        w = jax.random.normal(jax.random.key(k + n), (k, n), jnp.float32) / math.sqrt(k)
        qt = get_quantizer("minmax").quantize(w, spec)
        quantized = replicate(qt, copy_count(k * n // 2))
        dense = replicate(w, copy_count(w.nbytes))
        del w
        for m in batches:
            x = jax.random.normal(jax.random.key(m), (m, k), jnp.float32)
            codes = jax.random.randint(jax.random.key(m + 1), (m, k), -7, 8).astype(jnp.int8)
            scales = jnp.full((m, 1), 0.01, jnp.float32)
            seconds = {
                "dense float32": median_seconds(dense_fn, [(x, d) for d in dense], SECONDS),
                "W4A16 auto": median_seconds(w4a16_fn, [(x, q) for q in quantized], SECONDS),
                "W4A4 auto": median_seconds(
                    w4a4_fn, [(codes, scales, q) for q in quantized], SECONDS
                ),
            }
            for path, t in seconds.items():
                cell = {"KxN": shape, "M": m, "path": path, "ms": t * 1e3, "q4lab": q4lab.__file__}
                print(MARK + json.dumps(cell), flush=True)


def summarize(cells: pd.DataFrame, base: str, head: str) -> pd.DataFrame:
    """One row per shape, M and path from ``cells`` (columns KxN, M, path, commit, round, ms):
    each commit's best time and x dense (from the best dense time), the ratio of the bests
    (head / base: > 1 is slower), each commit's spread over its rounds (worst / best), and
    ``slower`` where a quantized path's best at the head is over `SLOWER` times the base's (the
    dense dot is the same XLA op in both: its ratio shows the noise)."""
    keys = ["KxN", "M", "path"]
    by_commit = cells.groupby([*keys, "commit"], sort=False)["ms"]
    best = by_commit.min().unstack("commit")
    spread = (by_commit.max() / by_commit.min()).unstack("commit")
    dense = best.xs("dense float32", level="path")
    out = pd.DataFrame(index=best.index)
    for commit in (base, head):
        out[f"{commit} ms"] = best[commit]
    out[f"{head} / {base}"] = best[head] / best[base]
    for commit in (base, head):
        per_cell = dense[commit].reindex(best.index.droplevel("path"))
        out[f"x dense {commit}"] = per_cell.to_numpy() / best[commit].to_numpy()
    out["spread"] = spread[[base, head]].max(axis=1)
    quantized = best.index.get_level_values("path") != "dense float32"  # dense: the noise
    out["slower"] = (out[f"{head} / {base}"] > SLOWER) & quantized
    order = {shape: i for i, shape in enumerate(dict.fromkeys(cells["KxN"]))}
    out = out.reset_index()
    return out.sort_values(["KxN", "M"], key=lambda c: c.map(order) if c.name == "KxN" else c)


def _run(command: list[str], cwd: Path) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return done.stdout.strip()


def _time_checkout(checkout: Path, shapes: list[str], batches: list[int]) -> list[dict]:
    """The child's cells for the q4lab in ``checkout``, run on the CPU."""
    env = os.environ | {"PYTHONPATH": str(checkout), "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, __file__, "--child", "--shapes", *shapes]
    command += ["--m", *map(str, batches)]
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"timing {checkout} failed:\n{out.stderr[-2000:]}")
    cells = [
        json.loads(line[len(MARK) :]) for line in out.stdout.splitlines() if line.startswith(MARK)
    ]
    for cell in cells:
        if not Path(cell.pop("q4lab")).resolve().is_relative_to(checkout.resolve()):
            raise SystemExit(f"the child did not import q4lab from {checkout}")
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", nargs="?", help="a commit, e.g. 3ae195c")
    parser.add_argument("head", nargs="?", default=".", help="a commit, or . (this checkout)")
    parser.add_argument("--shapes", nargs="+", default=SHAPES)
    parser.add_argument("--m", nargs="+", type=int, default=BATCHES)
    parser.add_argument("--rounds", type=int, default=2, help="turns each commit takes (>= 1)")
    parser.add_argument("--out", help="also write the table (markdown) to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.shapes, args.m)
    if args.base is None:
        parser.error("the base commit is required")
    if args.rounds < 1:
        parser.error(f"--rounds is {args.rounds}; it must be at least 1")
    root = Path(_run(["git", "rev-parse", "--show-toplevel"], Path(__file__).parent))
    names = {}
    for rev in (args.base, args.head):
        commit = ["git", "rev-parse", "--short", f"{rev}^{{commit}}"]
        names[rev] = "here" if rev == "." else _run(commit, root)
    if len(set(names.values())) < 2:
        raise SystemExit(f"base and head are the same commit: {args.base} {args.head}")
    cells = []
    with tempfile.TemporaryDirectory() as tmp:
        checkouts = {rev: root if rev == "." else Path(tmp) / name for rev, name in names.items()}
        try:
            for rev, checkout in checkouts.items():
                if rev != ".":
                    _run(["git", "worktree", "add", "--detach", str(checkout), rev], root)
            for round_ in range(args.rounds):
                for rev, checkout in checkouts.items():
                    print(f"round {round_ + 1}: {names[rev]}", file=sys.stderr, flush=True)
                    for cell in _time_checkout(checkout, args.shapes, args.m):
                        cells.append({**cell, "commit": names[rev], "round": round_})
        finally:  # a worktree that was never added, or is gone, is pruned
            for rev, checkout in checkouts.items():
                if rev != ".":
                    remove = ["git", "worktree", "remove", "--force", str(checkout)]
                    subprocess.run(remove, cwd=root, capture_output=True)
            subprocess.run(["git", "worktree", "prune"], cwd=root, capture_output=True)
    base, head = names[args.base], names[args.head]
    table = summarize(pd.DataFrame(cells), base, head)
    slower = table[table["slower"]]
    quantized = (table["path"] != "dense float32").sum()
    verdict = (
        f"{len(slower)} of {quantized} quantized cells: {head} over {SLOWER:.2f}x {base}'s best"
    )
    lines = [verdict]
    lines += [f"- {r['KxN']} M={r['M']} {r['path']}" for _, r in slower.iterrows()]
    header = (
        f"cpu, {args.rounds} rounds; times: each commit's best round; spread: the larger of the "
        "two commits' worst / best round\n\n"
    )
    text = header + table.to_markdown(index=False, floatfmt=".3g") + "\n\n" + "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
