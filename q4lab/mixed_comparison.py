"""Mixed precision against uniform recipes: each sensitivity-allocated point of a results table
beside the uniform points of its own configuration (the next one up in size, the best one within
its budget); the report's last section."""

from __future__ import annotations

import json

import pandas as pd

from q4lab.plot_layout import format_value, group_label
from q4lab.results_table import CONFIG_COLUMNS, distinct_runs


def _candidates(point: pd.Series) -> str:
    """What an allocation chose from: ``W2/3/4 g128``, or ``W2/3/4 x per-channel/g32/g128``."""
    widths = json.loads(str(point.get("budget_widths", "[]")))
    groups = json.loads(str(point.get("budget_groups", "[]")))
    text = "W" + "/".join(map(str, widths))
    if not groups:
        return f"{text} {group_label(point['group_size'])}"
    return f"{text} x " + "/".join(map(group_label, groups))


# what a mixed point shares with the uniform points it meets: its configuration but its widths
_MIXED_CONFIG = tuple(
    c
    for c in CONFIG_COLUMNS
    if c not in ("task", "bits", "group_size", "rules", "bits_budget")
    and not c.startswith("budget_")
)


def mixed_comparison(table: pd.DataFrame, y: str = "score") -> pd.DataFrame:
    """Per task and sensitivity-allocated point (``allocation`` other than uniform / rules):
    its stored bits per weight and ``y``, the next uniform point up in size and whether the
    mixed one beats it, and the best uniform point within its budget (seed 0 or the mean),
    among the uniform points of its own configuration (`_MIXED_CONFIG`: quantizer, symmetry,
    ...; a column each where the table holds several)."""
    x = "bits_per_weight"
    table = distinct_runs(table)  # a mixed configuration's seeds: one point
    # a mixed point meets the uniform points of its own configuration (quantizer, symmetry, ...)
    config = [c for c in _MIXED_CONFIG if c in table]
    by_task = table.astype({c: str for c in config}).groupby("task")
    varies = [c for c in config if (by_task[c].nunique() > 1).any()]  # a column: within a task
    points = (
        table.groupby(
            [
                c
                for c in (
                    "task",
                    *config,
                    "allocation",
                    "budget_widths",
                    "budget_groups",
                    "bits_budget",
                    "bits",
                    "group_size",
                )
                if c in table
            ],
            dropna=False,
        )[[x, y, "higher_is_better"]]
        .mean()
        .reset_index()
    )
    rows = []
    for (task, *values), part in points.groupby(["task", *config], sort=False, dropna=False):
        higher = bool(part["higher_is_better"].iloc[0])
        shown = {c: v for c, v in zip(config, values, strict=True) if c in varies}
        uniform = part[part["allocation"] == "uniform"].sort_values(x)

        def label(p: pd.Series) -> str:
            return f"W{p['bits']} {group_label(p['group_size'])} ({p[x]:.3f}): {format_value(p[y])}"

        mixed = part[part["allocation"].str.startswith("sensitivity")].sort_values("bits_budget")
        for _, m in mixed.iterrows():
            up = uniform[uniform[x] >= m[x]]
            fits = uniform[uniform[x] <= m["bits_budget"]]
            best = fits.loc[fits[y].idxmax() if higher else fits[y].idxmin()] if len(fits) else None
            beats = (
                None if up.empty else bool(m[y] > up[y].iloc[0] if higher else m[y] < up[y].iloc[0])
            )  # strictly better: a tie is not
            rows.append(
                {
                    "task": task,
                    **shown,
                    "budget": m["bits_budget"],
                    "chooses from": _candidates(m),
                    "mixed: bits/weight": round(m[x], 3),
                    f"mixed: {y}": format_value(m[y]),
                    "next uniform up": "" if up.empty else label(up.iloc[0]),
                    "mixed better": beats,
                    "best uniform within budget": "" if best is None else label(best),
                }
            )
    order = ["task", *varies, "budget", "chooses from"]
    return pd.DataFrame(rows, columns=None if rows else order).sort_values(order, kind="stable")
