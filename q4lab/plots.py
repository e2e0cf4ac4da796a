"""Plots from a results table (pandas + matplotlib only): a task's metric against bits per weight.

The points, their seeds and their Pareto front come from `q4lab.results_table` (its glossary
says what a *configuration* and a *point* are).

The figure (`pareto_plot`): one panel per task (rows) and activation width (columns: weights only,
A8, A4, ...); in a panel, colour = quantizer, marker = weight width, a line joins the points of one
(quantizer, width) over group sizes. Points that share an ``x`` are dodged sideways by a small
offset (`dodge`) so their error bars do not overlap; the ticks stay at the true bits per weight
and name the configurations there ("4.125" over "W4 per-channel"). The Pareto front of a panel
(the points no other beats on both axes) is drawn when it has at least two points; the float
model is a dashed line labelled with its value. `plot_points` returns what is drawn, as a table.
The labels, ticks, dodge, panel width and legend are in `q4lab.plot_layout`; every public name
of both is also importable from here.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from q4lab.plot_layout import (
    AXES_WIDTH,
    DODGE_PT,
    MAX_SPREAD,
    QUANTIZER_NAMES,
    TICK_MERGE,
    X_LABELS,
    activation_label,
    axes_width,
    crowding,
    default_title,
    dodge,
    draw_legend,
    format_value,
    group_label,
    label_width,
    natural_key,
    panel_title,
    quantizer_label,
    value_label,
    x_ticks,
    y_label,
)
from q4lab.results_table import (
    CONFIG_COLUMNS,
    LOWER_IS_BETTER,
    aggregate,
    allocated_as_one,
    baseline_column,
    distinct_runs,
    float_model_notes,
    higher_is_better,
    pareto_front,
)

__all__ = [
    # points -> figure (this module)
    "MARKERS", "LINESTYLES", "FILLSTYLES", "line_style", "plot_points",
    "pareto_plot", "save_figure", "save_plot",
    # configurations, points, Pareto front (q4lab.results_table)
    "CONFIG_COLUMNS", "LOWER_IS_BETTER", "allocated_as_one", "distinct_runs",
    "float_model_notes", "aggregate", "higher_is_better", "baseline_column", "pareto_front",
    # labels, titles, ticks, dodge, panel width (q4lab.plot_layout)
    "X_LABELS", "QUANTIZER_NAMES", "DODGE_PT", "TICK_MERGE", "AXES_WIDTH", "MAX_SPREAD",
    "y_label", "quantizer_label", "group_label", "value_label", "activation_label",
    "format_value", "default_title", "dodge", "axes_width", "x_ticks",
]  # fmt: skip


MARKERS = "osD^vP*Xh<>p"
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 2, 1, 2)))
# with the line style, the marker's fill tells other varying fields apart: a lone point has no
# line to show its style (PTQ and QAT at one size were twin markers)
FILLSTYLES = ("full", "none", "left", "bottom", "right", "top")


# after LINESTYLES, patterns a short legend handle still tells apart (matplotlib's named ones)
MORE_LINESTYLES = (
    (0, (1, 1)),  # densely dotted
    (0, (5, 1)),  # densely dashed
    (0, (3, 1, 1, 1)),  # densely dash-dotted
    (0, (3, 1, 1, 1, 1, 1)),  # densely dash-dot-dotted
    (0, (3, 4, 1, 4, 1, 4)),  # dash-dot-dotted
    (0, (8, 2, 1, 2, 1, 2, 1, 2)),  # long dash, three dots
    (0, (1, 4)),  # loosely dotted
    (0, (6, 4)),  # loosely dashed
    (0, (10, 2, 2, 2)),  # long dash, short dash
    (0, (3, 4, 3, 4, 1, 4)),  # two dashes, a dot
    (0, (10, 3, 1, 3)),  # long dash, dot
)


_ALL_LINESTYLES = (*LINESTYLES, *MORE_LINESTYLES)


def line_style(i: int) -> str | tuple:
    """The ``i``-th line style: `LINESTYLES`, then `MORE_LINESTYLES` (they cycled after five,
    so two configurations shared one), then again."""
    return _ALL_LINESTYLES[i % len(_ALL_LINESTYLES)]


def plot_points(
    table: pd.DataFrame,
    *,
    x: str = "bits_per_weight",
    y: str = "score",
    hue: str = "quantizer",
    style: str | None = "bits",
    facet: str | None = None,
    columns: str | None = "act_bits",
    width: float | None = None,
    step_pt: float = DODGE_PT,
) -> pd.DataFrame:
    """The points `pareto_plot` draws, one per configuration (`aggregate`), with

    - ``row``, ``col``: its panel (the ``facet`` and ``columns`` values, "" when unused);
    - ``series``: a tuple of the hue, style and every other field that varies within a panel,
      except the one a series' line runs along: ``x`` where it is a field (``bits``), else
      ``group_size``;
    - ``x_plot``: ``x`` dodged within the panel (`dodge`), ``step_pt`` points apart on a plotting
      area ``width`` inches wide (default `axes_width`), closer where a crowd must fit between its
      neighbours or within `MAX_SPREAD`; the column ``step_pt`` holds the spacing used;
    - ``front``: on its panel's Pareto front, set only where that front has >= 2 points.

    ``attrs`` keeps the choices made (``style``/``columns`` are dropped when they do not vary).
    """
    if facet is None and "task" in table and table["task"].nunique() > 1:
        facet = "task"
    named = [c for c in (hue, style, facet, columns) if c]
    agg = aggregate(table, x, y, named)
    if style and (style == x or style not in agg or agg[style].nunique() < 2):
        style = None  # the x axis already shows a field it would mark
    if columns and (columns not in agg or agg[columns].nunique() < 2):
        columns = None
    keys = [c for c in dict.fromkeys((*CONFIG_COLUMNS, *named)) if c in agg]
    # fields that vary within a panel and are not shown by colour or marker tell series apart too,
    # but for the one a series' line runs along: x where x is a field, else the group size
    along = x if x in CONFIG_COLUMNS else "group_size" if "group_size" not in (hue, style) else None
    panel_keys = [c for c in (facet, columns) if c]
    varying = set()
    for _, part in agg.groupby(panel_keys, dropna=False) if panel_keys else [(None, agg)]:
        varying |= {c for c in keys if part[c].nunique(dropna=False) > 1}
    extra = [c for c in keys if c in varying and c not in (hue, style, facet, columns, along)]
    series_keys = [c for c in (hue, style) if c] + extra
    out = agg.assign(
        row=agg[facet] if facet else "",
        col=agg[columns] if columns else "",
        series=list(zip(*(agg[c] for c in series_keys), strict=True))
        if series_keys
        else [()] * len(agg),
    )
    out["rank"] = [tuple(natural_key(v) for v in key) for key in out["series"]]
    higher = {}
    for row in out["row"].unique():
        rows = table if not facet else table[table[facet] == row]
        higher[row] = higher_is_better(rows, y)
    out["x_plot"] = out[x].astype(float)
    out["front"] = False
    width = width or axes_width(out, x, step_pt)
    for _, part in out.groupby(["row", "col"], sort=False):
        ordered = part.sort_values([x, "rank"])
        span, gap, crowd = crowding(ordered[x])
        per_pt = 1.15 * (span or 1.0) / width / 72  # data units per point on the page
        step = min(step_pt * per_pt, 0.7 * gap / crowd, MAX_SPREAD * (span or 1.0) / crowd)
        out.loc[ordered.index, "step_pt"] = step / per_pt
        out.loc[ordered.index, "x_plot"] = dodge(ordered[x].to_numpy(), step)
        front = pareto_front(part, x, y, higher[part["row"].iloc[0]])
        if len(front) >= 2:
            out.loc[front.index, "front"] = True
    out.attrs.update(
        x=x,
        y=y,
        hue=hue,
        style=style,
        facet=facet,
        columns=columns,
        extra=extra,
        higher=higher,
        width=width,
    )
    return out.drop(columns="rank")


def _subtitle(table: pd.DataFrame, y: str, higher: dict) -> str:
    seeds = distinct_runs(table).groupby([c for c in CONFIG_COLUMNS if c in table], dropna=False)
    seeds = seeds.size()
    n = f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}-{seeds.max()}"
    parts = [
        f"mean ± std over {n} seeds per point"
        if seeds.max() > 1
        else "one seed per point (no error bars)"
    ]
    if len(set(higher.values())) == 1:
        parts.append(f"{'higher' if next(iter(higher.values())) else 'lower'} is better")
    if "experiment" in table and table["experiment"].nunique() == 1:
        parts.append(f"experiment {table['experiment'].iloc[0]!r}, {len(table)} runs")
    return " · ".join(parts)


def looks_key(values) -> tuple:
    """A configuration's values as a key of the looks: NaN as None (NaN never equals itself)."""
    return tuple(None if pd.api.types.is_scalar(v) and pd.isna(v) else v for v in values)


def _marker(looks: dict, row: pd.Series) -> str:
    """A series' marker: its ``--style`` value's, else its other fields' (`pareto_plot`)."""
    if looks["style"]:
        return looks["markers"].get(row[looks["style"]], "o")
    return looks["extra_markers"].get(looks_key(row[looks["extra"]]), "o")


def _lone_twins(points: pd.DataFrame, looks: dict) -> bool:
    """Whether two series of one panel are single points of one colour, marker and fill."""
    sizes = points.groupby(["row", "col", "series"], sort=False).size()
    lone = points.set_index(["row", "col", "series"]).loc[sizes[sizes == 1].index].reset_index()
    seen = lone.apply(
        lambda r: (
            r["row"],
            r["col"],
            looks["colors"].get(r[looks["hue"]]),
            _marker(looks, r),
            looks["fills"].get(looks_key(r[looks["extra"]]), "full"),
        ),
        axis=1,
    )
    return bool(seen.duplicated().any())


def _draw_panel(
    ax: plt.Axes, data: pd.DataFrame, table_rows: pd.DataFrame, looks: dict, higher: bool
) -> None:
    """One panel: a line with error bars per series, the Pareto front, the float model (its
    value, or 0 for a change from it), ticks."""
    x, y, hue = looks["x"], looks["y"], looks["hue"]
    for _, part in data.groupby("series", sort=False):
        part = part.sort_values(x)
        first = part.iloc[0]
        ax.errorbar(
            part["x_plot"],
            part[y],
            yerr=part[f"{y}_std"],
            color=looks["colors"][first[hue]],
            marker=_marker(looks, first),
            linestyle=looks["lines"].get(looks_key(first[looks["extra"]]), "-"),
            fillstyle=looks["fills"].get(looks_key(first[looks["extra"]]), "full"),
            markersize=float(np.clip(first["step_pt"] * 1.1, 3.5, 5.5)),
            capsize=2,
            linewidth=1,
            elinewidth=0.8,
            alpha=0.9,
            zorder=2,
        )
    front = data[data["front"]].sort_values(x)
    if len(front) >= 2:
        ax.step(front["x_plot"], front[y], where="post", color="black", lw=2.5, alpha=0.18)
        ax.scatter(
            front["x_plot"],
            front[y],
            s=120,
            facecolors="none",
            edgecolors="black",
            lw=0.9,
            zorder=3,
        )
    value = None
    if looks["base"]:  # one float model per seed, over the panel's seeds
        base = table_rows[looks["base"]]
        value = (
            base.groupby(table_rows["seed"]).first().mean() if "seed" in table_rows else base.mean()
        )
    elif y.startswith("delta_"):  # a change from the float model: the float model is 0
        value = 0.0
    if value is not None:
        ax.axhline(value, color="grey", linestyle="--", linewidth=1, zorder=0)
        ax.annotate(
            f"float\n{format_value(value)}",
            (1.0, value),
            xycoords=("axes fraction", "data"),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=7.5,
            color="dimgrey",
        )
    ticks, labels = x_ticks(data, x)
    span = float(data[x].max() - data[x].min())
    if label_width(ticks, labels, span) > looks["width"]:  # stagger crowded labels
        depth = max(label.count("\n") for label in labels) + 1
        labels = [("\n" * depth if i % 2 else "") + t for i, t in enumerate(labels)]
    ax.set_xticks(ticks, labels, fontsize=7.5)
    ax.set_xticks(sorted(data[x].round(6).unique()), minor=True)  # each true x
    ax.tick_params(axis="x", which="major", length=0, pad=4)
    ax.tick_params(axis="x", which="minor", length=4)
    ax.tick_params(axis="y", labelsize=8)
    lo, hi = data["x_plot"].min(), data["x_plot"].max()
    pad = 0.06 * (hi - lo) if hi > lo else 0.25
    ax.set_xlim(lo - pad, hi + pad)
    direction = "higher" if higher else "lower"
    ax.set_ylabel(f"{y_label(table_rows, y)} ({direction} is better)", fontsize=9)
    ax.grid(alpha=0.25, linewidth=0.6)


def pareto_plot(
    table: pd.DataFrame,
    *,
    x: str = "bits_per_weight",
    y: str = "score",
    hue: str = "quantizer",
    style: str | None = "bits",
    facet: str | None = None,
    columns: str | None = "act_bits",
    title: str | None = None,
) -> plt.Figure:
    """The figure: a panel per ``facet`` value (rows; default: per task when there are several)
    and ``columns`` value (default: activation bits), colour per ``hue``, marker per ``style``
    (default: weight bits), error bars = std over seeds, dodged where points share an ``x``.
    ``y="score"`` is each task's headline metric (accuracy, cosine, perplexity, ...). ``title``
    defaults to the metric, the x axis and the task. See `plot_points` for what is drawn."""
    for note in float_model_notes(table, y):  # the float line would average them
        warnings.warn(note, stacklevel=2)
    points = plot_points(table, x=x, y=y, hue=hue, style=style, facet=facet, columns=columns)
    a = points.attrs
    rows = sorted(points["row"].unique(), key=natural_key)
    cols = sorted(points["col"].unique(), key=lambda v: (-natural_key(v)[1], str(v)))  # A16 first
    # one line of panels per facet value; a single task's panels wrap when they get too wide
    width = a["width"] + 1.3
    grid = [[(row, col) for col in cols] for row in rows]
    if len(rows) == 1 and len(cols) * width > 16:
        per_line = max(1, int(16 // width))
        grid = [
            [(rows[0], c) for c in cols[i : i + per_line]] for i in range(0, len(cols), per_line)
        ]
    n_cols = max(len(line) for line in grid)
    fig, axes = plt.subplots(
        len(grid), n_cols, figsize=(width * n_cols, 3.9 * len(grid) + 0.6), squeeze=False
    )
    styles = sorted(points[a["style"]].unique(), key=natural_key) if a["style"] else []
    extra = a["extra"]
    combos = {looks_key(r) for r in points[extra].itertuples(index=False)} if extra else set()
    extras = sorted(combos, key=lambda values: tuple(natural_key(v) for v in values))
    looks = {
        "x": x,
        "y": y,
        "hue": hue,
        "style": a["style"],
        "extra": extra,
        "base": baseline_column(table, y),
        "width": a["width"],
        "colors": {
            h: plt.get_cmap("tab10")(i % 10)
            for i, h in enumerate(sorted(points[hue].unique(), key=natural_key))
        },
        "markers": {s: MARKERS[i % len(MARKERS)] for i, s in enumerate(styles)},
        "lines": {e: line_style(i) for i, e in enumerate(extras)},
        "fills": {e: FILLSTYLES[i % len(FILLSTYLES)] for i, e in enumerate(extras)},
        # without --style the marker is free: it tells apart what the fills alone cannot
        "extra_markers": {
            e: "o" if a["style"] else MARKERS[i // len(FILLSTYLES) % len(MARKERS)]
            for i, e in enumerate(extras)
        },
    }
    if len(extras) > len(_ALL_LINESTYLES) or _lone_twins(points, looks):
        warnings.warn(
            f"{len(extras)} configurations of {', '.join(extra)} share "
            f"{len(_ALL_LINESTYLES)} line styles and {len(FILLSTYLES)} marker fills (a lone "
            "point has no line), so some look alike: give one of these fields --hue, --style "
            "or --facet, or plot a part of the table",
            stacklevel=2,
        )
    for r, line in enumerate(grid):
        for c, (row, col) in enumerate(line):
            ax = axes[r][c]
            data = points[(points["row"] == row) & (points["col"] == col)]
            if data.empty:
                ax.set_visible(False)
                continue
            rows_here = table if not a["facet"] else table[table[a["facet"]] == row]
            if a["columns"]:
                rows_here = rows_here[rows_here[a["columns"]] == col]
            _draw_panel(ax, data, rows_here, looks, a["higher"][row])
            ax.set_title(panel_title(points, data, row, col), fontsize=10)
            if r == len(grid) - 1 or c >= len(grid[-1]):  # no panel below
                ax.set_xlabel(X_LABELS.get(x, x.replace("_", " ")), fontsize=8)
        for c in range(len(line), n_cols):
            axes[r][c].set_visible(False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.62 / fig.get_figheight()), w_pad=2.0)
    spare = axes[-1][len(grid[-1])] if len(grid[-1]) < n_cols else None
    draw_legend(fig, points, looks, spare)
    height = fig.get_figheight()
    heading = title or default_title(table, x, y)
    fig.text(0.5, 1 - 0.12 / height, heading, ha="center", va="top", fontsize=12)
    subtitle = _subtitle(table, y, a["higher"])
    fig.text(0.5, 1 - 0.40 / height, subtitle, ha="center", va="top", fontsize=8, color="dimgrey")
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
    for option, default in (("style", "bits"), ("columns", "act_bits")):  # each its own file
        if (value := kwargs.get(option, default)) != default:
            stem += f"_{option}_{value or 'none'}"
    return save_figure(fig, out, stem)


def save_figure(fig: plt.Figure, directory: Path, stem: str) -> list[Path]:
    """``directory/stem.png`` (200 dpi) and ``.svg`` (no date, and ids hashed from a fixed salt,
    not a random one: reruns give the same bytes); closes the figure; returns the paths."""
    paths = [directory / f"{stem}.png", directory / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=200, bbox_inches="tight")
    with plt.rc_context({"svg.hashsalt": "q4lab"}):
        fig.savefig(paths[1], bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return paths
