"""Markdown summary of a results table.

Glossary:
  point    one configuration (a grid row without its seed), mean and std of the metric over seeds.
  budget   an upper bound ``b`` on bits per weight (stored by default, or ideal packed).
  front    per task and activation width, the best point within each budget ``b``; as ``b``
           grows the best changes only at the Pareto front, so one row stands for the range of
           budgets ``a <= b < c`` (`budget_table`).
  noise    a delta is marked ``≈ noise`` when its 95 % confidence interval over the seeds holds 0
           (`NOISE_RULE`, `within_noise`).

The report: the budget table of every task and activation width (human-readable configuration
names), then each quantizer's best point per weight and activation width (`best_points`, raw
field values as an experiment file spells them).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# The seed statistics, configuration labels and mixed-precision section live in their own
# modules; the names imported from them stay importable from here (tests, the notebook).
from q4lab.configuration_label import configuration_label
from q4lab.mixed_comparison import mixed_comparison
from q4lab.plot_layout import activation_label, format_value, y_label
from q4lab.results_table import (
    CONFIG_COLUMNS,
    aggregate,
    baseline_column,
    distinct_runs,
    float_model_notes,
    higher_is_better,
)
from q4lab.seed_statistics import (
    NOISE,
    NOISE_RULE,
    flagged_deltas,
    paired_columns,
    paired_difference,
    seed_values,
    within_noise,
)

BUDGET = ("bits", "act_bits")
# What a budget can be counted in (a size: more is bigger), by column: its name and unit.
BUDGET_AXES = {
    "bits_per_weight": ("stored bits per weight", "bits/weight"),
    "ideal_bits_per_weight": ("ideal bits/weight", "bits/weight"),
    "total_bytes": ("stored bytes", "bytes"),
    "quantized_bytes": ("stored bytes of the quantized layers", "bytes"),
    "bits": ("weight code width", "bits"),
}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def budget_table(table: pd.DataFrame, x: str = "bits_per_weight", y: str = "score") -> pd.DataFrame:
    """The Pareto-best point per budget of ``x`` (a size, one of `BUDGET_AXES`), per task and
    activation width.

    One row per point on the front (scanning budgets upwards, a point joins when it is strictly
    better than every smaller one; ties go to the smaller), with ``budget`` (the range of budgets
    ``a <= b < c`` over which it is the best point of size <= ``b``), its ``configuration``,
    ``x``, ``y`` mean and std over ``seeds``; ``delta_float`` (point - float model), ``gain``
    (point - previous row) and ``runner_up_delta`` (``runner_up``, the best point of another
    quantizer within the row's budgets, - the row's point), each paired by seed, with its
    ``*_std`` over seeds and ``*_noise`` flag (`NOISE_RULE`).
    """
    if x not in BUDGET_AXES:
        why = " (it grows as the model shrinks)" if x == "compression" else ""
        raise ValueError(f"x={x!r} is not a size to budget by{why}; allowed: {list(BUDGET_AXES)}")
    points = aggregate(table, x, y)
    points["_values"] = seed_values(table, points, y)
    base = baseline_column(table, y)
    if base:
        points["_deltas"] = [
            v - f for v, f in zip(points["_values"], seed_values(table, points, base), strict=True)
        ]
    sections = [c for c in ("task", "act_bits") if c in points]
    config = [c for c in CONFIG_COLUMNS if c in points and c not in sections]
    rows = []
    for key, part in points.groupby(sections, sort=True) if sections else [((), points)]:
        key = key if isinstance(key, tuple) else (key,)
        rows_here = table
        for column, value in zip(sections, key, strict=True):
            rows_here = rows_here[rows_here[column] == value]
        sign = 1.0 if higher_is_better(rows_here, y) else -1.0
        fields = [c for c in config if part[c].nunique(dropna=False) > 1]
        part = part.assign(_x=part[x].round(6), _key=sign * part[y]).sort_values(["_x", "_key"])
        part = part[part["_key"].notna()]  # a point no seed scored (NaN) ranks nowhere
        front = []  # (budget, best point, points within the budget)
        for b in np.sort(part["_x"].unique()):
            here = part[part["_x"] == b]
            best = here.loc[here["_key"].idxmax()]
            if not front or best["_key"] > front[-1][1]["_key"]:
                front.append((b, best, None))
            front[-1] = (front[-1][0], front[-1][1], part[part["_x"] <= b])
        for i, (b, best, within) in enumerate(front):
            upper = front[i + 1][0] if i + 1 < len(front) else None
            row = dict(zip(sections, key, strict=True))
            row |= {
                "budget": f"{b:.4g} ≤ b < {upper:.4g}" if upper is not None else f"b ≥ {b:.4g}",
                "configuration": configuration_label(best, fields),
                x: best[x],
                y: best[y],
                f"{y}_std": best[f"{y}_std"] if best["seeds"] > 1 else np.nan,
                "seeds": int(best["seeds"]),
            }
            if base:
                deltas = best["_deltas"].dropna()  # a seed without a score counts for nothing
                row |= paired_columns("delta_float", deltas.mean(), deltas.std(), len(deltas))
            if i > 0:
                previous = front[i - 1][1]["_values"]
                row |= paired_columns("gain", *paired_difference(best["_values"], previous))
            if "quantizer" in part:
                # the best other quantizer at the top of the row's range of budgets
                others = within[within["quantizer"] != best["quantizer"]]
                if len(others):
                    other = others.loc[others["_key"].idxmax()]
                    row["runner_up"] = configuration_label(other, fields)
                    delta = paired_difference(other["_values"], best["_values"])
                    row |= paired_columns("runner_up_delta", *delta)
            rows.append(row)
    return pd.DataFrame(rows, columns=None if rows else [*sections, "budget", "configuration"])


def best_points(table: pd.DataFrame, y: str = "score") -> pd.DataFrame:
    """Best configuration (best mean ``y`` over seeds) per task, quantizer, weight bits and
    activation bits, whatever its size (see `budget_table` for the best per size; a tie goes to
    the smaller); ``vs_float`` is `NOISE` where its ``delta_<y>`` (paired by seed) is within the
    noise (`NOISE_RULE`); the standard deviation of one seed is NaN, not 0."""
    agg = aggregate(table, "bits_per_weight", y)
    base = baseline_column(table, y)
    if base:
        values, floats = seed_values(table, agg, y), seed_values(table, agg, base)
        paired = [paired_difference(v, f) for v, f in zip(values, floats, strict=True)]
        agg[f"delta_{y}"] = [mean for mean, _, _ in paired]
        agg["vs_float"] = [NOISE if within_noise(*p) else "" for p in paired]
    keys = [c for c in ("task", "quantizer", *BUDGET) if c in agg]
    parts = []
    for _, rows in agg.groupby("task", sort=True) if "task" in agg else [("", agg)]:
        task_rows = table if "task" not in table else table[table["task"] == rows["task"].iloc[0]]
        rows = rows.sort_values("bits_per_weight", kind="stable")  # a tie goes to the smaller
        rows = rows[rows[y].notna()]  # a point no seed scored ranks nowhere
        if rows.empty:
            continue
        grouped = rows.groupby(keys, dropna=False)[y]
        pick = grouped.idxmax() if higher_is_better(task_rows, y) else grouped.idxmin()
        best = rows.loc[pick].copy()
        if base:
            best[f"delta_{y}"] = best[f"delta_{y}"].round(6) + 0.0  # no -0
        if "metric" in task_rows:
            best.insert(1, "metric", task_rows["metric"].iloc[0])
        parts.append(best)
    if not parts:
        return pd.DataFrame(columns=keys)
    best = pd.concat(parts)
    best[f"{y}_std"] = best[f"{y}_std"].where(best["seeds"] > 1)  # one seed has no spread
    columns = [
        *keys[:1],
        "metric",
        *keys[1:],
        "group_size",
        *(  # every other field that tells apart configurations competing for a row
            c
            for c in CONFIG_COLUMNS
            if c not in (*keys, "group_size")
            and c in best
            and table[[*keys, c]].astype({c: str}).groupby(keys, dropna=False)[c].nunique().max()
            > 1
        ),
        "bits_per_weight",
        "ideal_bits_per_weight",
        y,
        f"{y}_std",
        "seeds",
        f"fp_{y}",
        f"delta_{y}",
        "vs_float",
    ]
    return best[[c for c in columns if c in best]].sort_values(keys).reset_index(drop=True)


def _budget_markdown(part: pd.DataFrame, x: str, y: str, metric: str) -> str:
    """One section of `budget_table` as a markdown table of formatted strings."""
    name, unit = BUDGET_AXES[x]
    out = pd.DataFrame({f"budget ({unit})": part["budget"]})
    out["best configuration"] = part["configuration"]
    out[name] = [f"{v:.4g}" for v in part[x]]
    out[f"{metric} (mean ± std)"] = [
        format_value(m) + (f" ± {format_value(s)}" if np.isfinite(s) else "")
        for m, s in zip(part[y], part[f"{y}_std"], strict=True)
    ]
    out["seeds"] = part["seeds"]
    if "delta_float" in part:
        out["Δ vs float"] = flagged_deltas(part, "delta_float")
    if "gain" in part:
        out["Δ vs previous row"] = flagged_deltas(part, "gain")
    if "runner_up" in part:
        deltas = flagged_deltas(part, "runner_up_delta")
        out["runner-up (other quantizer): Δ"] = [
            "" if pd.isna(r) else f"{r}: {d}"
            for r, d in zip(part["runner_up"], deltas, strict=True)
        ]
    out = out.loc[:, (out != "").any()]  # e.g. no gain column for a one-row front
    return out.to_markdown(index=False, disable_numparse=True)


def _distinct(table: pd.DataFrame, column: str) -> str:
    return ", ".join(str(v) for v in sorted(table[column].dropna().unique())) or "?"


def _provenance(table: pd.DataFrame) -> list[str]:
    """Where the rows were computed (their manifest columns) and what may differ elsewhere."""
    if not {"git_commit", "platform", "jax_version"} <= set(table.columns):
        return []
    commits = _distinct(table.assign(git_commit=table["git_commit"].str[:7]), "git_commit")
    cpu = f"{_distinct(table, 'cpu')}, " if "cpu" in table else ""
    blas = f", BLAS {_distinct(table, 'blas')}" if "blas" in table else ""
    return [
        "",
        f"Computed at commit {commits} on {cpu}{_distinct(table, 'platform')} "
        f"({_distinct(table, 'device')}), jax {_distinct(table, 'jax_version')}{blas}. "
        "`q4lab reproduce` reruns rows. On the same CPU type, core count, BLAS kernels and "
        "threads and versions, every difference is 0. On another CPU, from the published float "
        "baselines, sizes are exact and a score may move where a rounding falls the other way "
        "(a flipped test example). GPTQ's scores move more on another core count (XLA rounds "
        "its Hessians otherwise) or where OpenBLAS ran its Cholesky factors with other kernels "
        "or threads (`OPENBLAS_CORETYPE`, `OPENBLAS_NUM_THREADS`).",
    ]


def report(
    table: pd.DataFrame,
    y: str = "score",
    title: str = "",
    x: str = "bits_per_weight",
    compare: str | None = None,
) -> str:
    """The markdown text: per task, the float model and a `budget_table` per activation width;
    with ``compare`` (a field), what changing it does to each configuration
    (`q4lab.ablation`); then `best_points`."""
    budgets = budget_table(table, x, y)
    seeds = table["seed"].nunique() if "seed" in table else 1
    configs = len(aggregate(table, x, y))
    lines = [f"# {title}", ""] if title else []
    twins = len(table) - len(distinct_runs(table))
    counted = f" ({twins} more: one configuration and seed again, counted once)" if twins else ""
    lines += [
        f"{_count(len(table) - twins, 'run')}{counted}: {_count(configs, 'configuration')}, "
        f"{_count(seeds, 'seed')}. Per task and "
        f"activation width, the best configuration within each budget b of {BUDGET_AXES[x][0]} "
        "(the Pareto front; ties go to the smaller configuration):",
        "",
        "- a row holds for every budget in its range; a bigger budget buys a better point only "
        "where the next row starts;",
        f"- `{y}` is the task's metric, mean ± standard deviation over seeds;",
        "- Δ vs float = configuration - float model; Δ vs previous row = the gain bought by the "
        "bigger budget; runner-up = the best configuration of another quantizer within the "
        "row's budgets, Δ to the row's best. Each Δ is the mean of the per-seed differences ± "
        "their standard deviation; for a lower-is-better metric (perplexity) a positive Δ is a "
        "loss;",
        f"- noise rule: {NOISE_RULE}.",
    ]
    lines += _provenance(table)
    base = baseline_column(table, y)
    tasks = sorted(table["task"].unique()) if "task" in table else [None]
    for task in tasks:
        rows = table if task is None else table[table["task"] == task]
        metric = y_label(rows, y)
        direction = "higher" if higher_is_better(rows, y) else "lower"
        heading = f"## {task}: {metric} ({direction} is better)" if task else f"## {metric}"
        lines += ["", heading, ""]
        if base:
            fp = rows.drop_duplicates("seed")[base] if "seed" in rows else rows[base]
            spread = f" ± {format_value(fp.std())}" if len(fp) > 1 else ""
            lines.append(
                f"Float model: {format_value(fp.mean())}{spread} ({_count(len(fp), 'seed')})."
            )
            lines += [f"\n**Note:** {note}." for note in float_model_notes(rows, y)]
            runs = distinct_runs(rows)
            keys = [c for c in CONFIG_COLUMNS if c in runs]
            counts = runs.groupby(keys, dropna=False)["seed"].nunique() if "seed" in runs else []
            if len(counts) and counts.nunique() > 1:
                lines.append(
                    f"\n**Note:** configurations here ran on {counts.min()} to {counts.max()} "
                    "seeds, each seed with its own float model: the means of two configurations "
                    "over other seeds do not compare exactly; their Δ vs float, paired by seed, "
                    "does."
                )
        part = budgets if task is None else budgets[budgets["task"] == task]
        widths = sorted(part["act_bits"].unique(), reverse=True) if "act_bits" in part else [None]
        for width in widths:
            section = part if width is None else part[part["act_bits"] == width]
            if width is not None:
                bits = rows["bits"].unique() if "bits" in rows else []
                at = rows[rows["act_bits"] == width]
                modes = at["act_mode"].unique() if "act_mode" in at else []
                label = activation_label(width, bits, modes[0] if len(modes) == 1 else None)
                lines += ["", f"### {label}", ""]
            lines.append(_budget_markdown(section, x, y, metric))
    if compare is not None:
        from q4lab.ablation import comparison_markdown

        lines += ["", *comparison_markdown(table, compare, y)]
    best = best_points(table, y)
    lines += [
        "",
        "## Best point per quantizer",
        "",
        "Each quantizer's best configuration per weight width (`bits`) and activation width "
        "(`act_bits`) whatever its size, with field values as an experiment file spells them; "
        f"`vs_float` is `{NOISE}` where the 95 % interval of `delta_{y}` holds 0.",
    ]
    for task, part in best.groupby("task", sort=True) if "task" in best else [("", best)]:
        lines += ["", f"### {task}" if task else "", ""]
        part = part.drop(columns="task", errors="ignore")
        std = part[f"{y}_std"]  # a one-seed point's is blank, not "nan"
        part = part.assign(**{f"{y}_std": std.astype(object).where(std.notna(), None)})
        lines.append(part.to_markdown(index=False, floatfmt=".4g", missingval=""))
    if "allocation" in table and table["allocation"].str.startswith("sensitivity").any():
        lines += [
            "",
            "## Mixed precision against uniform recipes",
            "",
            "Each sensitivity-allocated point against the smallest uniform point at least as "
            "large (stored bits per weight) and the best uniform point within its budget.",
            "",
            mixed_comparison(table, y).to_markdown(index=False),
        ]
    return "\n".join(lines).strip() + "\n"
