"""The results table as plots, reports and ablations read it: the columns that identify a
configuration, one row per configuration and seed (`distinct_runs`), points (`aggregate`), which
way a metric points (`higher_is_better`), the float model's column and its notes, and the Pareto
front (`pareto_front`).

Glossary: a *configuration* is one row of the grid without its seed; a *point* is a configuration
averaged over its seeds (mean and standard deviation of ``y``, mean of ``x``). Configurations that
differ in any grid field (weight ``bits``, ``act_bits``, ...) are never merged into one point.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from q4lab.plot_layout import format_value

# Columns that identify a configuration apart from its seed (those present in a table are used).
CONFIG_COLUMNS = (
    "task",
    "quantizer",
    "bits",
    "symmetric",
    "symmetric_grid",
    "zero_point",
    "group_size",
    "scale_dtype",
    "act_bits",
    "act_mode",
    "act_symmetric",
    "act_clipping",
    "act_clipping_options",
    "rotation",
    "smooth_alpha",
    "rules",
    "bits_budget",
    "budget_widths",
    "budget_groups",
    "budget_method",
    "sequential",
    "calib_size",
    "calib_padding",
    "training",
    "qat_steps",
    "qat_lr",
    "qat_loss",
    "qat_batch_size",
)
LOWER_IS_BETTER = (
    "perplexity", "bits_per_byte", "fp_perplexity", "fp_bits_per_byte", "unigram_perplexity",
    "fake_rel_diff", "fake_rel_diff_max",
)  # fmt: skip
# the task's headline metric under task-agnostic names: its direction is the rows' own
TASK_SCORES = ("score", "fp_score", "delta_score", "ptq_score", "qat_fake_score")


def allocated_as_one(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with each mixed-precision configuration's ``bits`` and ``group_size`` (the
    width and group size most of its weights got, which an allocation may choose otherwise for
    each seed) taken from its first seed's row, so that its seeds count as one configuration
    (its label names its budget and widths instead, `q4lab.report.configuration_label`)."""
    if "bits_budget" not in table:
        return table
    mixed = table["bits_budget"].fillna(0).astype(float) > 0
    if not mixed.any():
        return table
    keys = [c for c in CONFIG_COLUMNS if c in table and c not in ("bits", "group_size")]
    rows = np.flatnonzero(mixed.to_numpy())  # by position: a concatenated table repeats labels
    if "seed" in table:
        rows = rows[np.argsort(table["seed"].to_numpy()[rows], kind="stable")]
    part = table.iloc[rows].reset_index(drop=True)
    grouped = part.astype({c: str for c in keys}).groupby(keys, dropna=False, sort=False)
    out = table.copy()
    for column in ("bits", "group_size"):
        if column in table:
            first = grouped[column].transform("first").to_numpy()
            out.iloc[rows, out.columns.get_loc(column)] = first
    return out


def distinct_runs(table: pd.DataFrame, extra: Sequence[str] = ()) -> pd.DataFrame:
    """One row per configuration and seed, the first: a table may hold one configuration
    twice under two hashes (points that differ only in fields that change nothing, run before
    `q4lab run` merged them), and each seed must count once. A configuration is its
    `CONFIG_COLUMNS`, its per-layer rules (``recipe_rules``) and any ``extra`` column asked to
    tell rows apart; a mixed-precision one's seeds are one (`allocated_as_one`)."""
    table = allocated_as_one(table)
    keys = [
        c for c in dict.fromkeys((*CONFIG_COLUMNS, "recipe_rules", *extra, "seed")) if c in table
    ]
    return table.drop_duplicates(keys) if keys else table


def aggregate(table: pd.DataFrame, x: str, y: str, extra: Sequence[str] = ()) -> pd.DataFrame:
    """One row per configuration: ``x`` mean, ``y`` mean/std (0 for one seed)/count over seeds,
    and the float model's ``fp_<y>`` mean/std over the same seeds where the table has it. An
    ``x`` that is itself a configuration field (``bits``, ``group_size``) still tells
    configurations apart: W3 and W4 stay two points at x = 3 and 4, never one at 3.5."""
    from q4lab.sweep.fields import check_field_names

    check_field_names([x, y, *extra], "the results table", list(table), kind="column")
    for axis, column in (("x", x), ("y", y)):
        if not pd.api.types.is_numeric_dtype(table[column]):
            values = ", ".join(sorted(map(str, table[column].dropna().unique()))[:6])
            raise ValueError(
                f"--{axis} {column} holds text ({values}), not numbers; allowed: a numeric "
                "column (bits_per_weight, bits, group_size, score, ...). To compare its values, "
                f"group by it (q4lab plot --hue {column}, --style {column} or --facet {column})"
            )
    table = distinct_runs(table, extra)
    keys = [
        c
        for c in dict.fromkeys((*CONFIG_COLUMNS, *extra))
        if c in table and c != y and (c != x or c in CONFIG_COLUMNS)
    ]
    grouped = table.groupby(keys, dropna=False, sort=True)
    out = grouped.agg(x=(x, "mean"), y=(y, "mean"), y_std=(y, "std"), seeds=(y, "count"))
    if x in keys:  # the key holds x already
        out = out.drop(columns="x")
    out["y_std"] = out["y_std"].fillna(0.0)
    for column in ("ideal_bits_per_weight", "bits_per_weight"):
        if column in table and column not in (x, y):
            out[column] = grouped[column].mean()
    base = baseline_column(table, y)
    if base and base != x:  # the float model over the same seeds, for paired deltas
        out[base] = grouped[base].mean()
        out[f"{base}_std"] = grouped[base].std()
    return out.reset_index().rename(columns={"x": x, "y": y, "y_std": f"{y}_std"})


def higher_is_better(table: pd.DataFrame, y: str) -> bool:
    """Which way ``y`` points: from the rows' ``higher_is_better`` for the task-agnostic
    score columns (`TASK_SCORES`), else by name (`LOWER_IS_BETTER`: perplexity, bits per byte,
    the fake path's differences)."""
    if y in TASK_SCORES and "higher_is_better" in table:
        directions = set(table["higher_is_better"])
        if len(directions) > 1:
            raise ValueError(
                f"{y!r} mixes tasks whose metrics point in opposite directions; facet by task"
            )
        return bool(directions.pop())
    return y not in LOWER_IS_BETTER


def baseline_column(table: pd.DataFrame, y: str) -> str | None:
    """The float model's value of ``y`` (``fp_<y>``), if the table has it."""
    return f"fp_{y}" if f"fp_{y}" in table else None


def float_model_notes(table: pd.DataFrame, y: str) -> list[str]:
    """One line per task and seed whose rows hold more than one float model (``fp_<y>``): rows
    from baselines trained apart (a seed with no published baseline retrains on each CPU), whose
    scores do not compare, though each row's change from its own float model does."""
    base = baseline_column(table, y)
    keys = [c for c in ("task", "seed") if c in table]
    if not base or not keys:
        return []
    notes = []
    for key, part in table.groupby(keys, sort=True):
        counts = part[base].round(9).value_counts(sort=False)
        if len(counts) > 1:
            where = ", ".join(f"{k}={v}" for k, v in zip(keys, np.atleast_1d(key), strict=True))
            models = ", ".join(f"{format_value(v)} on {n} rows" for v, n in counts.items())
            notes.append(
                f"{where} has {len(counts)} float models ({base} {models}): its rows come from "
                "baselines trained apart; compare their changes from float, not their scores"
            )
    return notes


def pareto_front(points: pd.DataFrame, x: str, y: str, higher: bool = True) -> pd.DataFrame:
    """The points no other beats on both axes (lower or equal ``x``, better ``y``), by ``x``:
    an exact tie at one ``x`` keeps both. ``x`` is compared rounded to 6 decimals, as the
    report's budgets are (a mean over fewer seeds may differ in its last bit)."""
    sign = 1.0 if higher else -1.0
    points = points[points[x].notna() & points[y].notna()]  # no place on either axis
    ordered = points.assign(_x=points[x].round(6), _key=sign * points[y])
    ordered = ordered.sort_values(["_x", "_key"], ascending=[True, False])
    best, best_x = -np.inf, None
    keep = []
    for idx, at, value in zip(ordered.index, ordered["_x"], ordered["_key"], strict=True):
        if value > best or (value == best and at == best_x):
            keep.append(idx)
            best, best_x = value, at
    return ordered.loc[keep].drop(columns=["_x", "_key"])
