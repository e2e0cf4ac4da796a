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

import json

import numpy as np
import pandas as pd
import scipy.stats

from q4lab.plot_layout import (
    activation_label,
    format_value,
    group_label,
    quantizer_label,
    value_label,
    y_label,
)
from q4lab.results_table import (
    CONFIG_COLUMNS,
    aggregate,
    baseline_column,
    distinct_runs,
    float_model_notes,
    higher_is_better,
)

BUDGET = ("bits", "act_bits")
NOISE = "≈ noise"
NOISE_RULE = (
    f"`{NOISE}` marks a delta whose 95 % confidence interval holds 0: |Δ| <= t · s / √n, with n "
    "the seeds, s the standard deviation (ddof=1) of the same difference taken seed by seed "
    "(configuration - float model, or configuration - configuration on the seeds both ran: "
    "each seed has its own float model and data split, so differences are paired by seed) "
    "and t Student's 97.5 % quantile at n - 1 degrees of freedom (12.7 for 2 seeds, 3.2 for "
    "4); with fewer than two such seeds there is no spread and nothing is marked"
)
# What a budget can be counted in (a size: more is bigger), by column: its name and unit.
BUDGET_AXES = {
    "bits_per_weight": ("stored bits per weight", "bits/weight"),
    "ideal_bits_per_weight": ("ideal bits/weight", "bits/weight"),
    "total_bytes": ("stored bytes", "bytes"),
    "quantized_bytes": ("stored bytes of the quantized layers", "bytes"),
    "bits": ("weight code width", "bits"),
}


def paired_difference(a: pd.Series, b: pd.Series) -> tuple[float, float, int]:
    """Mean, std (ddof=1) and count of ``a - b`` over the seeds both hold; ``a``, ``b``: values
    indexed by seed."""
    diff = (a - b).dropna()
    return float(diff.mean()), float(diff.std()), len(diff)


def paired_columns(name: str, mean: float, std: float, seeds: int) -> dict:
    """Columns ``name``, ``name_std`` (NaN under two seeds) and ``name_noise`` (`within_noise`)."""
    std = float(std) if seeds > 1 else np.nan
    noise = within_noise(mean, std, seeds)
    return {name: float(mean), f"{name}_std": std, f"{name}_noise": noise}


def within_noise(delta: float, spread: float, seeds: int) -> bool:
    """`NOISE_RULE`: the 95 % confidence interval of a mean ``delta`` over ``seeds`` paired
    differences of standard deviation ``spread`` holds 0; False when the spread is unknown
    (NaN: one seed)."""
    if seeds < 2 or np.isnan(spread):
        return False
    half_width = scipy.stats.t.ppf(0.975, seeds - 1) * spread / np.sqrt(seeds)
    return bool(abs(delta) <= half_width)


def _seed_values(table: pd.DataFrame, points: pd.DataFrame, column: str) -> list[pd.Series]:
    """Per point of `aggregate`, its ``column`` values indexed by seed."""
    keys = [c for c in CONFIG_COLUMNS if c in points and c in table]
    table = distinct_runs(table)
    seeds = table["seed"] if "seed" in table else pd.Series(0, index=table.index)
    by_config = {
        _key(key if isinstance(key, tuple) else (key,)): pd.Series(
            part[column].to_numpy(), seeds[part.index]
        )
        for key, part in table.groupby(keys, dropna=False, sort=False)
    }
    return [by_config[_key(tuple(p))] for p in points[keys].itertuples(index=False)]


def _key(values: tuple) -> tuple:
    """A configuration key whose missing values compare equal (NaN != NaN)."""
    return tuple(None if pd.isna(v) else v for v in values)


def flagged_deltas(part: pd.DataFrame, name: str) -> list[str]:
    """``"+0.0022 ± 0.0016 ≈ noise"`` per row: mean, paired std over seeds, flag."""
    out = []
    for mean, std, noise in zip(
        part[name], part[f"{name}_std"], part[f"{name}_noise"], strict=True
    ):
        if pd.isna(mean):
            out.append("")
            continue
        spread = f" ± {std:.4f}" if np.isfinite(std) else ""
        out.append(f"{mean:+.4f}{spread}" + (f" {NOISE}" if noise is True else ""))
    return out


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


# Fields whose default is left unsaid, and that a label names when not at it even where they
# do not vary: a trained or mixed-precision point says so wherever it stands alone.
METHOD_DEFAULTS = {
    "training": "ptq",
    "bits_budget": 0.0,
    "qat_steps": 0,
    "zero_point": "auto",
    "symmetric_grid": "max",
    "calib_padding": "include",
}


def _at_default(point: pd.Series, column: str) -> bool:
    value = point[column]
    return pd.isna(value) or value == METHOD_DEFAULTS[column]


def configuration_label(point: pd.Series, fields: list[str]) -> str:
    """``"GPTQ W4 g32"`` plus every other field in ``fields`` (those that vary) but those of
    `METHOD_DEFAULTS` at their default, which are named wherever they are not. A mixed-precision
    point names the widths it chose from and its budget (``"min-max W2/3/4 ≤ 3.5 bits"``): its
    ``bits`` is only the width most of its weights got."""
    parts = [quantizer_label(point["quantizer"])] if "quantizer" in point else []
    mixed = "bits_budget" in point and not _at_default(point, "bits_budget")
    if mixed:
        widths = point.get("budget_widths", "[]")
        widths = json.loads(widths) if isinstance(widths, str) else list(widths)
        parts.append(f"W{'/'.join(map(str, widths))} ≤ {point['bits_budget']:g} bits")
    elif "bits" in point:
        parts.append(f"W{point['bits']}")
    if "group_size" in point:
        parts.append(group_label(point["group_size"]))
    skip = ("task", "quantizer", "bits", "group_size", "act_bits", "bits_budget")
    quiet = [c for c in METHOD_DEFAULTS if c in point and _at_default(point, c)]
    if "act_bits" in point and not pd.isna(point["act_bits"]) and point["act_bits"] >= 16:
        skip += _ACT_RANGE_FIELDS  # a weight-only point's activation ranges are never taken
    named = [c for c in fields if c not in skip and c not in quiet]
    named += [c for c in METHOD_DEFAULTS if c in point and c not in (*named, *quiet, *skip)]
    labels = [value_label(c, point[c]) for c in named]
    if "act_mode" in named:  # "static act. act. clipping MSE" -> "static act. clipping MSE"
        labels = [
            text.removeprefix("act. ") if c.startswith("act_clipping") else text
            for c, text in zip(named, labels, strict=True)
        ]
    return " ".join([*parts, *labels])


# how an activation range is chosen: nothing a weight-only point does
_ACT_RANGE_FIELDS = ("act_symmetric", "act_clipping", "act_clipping_options")


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
    points["_values"] = _seed_values(table, points, y)
    base = baseline_column(table, y)
    if base:
        points["_deltas"] = [
            v - f for v, f in zip(points["_values"], _seed_values(table, points, base), strict=True)
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
        values, floats = _seed_values(table, agg, y), _seed_values(table, agg, base)
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
    return pd.DataFrame(rows).sort_values(order, kind="stable")


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
