"""Markdown summary of a results table: for each task, the best configuration of every quantizer
at every bit budget (weight bits x activation bits), with its delta to the float model."""

from __future__ import annotations

import pandas as pd

from q4lab.plots import aggregate, baseline_column, higher_is_better

BUDGET = ("bits", "act_bits")


def best_points(table: pd.DataFrame, y: str = "score") -> pd.DataFrame:
    """Best configuration (best mean ``y`` over seeds) per task, quantizer and bit budget."""
    agg = aggregate(table, "bits_per_weight", y)
    keys = [c for c in ("task", "quantizer", *BUDGET) if c in agg]
    parts = []
    for _, rows in agg.groupby("task", sort=True) if "task" in agg else [("", agg)]:
        task_rows = table if "task" not in table else table[table["task"] == rows["task"].iloc[0]]
        grouped = rows.groupby(keys, dropna=False)[y]
        pick = grouped.idxmax() if higher_is_better(task_rows, y) else grouped.idxmin()
        best = rows.loc[pick].copy()
        base = baseline_column(table, y)
        if base:
            best[f"fp_{y}"] = task_rows[base].mean()
            best[f"delta_{y}"] = (best[y] - best[f"fp_{y}"]).round(6) + 0.0  # no -0
        if "metric" in task_rows:
            best.insert(1, "metric", task_rows["metric"].iloc[0])
        parts.append(best)
    best = pd.concat(parts)
    columns = [
        *keys[:1],
        "metric",
        *keys[1:],
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


def report(table: pd.DataFrame, y: str = "score", title: str = "") -> str:
    """The markdown text: a heading per task and a table of `best_points`."""
    best = best_points(table, y)
    lines = [f"# {title}", ""] if title else []
    lines.append(
        f"Best configuration per quantizer and bit budget (weight bits, activation bits); `{y}` "
        "is the task's metric (column `metric`), mean over seeds (± std); `delta` is its "
        f"difference to the float model. {len(table)} runs."
    )
    for task, part in best.groupby("task", sort=True) if "task" in best else [("", best)]:
        lines += ["", f"## {task}" if task else "", ""]
        part = part.drop(columns="task", errors="ignore")
        lines.append(part.to_markdown(index=False, floatfmt=".4g"))
    return "\n".join(lines).strip() + "\n"
