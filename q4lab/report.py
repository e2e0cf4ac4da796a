"""Markdown summary of a results table: for each task, the best configuration of every quantizer
at every bit budget (weight bits x activation bits), with its delta to the float model."""

from __future__ import annotations

import pandas as pd

from q4lab.plots import BASELINES, aggregate

BUDGET = ("bits", "act_bits")


def best_points(table: pd.DataFrame, y: str = "accuracy") -> pd.DataFrame:
    """Best configuration (highest mean ``y`` over seeds) per task, quantizer and bit budget."""
    base = BASELINES.get(y)
    agg = aggregate(table, "bits_per_weight", y)
    keys = [c for c in ("task", "quantizer", *BUDGET) if c in agg]
    best = agg.loc[agg.groupby(keys, dropna=False)[y].idxmax()]
    if base in table:
        fp = table.groupby("task")[base].mean() if "task" in table else table[base].mean()
        best[f"fp_{y}"] = best["task"].map(fp) if "task" in table else fp
        best[f"delta_{y}"] = (best[y] - best[f"fp_{y}"]).round(6) + 0.0  # no -0
    columns = [
        *keys,
        "group_size",
        "bits_per_weight",
        "ideal_bits_per_weight",
        y,
        f"{y}_std",
        "seeds",
        f"fp_{y}",
        f"delta_{y}",
    ]
    return best[[c for c in columns if c in best]].sort_values(keys).reset_index(drop=True)


def report(table: pd.DataFrame, y: str = "accuracy", title: str = "") -> str:
    """The markdown text: a heading per task and a table of `best_points`."""
    best = best_points(table, y)
    lines = [f"# {title}", ""] if title else []
    lines.append(
        f"Best configuration per quantizer and bit budget (weight bits, activation bits); "
        f"`{y}` is the mean over seeds (± std), `delta_{y}` its difference to the float model. "
        f"{len(table)} runs."
    )
    for task, part in best.groupby("task", sort=True) if "task" in best else [("", best)]:
        lines += ["", f"## {task}" if task else "", ""]
        lines.append(
            part.drop(columns="task", errors="ignore").to_markdown(index=False, floatfmt=".4g")
        )
    return "\n".join(lines).strip() + "\n"
