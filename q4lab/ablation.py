"""What changing one field does: every configuration of a results table that ran at a value of
one grid field other than its reference (``calib_padding="exclude"``, ``sequential=True``,
``act_bits=4``, ...) beside the same configuration at the reference value (the field's default
where the table holds it), their difference paired by seed.

A Pareto front (`q4lab.report.budget_table`) answers "what is best at a size"; an ablation asks
"what does this one choice buy, everything else equal". A configuration's twin at the reference
is found as a sweep finds twins (`q4lab.sweep.fields.effective_hash`): fields that change nothing
there are ignored, so A4 static and A4 dynamic both meet the one weight-only (A16) point, a
trained point meets the post-training one whose QAT fields mean nothing, and another quantizer
meets the reference quantizer at its default options. Each seed has its own
float model and calibration data, so the differences are paired, as the report's deltas are.
"""

from __future__ import annotations

import contextlib
import difflib
import json

import pandas as pd

from q4lab.configuration_label import configuration_label
from q4lab.plot_layout import format_value, value_label
from q4lab.results_table import CONFIG_COLUMNS, distinct_runs, higher_is_better
from q4lab.seed_statistics import (
    NOISE_RULE,
    flagged_deltas,
    paired_columns,
    paired_difference,
)

# fields an ablation does not vary: what it is grouped by, or what a budget allocation decides
NOT_COMPARED = ("task", "seed", "rules", "bits_budget", "budget_widths", "budget_groups")


def _canonical(value: object) -> str:
    """A field value as one comparable text (a table stores dicts and lists as JSON)."""
    if isinstance(value, str):
        with contextlib.suppress(json.JSONDecodeError):
            value = json.loads(value) if value[:1] in "[{" else value
    return json.dumps(value, sort_keys=True, default=str)


def comparable_fields(table: pd.DataFrame) -> list[str]:
    """The sweep fields of ``table`` that take several values and an ablation can compare."""
    from q4lab.sweep.fields import FIELDS

    return [
        f
        for f in FIELDS
        if f in table and f not in NOT_COMPARED and table[f].map(_canonical).nunique() > 1
    ]


def reference_value(table: pd.DataFrame, field: str) -> object:
    """The value others are compared with: the field's default where the table holds it,
    else its first value in the table's order."""
    from q4lab.sweep.fields import FIELDS

    values = list(dict.fromkeys(table[field].dropna()))
    default = _canonical(FIELDS[field][0])
    return next((v for v in values if _canonical(v) == default), values[0])


def field_comparison(table: pd.DataFrame, field: str, y: str = "score") -> pd.DataFrame:
    """One row per task and configuration at a value of ``field`` other than the reference
    (`reference_value`) whose twin at the reference ran on a seed it ran: ``y`` of both (means
    over those seeds) and their paired difference, value - reference (mean, std over seeds,
    noise flag: `q4lab.seed_statistics.NOISE_RULE`) in ``delta``. ``frame.attrs["reference"]`` names
    the reference value."""
    from q4lab.reproduce import candidate_points
    from q4lab.sweep.fields import effective_hash

    allowed = comparable_fields(table)
    if field not in allowed:
        close = difflib.get_close_matches(field, allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"--compare {field}: not a field this table runs at several values{hint}; allowed: "
            + (", ".join(allowed) or "none (every field takes one value here)")
        )
    runs = distinct_runs(table).reset_index(drop=True)  # concatenated tables repeat labels
    if "seed" not in runs:
        runs = runs.assign(seed=0)
    reference = reference_value(runs, field)
    at_reference = runs[field].map(_canonical) == _canonical(reference)
    keys = [c for c in CONFIG_COLUMNS if c in runs]
    configs = runs.astype({c: str for c in keys}).groupby(keys, dropna=False, sort=False)

    def scores(index: pd.Index) -> pd.Series:
        part = runs.loc[index]
        return pd.Series(part[y].to_numpy(), part["seed"].to_numpy())

    # the reference as a point holds it (a table holds dicts and lists as JSON text); another
    # quantizer's twin is the reference quantizer at its default options
    at = {field: candidate_points(runs[at_reference].iloc[0])[0][field]}
    at |= {"options": {}} if field == "quantizer" else {}

    def twin(index: pd.Index) -> str:
        """The effective hash of the configuration at the reference value."""
        return effective_hash(candidate_points(runs.loc[index[0]])[0] | at)

    groups = list(configs.groups.values())
    references = {twin(i): scores(i) for i in groups if at_reference[i[0]]}
    rows = []
    for index in groups:
        if at_reference[index[0]]:
            continue
        base = references.get(twin(index))
        if base is None:
            continue
        mine = scores(index)
        paired = mine.index.intersection(base.index)
        if paired.empty:
            continue
        first = runs.loc[index[0]]
        mean, std, seeds = paired_difference(mine, base)
        rows.append(
            {
                "task": first.get("task", ""),
                "_index": index[0],
                "value": first[field],
                f"{y} at reference": base[paired].mean(),
                y: mine[paired].mean(),
                **paired_columns("delta", mean, std, seeds),
                "seeds": seeds,
            }
        )
    if not rows:
        raise ValueError(
            f"--compare {field}: no configuration ran both at {field}={reference!r} and at "
            "another value with everything else equal (on a common seed)"
        )
    frame = pd.DataFrame(rows)
    frame["configuration"] = _labels(runs, frame, field)
    frame.attrs["reference"] = reference
    return frame.drop(columns="_index")


def _labels(runs: pd.DataFrame, frame: pd.DataFrame, field: str) -> list[str]:
    """Each compared configuration named by the fields that vary among those of its task (not
    ``field``, whose value has its column), its activation width where widths differ."""
    compared = runs.loc[frame["_index"]]
    labels = pd.Series("", index=compared.index)
    for _, part in compared.groupby("task", sort=False) if "task" in compared else [("", compared)]:
        varied = [
            c
            for c in CONFIG_COLUMNS
            if c in part and c != field and part[c].astype(str).nunique() > 1
        ]
        for i, row in part.iterrows():
            weight_only = row.get("act_bits", 16) >= 16  # its act_mode says "float act." too
            fields = [c for c in varied if not (weight_only and c == "act_mode")]
            label = configuration_label(row.drop(field), fields)
            if "act_bits" in varied:
                label += " " + value_label("act_bits", row["act_bits"])
            labels[i] = label
    return labels.tolist()


def comparison_markdown(table: pd.DataFrame, field: str, y: str = "score") -> list[str]:
    """The report's section of `field_comparison`: per task, how many configurations each
    value made better, worse, or moved within the noise, and the table of them."""
    frame = field_comparison(table, field, y)
    reference = frame.attrs["reference"]
    lines = [
        f"## What {field} changes",
        "",
        f"Each configuration at a value of `{field}` other than `{reference}`, beside the same "
        f"configuration at `{reference}` (fields that change nothing there aside); Δ = {y} at "
        f"the value - {y} at `{reference}`, the mean of the per-seed differences ± their "
        f"standard deviation over the seeds both ran (noise rule: {NOISE_RULE}).",
    ]
    for task, part in frame.groupby("task", sort=True):
        rows = table[table["task"] == task] if "task" in table else table
        higher = higher_is_better(rows, y)
        lines += ["", f"### {task}" if task else "", ""]
        counts = []
        for value, at in part.groupby("value", sort=False):
            moved, noise = at["delta"] != 0, at["delta_noise"].astype(bool)
            better = (at["delta"] > 0) if higher else (at["delta"] < 0)
            counts.append(
                f"`{value}` is better in {int((better & ~noise).sum())}, worse in "
                f"{int((moved & ~better & ~noise).sum())} and within the noise or equal in "
                f"{int((noise | ~moved).sum())} of {len(at)} configurations"
            )
        one_seed = " (one seed: no spread, nothing marked)" if part["seeds"].max() < 2 else ""
        direction = "higher" if higher else "lower"
        lines += [f"{'; '.join(counts)}{one_seed}; {y}: {direction} is better.", ""]
        shown = pd.DataFrame(
            {
                "configuration": part["configuration"],
                field: part["value"].astype(str),
                f"{y} at {reference}": part[f"{y} at reference"].map(format_value),
                y: part[y].map(format_value),
                f"Δ vs {reference}": flagged_deltas(part, "delta"),
                "seeds": part["seeds"],
            }
        )
        lines.append(shown.to_markdown(index=False, disable_numparse=True))  # "+0.0064" kept
    return lines
