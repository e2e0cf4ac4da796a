"""What changing one field does: every configuration of a results table at each value of one
grid field (``calib_padding``, ``sequential``, ``symmetric_grid``, ...), and its difference from
the field's reference value (its default where the table holds it), paired by seed.

A Pareto front (`q4lab.report.budget_table`) answers "what is best at a size"; an ablation asks
"what does this one choice buy, everything else equal": each row compares a configuration only
with itself at the other value, on the seeds both ran (each seed has its own float model and
calibration data, so the differences are paired, as the report's deltas are).
"""

from __future__ import annotations

import pandas as pd

from q4lab.plots import CONFIG_COLUMNS, distinct_runs, format_value, higher_is_better
from q4lab.report import (
    NOISE_RULE,
    configuration_label,
    flagged_deltas,
    paired_columns,
    paired_difference,
)


def reference_value(table: pd.DataFrame, field: str) -> object:
    """The value others are compared with: the field's default where the table holds it,
    else its first value in the table's order."""
    from q4lab.sweep.fields import FIELDS

    values = list(dict.fromkeys(table[field].dropna()))
    default = FIELDS.get(field, (None,))[0]
    return default if default in values else values[0]


def _by_seed(runs: pd.DataFrame, y: str) -> pd.Series:
    return pd.Series(runs[y].to_numpy(), runs["seed"].to_numpy())


def field_comparison(table: pd.DataFrame, field: str, y: str = "score") -> pd.DataFrame:
    """One row per task and configuration (its fields but ``field``) that ran at two or more of
    ``field``'s values: ``y`` (mean over seeds) at each value, and for each value other than
    the reference (`reference_value`) the paired difference value - reference (mean, std over
    seeds, noise flag: `q4lab.report.NOISE_RULE`) in columns ``Δ <value>``."""
    compared = [c for c in CONFIG_COLUMNS if c in table]
    if field not in compared:
        raise ValueError(
            f"--compare {field}: not a configuration column of this table; allowed: "
            + ", ".join(c for c in compared if table[c].astype(str).nunique() > 1)
        )
    runs = distinct_runs(table).reset_index(drop=True)  # concatenated tables repeat labels
    if "seed" not in runs:
        runs = runs.assign(seed=0)
    values = list(dict.fromkeys(runs[field].dropna()))
    if len(values) < 2:
        raise ValueError(f"--compare {field}: the table holds one value of it ({values}), not two")
    reference = reference_value(runs, field)
    others = [v for v in values if v != reference]
    keys = [c for c in compared if c != field]
    rows = []
    for task, in_task in runs.groupby("task", sort=True) if "task" in runs else [("", runs)]:
        shown = [c for c in keys if in_task[c].astype(str).nunique() > 1]
        groups = in_task.astype({c: str for c in keys}).groupby(keys, dropna=False, sort=False)
        for _, part in groups:
            by_value = {v: _by_seed(part[part[field] == v], y) for v in values}
            if by_value[reference].empty or all(by_value[v].empty for v in others):
                continue
            point = in_task.loc[part.index[0]].drop(field)  # named by the columns instead
            row = {"task": task, "configuration": configuration_label(point, shown)}
            for v in [reference, *others]:
                row[f"{y} at {v}"] = by_value[v].mean()
            for v in others:
                mean, std, seeds = paired_difference(by_value[v], by_value[reference])
                row |= paired_columns(f"Δ {v}", mean, std, seeds)
                row[f"seeds {v}"] = seeds
            rows.append(row)
    frame = pd.DataFrame(rows)
    frame.attrs.update(reference=reference, others=others)
    return frame


def comparison_markdown(table: pd.DataFrame, field: str, y: str = "score") -> list[str]:
    """The report's section of `field_comparison`: per task, a table of the configurations, and
    how many each other value made better, worse, or moved within the noise."""
    frame = field_comparison(table, field, y)
    reference, others = frame.attrs["reference"], frame.attrs["others"]
    lines = [
        f"## What {field} changes",
        "",
        f"Each configuration at every value of `{field}`; Δ = {y} at the value - {y} at "
        f"`{reference}`, the mean of the per-seed differences ± their standard deviation "
        f"(noise rule: {NOISE_RULE}).",
    ]
    for task, part in frame.groupby("task", sort=True):
        rows = table[table["task"] == task] if "task" in table else table
        higher = higher_is_better(rows, y)
        lines += ["", f"### {task}" if task else "", ""]
        counts = []
        for v in others:
            flagged = part[f"Δ {v}_noise"].astype(bool)
            better = (part[f"Δ {v}"] > 0) if higher else (part[f"Δ {v}"] < 0)
            known = part[f"Δ {v}"].notna()
            counts.append(
                f"`{v}` is better in {int((better & known & ~flagged).sum())}, worse in "
                f"{int((~better & known & ~flagged & (part[f'Δ {v}'] != 0)).sum())} and within "
                f"the noise or equal in {int((known & (flagged | (part[f'Δ {v}'] == 0))).sum())} "
                f"of {int(known.sum())} configurations"
            )
        shown = pd.DataFrame({"configuration": part["configuration"]})
        for v in [reference, *others]:
            shown[f"{y} at {v}"] = part[f"{y} at {v}"].map(format_value)
        for v in others:
            shown[f"Δ {v}"] = flagged_deltas(part, f"Δ {v}")
            shown[f"seeds ({v})"] = part[f"seeds {v}"].to_numpy()
        direction = "higher" if higher else "lower"
        lines += [f"{'; '.join(counts)} ({y}: {direction} is better).", ""]
        lines.append(shown.to_markdown(index=False))
    return lines
