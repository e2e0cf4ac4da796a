"""Produce and check the published float baselines (``python -m q4lab.baselines``).

``publish`` trains baselines here with the tasks' own training code (never from a cache) and
writes them with their index entries: key, sha256, float metric, and how they were produced
(command, CPU and its instruction set, package versions, git commit, date). A baseline that is
already published with different bytes is kept unless ``--replace``: the results tables were
computed from the published one.

``check`` verifies every listed file's checksum, says whether its key is the one this install
computes (else it is not used here, e.g. under another scikit-learn or Python version), and with
``--retrain`` trains it here and compares the parameters bit for bit.
"""

from __future__ import annotations

import argparse
import os
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from q4lab.baselines.store import (
    PUBLISHED_DIR,
    add_published,
    flatten,
    params_from_bytes,
    params_to_bytes,
    read_index,
    sha256,
    verified_bytes,
    write_index,
)
from q4lab.manifest import cpu_flags, cpu_isa, cpu_name


def provenance(command: str, train_seconds: float) -> dict[str, Any]:
    """How a baseline was produced: command, CPU, package versions, git commit, date."""
    from q4lab.manifest import manifest

    return {
        "command": command,
        "train_seconds": round(train_seconds, 1),
        "cpu": cpu_name(),
        "cpu_isa": cpu_isa(),
        "cpu_flags": " ".join(cpu_flags()),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),  # e.g. --xla_cpu_max_isa=AVX2 changes code
        **manifest(),
    }


def _task(name: str):
    from q4lab.tasks import get_task

    return get_task(name)


def _training(task, seed: int):
    training = task.baseline_training(seed)
    if training is None:
        raise ValueError(f"task {task.name!r} is pretrained; only trained baselines are published")
    return training


def fp_metric(task, params: dict, seed: int) -> dict[str, float]:
    """The task's headline metric of the float model, computed as `q4lab.evaluate` does."""
    from q4lab.evaluate import float_forward

    def forward(x):
        return float_forward(task.model, params, x)

    return {task.metric: task.metrics(forward, forward, seed)[task.metric]}


def max_difference(a: dict, b: dict) -> float:
    """Largest absolute difference between two params dicts of the same structure."""
    fa, fb = flatten(a), flatten(b)
    if fa.keys() != fb.keys():
        return float("inf")
    return max(float(np.max(np.abs(fa[k].astype(np.float64) - fb[k]), initial=0.0)) for k in fa)


def publish(
    task_name: str,
    seeds: Sequence[int],
    *,
    directory: Path = PUBLISHED_DIR,
    replace: bool = False,
    command: str = "",
    progress: bool | None = None,
) -> list[dict[str, Any]]:
    """Train ``task_name``'s baseline for each seed here and publish it into ``directory``."""
    task = _task(task_name)
    entries = []
    for seed in seeds:
        training = _training(task, seed)
        start = time.perf_counter()
        params = training.train(progress)
        seconds = time.perf_counter() - start
        index = read_index(directory)
        old = index.get(training.file_name)
        if old is not None and (directory / training.file_name).exists():
            if old["sha256"] == sha256(params_to_bytes(params)):
                print(f"{training.file_name}: unchanged (trained again in {seconds:.1f} s)")
                entries.append(old)
                continue
            if not replace:
                published = params_from_bytes(verified_bytes(directory, training.file_name, old))
                raise ValueError(
                    f"training {task_name} seed {seed} here gave other parameters than the "
                    f"published {training.file_name} (max |difference| "
                    f"{max_difference(params, published):.3g}; published on "
                    f"{old['produced']['cpu_isa']}, here {cpu_isa()}); the results tables "
                    "were computed from the published file: pass --replace to overwrite it"
                )
        entry = {
            "task": task_name,
            "seed": seed,
            "key": training.key,
            "params": int(sum(a.size for a in flatten(params).values())),
            "fp_metric": fp_metric(task, params, seed),
            "produced": provenance(command, seconds),
        }
        entry = add_published(directory, training.file_name, params, entry)
        stale = [
            name
            for name, e in read_index(directory).items()
            if e["task"] == task_name and e["seed"] == seed and name != training.file_name
        ]
        if stale:
            write_index(
                directory, {k: v for k, v in read_index(directory).items() if k not in stale}
            )
            for name in stale:
                (directory / name).unlink(missing_ok=True)
                print(f"{name}: removed (an older configuration of {task_name} seed {seed})")
        print(
            f"{training.file_name}: {entry['bytes']} bytes, trained in {seconds:.1f} s, "
            f"float {task.metric} {entry['fp_metric'][task.metric]:.6g}"
        )
        entries.append(entry)
    return entries


def check(
    tasks: Sequence[str] = (),
    seeds: Sequence[int] = (),
    *,
    directory: Path = PUBLISHED_DIR,
    retrain: bool = False,
    progress: bool | None = None,
) -> list[dict[str, Any]]:
    """One row per published baseline (of ``tasks`` and ``seeds``; default all): checksum, whether
    this install uses it, and with ``retrain`` whether training here gives the same bytes."""
    rows = []
    for name, entry in read_index(directory).items():
        if (tasks and entry["task"] not in tasks) or (seeds and entry["seed"] not in seeds):
            continue
        row: dict[str, Any] = {
            "file": name,
            "bytes": entry["bytes"],
            "produced on": entry["produced"]["cpu_isa"],
            "fp metric": next(iter(entry["fp_metric"].values())),
        }
        try:
            published = params_from_bytes(verified_bytes(directory, name, entry))
            row["checksum"] = "ok"
        except ValueError as err:
            row["checksum"] = type(err).__name__
            rows.append(row)
            continue
        task = _task(entry["task"])
        training = _training(task, entry["seed"])
        row["used here"] = (
            "yes" if training.key == entry["key"] else "no: the key differs (data or code)"
        )
        if retrain:
            start = time.perf_counter()
            params = training.train(progress)
            row["train seconds"] = round(time.perf_counter() - start, 1)
            same = sha256(params_to_bytes(params)) == entry["sha256"]
            row["retrained here"] = (
                "identical"
                if same
                else f"differs: max abs param diff {max_difference(params, published):.3g}, "
                f"fp metric {next(iter(fp_metric(task, params, entry['seed']).values())):.6g}"
            )
        rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m q4lab.baselines", description="published float baselines"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    pub = sub.add_parser("publish", help="train baselines here and write them with the index")
    pub.add_argument("--task", required=True, help="a trained task, e.g. digits-mlp")
    pub.add_argument("--seeds", nargs="+", type=int, default=[0])
    pub.add_argument("--dir", type=Path, default=PUBLISHED_DIR, help="default: q4lab/baselines")
    pub.add_argument("--replace", action="store_true", help="overwrite differing published files")
    pub.add_argument("--no-progress", action="store_true")
    chk = sub.add_parser("check", help="verify checksums; --retrain: compare training here")
    chk.add_argument("--task", nargs="+", default=[])
    chk.add_argument("--seeds", nargs="+", type=int, default=[])
    chk.add_argument("--dir", type=Path, default=PUBLISHED_DIR)
    chk.add_argument("--retrain", action="store_true", help="train each here and compare bytes")
    chk.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    progress = False if args.no_progress else None
    try:
        if args.command == "publish":
            command = "python -m q4lab.baselines " + shlex.join(
                ["publish", "--task", args.task, "--seeds", *map(str, args.seeds)]
            )
            publish(
                args.task,
                args.seeds,
                directory=args.dir,
                replace=args.replace,
                command=command,
                progress=progress,
            )
            return 0
        import pandas as pd

        rows = check(
            args.task, args.seeds, directory=args.dir, retrain=args.retrain, progress=progress
        )
        print(pd.DataFrame(rows).to_markdown(index=False) if rows else "no published baselines")
        bad = [r for r in rows if r["checksum"] != "ok" or "differs" in r.get("retrained here", "")]
        return 1 if bad else 0
    except ValueError as err:
        parser.exit(2, f"python -m q4lab.baselines {args.command}: error: {err}\n")
