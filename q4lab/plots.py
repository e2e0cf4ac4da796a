"""Plots from a results table (pandas + matplotlib only): a task's metric against bits per weight,
one series per quantizer, error bars over seeds, the Pareto front and the float baseline.

A point of a plot is one configuration averaged over its seeds: mean and standard deviation of
``y``, mean of ``x``. The Pareto front (per facet) joins the configurations that no other beats
on both axes (fewer bits and higher ``y``); it is drawn as a step line and its points ringed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

# Columns that identify a configuration apart from its seed (those present in a table are used).
CONFIG_COLUMNS = (
    "task",
    "quantizer",
    "bits",
    "symmetric",
    "group_size",
    "scale_dtype",
    "act_bits",
    "act_mode",
    "act_symmetric",
    "act_clipping",
    "act_clipping_options",
    "sequential",
    "calib_size",
)
LOWER_IS_BETTER = ("perplexity", "bits_per_byte", "fp_perplexity", "fp_bits_per_byte")
MARKERS = "osD^vP*Xh<>p"
LINESTYLES = ("-", ":", "-.", (0, (5, 2, 1, 2)))


def aggregate(table: pd.DataFrame, x: str, y: str, extra: Sequence[str] = ()) -> pd.DataFrame:
    """One row per configuration: ``x`` mean, ``y`` mean/std/count over seeds."""
    missing = [c for c in (x, y, *extra) if c not in table]
    if missing:
        raise ValueError(f"column(s) {missing} are not in the results; allowed: {list(table)}")
    keys = [c for c in dict.fromkeys((*CONFIG_COLUMNS, *extra)) if c in table and c not in (x, y)]
    grouped = table.groupby(keys, dropna=False, sort=True)
    out = grouped.agg(x=(x, "mean"), y=(y, "mean"), y_std=(y, "std"), seeds=(y, "count"))
    out["y_std"] = out["y_std"].fillna(0.0)
    for column in ("ideal_bits_per_weight", "bits_per_weight"):
        if column in table and column not in (x, y):
            out[column] = grouped[column].mean()
    return out.reset_index().rename(columns={"x": x, "y": y, "y_std": f"{y}_std"})


def higher_is_better(table: pd.DataFrame, y: str) -> bool:
    """Which way ``y`` points: from the rows' ``higher_is_better`` for the task-agnostic
    ``score`` columns, else by name (perplexity and bits per byte: lower is better)."""
    if y in ("score", "fp_score", "delta_score") and "higher_is_better" in table:
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


def y_label(table: pd.DataFrame, y: str) -> str:
    if y in ("score", "delta_score") and "metric" in table and table["metric"].nunique() == 1:
        metric = table["metric"].iloc[0]
        return metric if y == "score" else f"{metric} - float"
    return y.replace("_", " ")


def pareto_front(points: pd.DataFrame, x: str, y: str, higher: bool = True) -> pd.DataFrame:
    """The points no other beats on both axes (lower or equal ``x``, better ``y``), by ``x``."""
    sign = 1.0 if higher else -1.0
    ordered = points.assign(_key=sign * points[y]).sort_values([x, "_key"], ascending=[True, False])
    best = -np.inf
    keep = []
    for idx, value in zip(ordered.index, ordered["_key"], strict=True):
        if value > best:
            keep.append(idx)
            best = value
    return ordered.loc[keep].drop(columns="_key")


def pareto_plot(
    table: pd.DataFrame,
    *,
    x: str = "bits_per_weight",
    y: str = "score",
    hue: str = "quantizer",
    facet: str | None = None,
    style: str | None = "act_bits",
    title: str = "",
) -> plt.Figure:
    """The figure: one panel per ``facet`` value (default: per task), a series per ``hue``,
    marker shapes per ``style`` value (default: activation bits) when it varies. ``y="score"``
    is each task's headline metric (accuracy, cosine, perplexity, ...)."""
    if facet is None and "task" in table and table["task"].nunique() > 1:
        facet = "task"
    extra = [c for c in (hue, facet, style) if c]
    agg = aggregate(table, x, y, extra)
    if style and agg[style].nunique() < 2:
        style = None
    panels = sorted(agg[facet].unique(), key=str) if facet else [None]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False, sharey=False
    )
    hues = sorted(agg[hue].unique(), key=str)
    colors = {h: plt.get_cmap("tab10")(i % 10) for i, h in enumerate(hues)}
    styles = sorted(agg[style].unique(), key=str) if style else [None]
    markers = {s: MARKERS[i % len(MARKERS)] for i, s in enumerate(styles)}
    lines = {s: LINESTYLES[i % len(LINESTYLES)] for i, s in enumerate(styles)}
    for ax, panel in zip(axes[0], panels, strict=True):
        data = agg if panel is None else agg[agg[facet] == panel]
        for h in hues:
            for s in styles:
                part = data[(data[hue] == h) & ((data[style] == s) if style else True)]
                if part.empty:
                    continue
                part = part.sort_values(x)
                ax.errorbar(
                    part[x],
                    part[y],
                    yerr=part[f"{y}_std"],
                    color=colors[h],
                    marker=markers[s],
                    linestyle=lines[s],
                    capsize=2,
                    markersize=5,
                    linewidth=1,
                )
        rows = table if panel is None else table[table[facet] == panel]
        front = pareto_front(data, x, y, higher_is_better(rows, y))
        ax.step(front[x], front[y], where="post", color="black", linewidth=1.2, alpha=0.6, zorder=1)
        ax.scatter(
            front[x],
            front[y],
            s=110,
            facecolors="none",
            edgecolors="black",
            linewidths=1.0,
            zorder=3,
        )
        base = baseline_column(table, y)
        if base:
            ax.axhline(rows[base].mean(), color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel(x.replace("_", " "))
        ax.set_ylabel(y_label(rows, y))
        if panel is not None:
            ax.set_title(f"{facet} = {panel}")
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=colors[h], label=str(h)) for h in hues]
    if style:
        handles += [
            Line2D(
                [], [], color="black", marker=markers[s], linestyle=lines[s], label=f"{style}={s}"
            )
            for s in styles
        ]
    handles.append(
        Line2D(
            [],
            [],
            color="black",
            marker="o",
            markerfacecolor="none",
            markersize=10,
            alpha=0.6,
            label="Pareto front",
        )
    )
    if baseline_column(table, y):
        handles.append(Line2D([], [], color="grey", linestyle="--", label="float (FP32)"))
    fig.legend(
        handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, fontsize=8
    )
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_plot(
    table: pd.DataFrame,
    directory: str | Path,
    *,
    x: str = "bits_per_weight",
    y: str = "score",
    **kwargs: object,
) -> list[Path]:
    """Write the figure as PNG and SVG under ``directory/plots/``; returns the paths."""
    out = Path(directory) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    fig = pareto_plot(table, x=x, y=y, **kwargs)
    stem = f"{y}_vs_{x}"
    if kwargs.get("hue") not in (None, "quantizer"):
        stem += f"_by_{kwargs['hue']}"
    if kwargs.get("facet"):
        stem += f"_per_{kwargs['facet']}"
    paths = [out / f"{stem}.png", out / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=200, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return paths
