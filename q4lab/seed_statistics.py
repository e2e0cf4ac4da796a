"""Differences paired by seed and the noise rule that flags them: each seed has its own float
model and data split, so a delta (configuration - float model, or configuration -
configuration) is taken seed by seed, and marked ``≈ noise`` when its 95 % confidence interval
over the seeds holds 0 (`NOISE_RULE`, `within_noise`). Used by the report and the ablations.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.stats

from q4lab.results_table import CONFIG_COLUMNS, distinct_runs

NOISE = "≈ noise"
NOISE_RULE = (
    f"`{NOISE}` marks a delta whose 95 % confidence interval holds 0: |Δ| <= t · s / √n, with n "
    "the seeds, s the standard deviation (ddof=1) of the same difference taken seed by seed "
    "(configuration - float model, or configuration - configuration on the seeds both ran: "
    "each seed has its own float model and data split, so differences are paired by seed) "
    "and t Student's 97.5 % quantile at n - 1 degrees of freedom (12.7 for 2 seeds, 3.2 for "
    "4); with fewer than two such seeds there is no spread and nothing is marked"
)


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


def seed_values(table: pd.DataFrame, points: pd.DataFrame, column: str) -> list[pd.Series]:
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
