"""Plots from a results table (pandas + matplotlib only): a task's metric against bits per weight.

Glossary: a *configuration* is one row of the grid without its seed; a *point* is a configuration
averaged over its seeds (mean and standard deviation of ``y``, mean of ``x``). Configurations that
differ in any grid field (weight ``bits``, ``act_bits``, ...) are never merged into one point.

The figure (`pareto_plot`): one panel per task (rows) and activation width (columns: weights only,
A8, A4, ...); in a panel, colour = quantizer, marker = weight width, a line joins the points of one
(quantizer, width) over group sizes. Points that share an ``x`` are dodged sideways by a small
offset (`dodge`) so their error bars do not overlap; the ticks stay at the true bits per weight
and name the configurations there ("4.125" over "W4 per-channel"). The Pareto front of a panel
(the points no other beats on both axes) is drawn when it has at least two points; the float
model is a dashed line labelled with its value. `plot_points` returns what is drawn, as a table.
"""

from __future__ import annotations

import itertools
import json
import re
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
X_LABELS = {
    "bits_per_weight": "stored bits per weight (codes + scales + zeros; 2-3-bit codes in nibbles)",
    "ideal_bits_per_weight": "ideal packed bits per weight (b-bit codes + scales + zeros)",
}
QUANTIZER_NAMES = {
    "minmax": "min-max",
    "percentile": "percentile",
    "mse": "MSE",
    "gptq": "GPTQ",
    "awq": "AWQ",
    "hqq": "HQQ",
    "rotation": "rotation",
}
MARKERS = "osD^vP*Xh<>p"
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 2, 1, 2)))
DODGE_PT = 5.0  # spacing of dodged points on the page, in points (1/72 inch)
TICK_MERGE = 0.045  # ticks closer than this fraction of the x span share one label
AXES_WIDTH = (3.4, 8.0)  # inches: a panel's plotting area grows with its crowd, within these
MAX_SPREAD = 0.2  # dodged points of one tick span at most this fraction of the panel's x span


def aggregate(table: pd.DataFrame, x: str, y: str, extra: Sequence[str] = ()) -> pd.DataFrame:
    """One row per configuration: ``x`` mean, ``y`` mean/std (0 for one seed)/count over seeds,
    and the float model's ``fp_<y>`` mean/std over the same seeds where the table has it."""
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
    base = baseline_column(table, y)
    if base and base != x:  # the float model over the same seeds, for paired deltas
        out[base] = grouped[base].mean()
        out[f"{base}_std"] = grouped[base].std()
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


# ----------------------------------------------------------------------------- labels


def quantizer_label(name: object) -> str:
    """``"gptq(act_order=True,clipping='mse')"`` -> ``"GPTQ (act order, clipping MSE)"``."""
    match = re.fullmatch(r"\s*([\w.-]+)\s*(?:\((.*)\))?\s*", str(name))
    if not match:
        return str(name)
    base, options = match.groups()
    label = QUANTIZER_NAMES.get(base, base)
    parts = []
    for option in filter(None, (o.strip() for o in (options or "").split(","))):
        key, _, value = option.partition("=")
        key, value = key.strip().replace("_", " "), value.strip().strip("'\"")
        if value in ("True", "true", ""):
            parts.append(key)
        elif value in ("False", "false"):
            parts.append(f"no {key}")
        else:
            parts.append(f"{key} {QUANTIZER_NAMES.get(value, value)}")
    return f"{label} ({', '.join(parts)})" if parts else label


def group_label(group_size: object) -> str:
    """0 -> ``"per-channel"``, 32 -> ``"g32"``."""
    return "per-channel" if int(group_size) == 0 else f"g{int(group_size)}"


def _options_label(value: object) -> str:
    try:
        options = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError:
        return str(value)
    if isinstance(options, dict):
        return ", ".join(f"{k} {v}" for k, v in options.items()) or "default"
    return str(value)


def value_label(column: str, value: object) -> str:
    """A grid value as a reader would name it (``act_bits=16`` -> ``"A16 (weights only)"``)."""
    if column == "quantizer":
        return quantizer_label(value)
    if column == "bits":
        return f"W{value}"
    if column == "group_size":
        return group_label(value)
    if column == "act_bits":
        return "A16 (weights only)" if int(value) >= 16 else f"A{value}"
    if column == "symmetric":
        return "symmetric" if value else "asymmetric (zero point)"
    if column == "act_symmetric":
        return "symmetric act." if value else "asymmetric act."
    if column == "act_mode":
        return {"none": "float act.", "dynamic": "dynamic act.", "static": "static act."}.get(
            str(value), f"act. {value}"
        )
    if column == "scale_dtype":
        return f"{value} scales"
    if column == "act_clipping":
        return f"act. clipping {QUANTIZER_NAMES.get(str(value), value)}"
    if column == "sequential":
        return "sequential calib." if value else "one-shot calib."
    if column == "calib_size":
        return "all calib. data" if int(value) == 0 else f"{value} calib. examples"
    if column.endswith("options"):
        return f"{column.replace('_', ' ')}: {_options_label(value)}"
    if column == "task":
        return str(value)
    return f"{column.replace('_', ' ')} {value}"


def activation_label(act_bits: object, bits: Sequence[object] = (), mode: object = None) -> str:
    """A panel's activation setting: ``"W4A16 (weights only)"`` when one weight width is plotted,
    ``"A8 activations (dynamic)"`` otherwise."""
    width = f"W{bits[0]}" if len(bits) == 1 else ""
    if int(act_bits) >= 16:
        return f"{width}A16 (weights only)" if width else "weights only (float activations)"
    mode = f" ({mode})" if mode not in (None, "none") else ""
    return f"{width}A{act_bits}{mode}" if width else f"A{act_bits} activations{mode}"


def format_value(value: float) -> str:
    """A metric value with 4 decimals (accuracy 0.9744, perplexity 3.8588), fewer when large."""
    return f"{value:.4f}" if abs(value) < 100 else f"{value:.1f}"


def _natural(value: object) -> tuple:
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def _bits_label(bits: Sequence[object]) -> str:
    return "W" + "/".join(str(b) for b in sorted(set(bits), key=_natural))


# ----------------------------------------------------------------------------- layout


def dodge(x: Sequence[float], step: float) -> np.ndarray:
    """Positions for points given in increasing ``x`` order: as close as possible to ``x`` (least
    squares) while keeping the order and at least ``step`` apart. Points sharing an ``x`` spread
    symmetrically around it; isolated points do not move. (Isotonic regression of
    ``x_i - i*step``, solved by pool-adjacent-violators.)"""
    x = np.asarray(x, dtype=float)
    if np.any(np.diff(x) < 0):
        raise ValueError("dodge: x must be sorted in increasing order")
    shift = step * np.arange(len(x))
    blocks: list[list[float]] = []  # [sum, count] of pooled targets
    for target in x - shift:
        blocks.append([target, 1])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    pooled = np.concatenate([np.full(int(c), s / c) for s, c in blocks]) if blocks else x
    return pooled + shift


def _clusters(values: Sequence[float], merge: float = TICK_MERGE) -> list[list[float]]:
    """Sorted distinct ``values`` in runs whose neighbours are closer than ``merge`` x span."""
    values = np.sort(np.unique(np.round(np.asarray(values, dtype=float), 6)))
    span = float(values[-1] - values[0]) if len(values) > 1 else 1.0
    clusters: list[list[float]] = []
    for v in values:
        if clusters and v - clusters[-1][-1] < merge * span:
            clusters[-1].append(float(v))
        else:
            clusters.append([float(v)])
    return clusters


def _crowding(xs: pd.Series) -> tuple[float, float, int]:
    """A panel's x span, smallest gap between tick clusters (inf if one) and most points in one
    cluster: the dodge must fit ``crowd`` points in ``gap``."""
    clusters = _clusters(xs)
    span = clusters[-1][-1] - clusters[0][0] if len(clusters) > 1 or len(clusters[0]) > 1 else 0.0
    gaps = [b[0] - a[-1] for a, b in itertools.pairwise(clusters)]
    rounded = xs.round(6)
    crowd = max(int(rounded.isin(c).sum()) for c in clusters)
    return span, min(gaps, default=np.inf), crowd


def axes_width(points: pd.DataFrame, x: str, step_pt: float = DODGE_PT) -> float:
    """Inches of plotting area per panel so that the most crowded cluster of every panel fits
    its dodged points ``step_pt`` apart within 70% of the gap to the next cluster and within
    `MAX_SPREAD` of the span, and neighbouring tick labels do not overlap (within `AXES_WIDTH`)."""
    need = AXES_WIDTH[0]
    for _, part in points.groupby(["row", "col"], sort=False):
        span, gap, crowd = _crowding(part[x])
        if not (np.isfinite(gap) and span > 0):
            continue
        need = max(need, 1.15 * span * crowd * step_pt / 72 / (0.7 * gap))
        need = max(need, 1.15 * crowd * step_pt / 72 / MAX_SPREAD)
        need = max(need, _label_width(*x_ticks(part, x), span))
    return float(min(need, AXES_WIDTH[1]))


def _label_width(ticks: list[float], labels: list[str], span: float, step: int = 1) -> float:
    """Inches of plotting area at which tick labels ``step`` apart do not overlap (7.5 pt font:
    about 0.06 inch per character)."""
    chars = [max(len(line) for line in label.split("\n")) for label in labels]
    need = 0.0
    for i in range(len(ticks) - step):
        room = (chars[i] + chars[i + step]) / 2 * 0.06 + 0.08
        need = max(need, 1.15 * span * room / (ticks[i + step] - ticks[i]))
    return need


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
      except ``group_size``, which runs along a series' line;
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
    if style and (style not in agg or agg[style].nunique() < 2):
        style = None
    if columns and (columns not in agg or agg[columns].nunique() < 2):
        columns = None
    keys = [c for c in dict.fromkeys((*CONFIG_COLUMNS, *named)) if c in agg]
    # fields that vary within a panel and are not shown by colour or marker tell series apart too
    along = "group_size" if "group_size" not in (hue, style) else None
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
    out["rank"] = [tuple(_natural(v) for v in key) for key in out["series"]]
    higher = {}
    for row in out["row"].unique():
        rows = table if not facet else table[table[facet] == row]
        higher[row] = higher_is_better(rows, y)
    out["x_plot"] = out[x].astype(float)
    out["front"] = False
    width = width or axes_width(out, x, step_pt)
    for _, part in out.groupby(["row", "col"], sort=False):
        ordered = part.sort_values([x, "rank"])
        span, gap, crowd = _crowding(ordered[x])
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


def x_ticks(points: pd.DataFrame, x: str, merge: float = TICK_MERGE) -> tuple[list, list]:
    """Tick positions (the true ``x`` of the points) and labels naming the configurations there,
    e.g. ``"4.125\\nW4 per-channel"``; values closer than ``merge`` x-span share one tick, at their
    mean, labelled with their range (``"5 - 5.142"``, an en dash); `pareto_plot` marks each true
    ``x`` with a minor tick."""
    ticks, labels = [], []
    for cluster in _clusters(points[x], merge):
        rows = points[points[x].round(6).isin(cluster)]
        number = f"{cluster[0]:.4g}" + (f"\N{EN DASH}{cluster[-1]:.4g}" if len(cluster) > 1 else "")
        configs = []
        if "group_size" in rows:
            for g, part in rows.groupby("group_size", sort=True):
                width = _bits_label(part["bits"]) + " " if "bits" in part else ""
                configs.append(width + group_label(g))
        elif "bits" in rows:
            configs.append(_bits_label(rows["bits"]))
        ticks.append(float(np.mean(cluster)))
        labels.append("\n".join([number, *configs]))
    return ticks, labels


def default_title(table: pd.DataFrame, x: str, y: str) -> str:
    """``"digits-mlp: accuracy vs stored bits per weight"``."""
    metric = y_label(table, y)
    what = "stored" if x == "bits_per_weight" else "ideal" if x.startswith("ideal") else ""
    against = f"{what} bits per weight".strip() if "bits_per_weight" in x else x.replace("_", " ")
    title = f"{metric} vs {against}"
    if "task" in table and table["task"].nunique() == 1:
        title = f"{table['task'].iloc[0]}: {title}"
    return title


def _subtitle(table: pd.DataFrame, y: str, higher: dict) -> str:
    seeds = table.groupby([c for c in CONFIG_COLUMNS if c in table], dropna=False).size()
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


def _header(text: str) -> tuple[Line2D, str]:
    handle = Line2D([], [], linestyle="none")
    handle.set_gid("header")  # `_legend` sets these in bold
    return handle, text


def _panel_title(points: pd.DataFrame, data: pd.DataFrame, row: object, col: object) -> str:
    facet, columns = points.attrs["facet"], points.attrs["columns"]
    heading = [value_label(facet, row)] if facet else []
    if columns == "act_bits" and "bits" in data:
        modes = data["act_mode"].unique() if "act_mode" in data else []
        heading.append(
            activation_label(col, data["bits"].unique(), modes[0] if len(modes) == 1 else None)
        )
    elif columns:
        heading.append(value_label(columns, col))
    return " · ".join(heading)


def _draw_panel(
    ax: plt.Axes, data: pd.DataFrame, table_rows: pd.DataFrame, looks: dict, higher: bool
) -> None:
    """One panel: a line with error bars per series, the Pareto front, the float model, ticks."""
    x, y, hue, style = looks["x"], looks["y"], looks["hue"], looks["style"]
    for _, part in data.groupby("series", sort=False):
        part = part.sort_values(x)
        first = part.iloc[0]
        ax.errorbar(
            part["x_plot"],
            part[y],
            yerr=part[f"{y}_std"],
            color=looks["colors"][first[hue]],
            marker=looks["markers"].get(first[style], "o") if style else "o",
            linestyle=looks["lines"].get(tuple(first[looks["extra"]]), "-"),
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
    if looks["base"]:
        value = table_rows[looks["base"]].mean()
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
    if _label_width(ticks, labels, span) > looks["width"]:  # stagger crowded labels
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


def _legend(fig: plt.Figure, points: pd.DataFrame, looks: dict, spare: plt.Axes | None) -> None:
    """Sections: colours (hue), markers (style), line styles (other varying fields), marks."""
    hue, style, extra = looks["hue"], looks["style"], looks["extra"]
    handles = [_header(hue.replace("_", " "))]
    handles += [
        (Line2D([], [], color=color, marker="o"), value_label(hue, h))
        for h, color in looks["colors"].items()
    ]
    if style:
        handles.append(_header({"bits": "weight bits"}.get(style, style.replace("_", " "))))
        handles += [
            (Line2D([], [], color="dimgrey", marker=m, linestyle="none"), value_label(style, s))
            for s, m in looks["markers"].items()
        ]
    if extra:
        handles.append(_header(", ".join(c.replace("_", " ") for c in extra)))
        handles += [
            (
                Line2D([], [], color="dimgrey", linestyle=line),
                ", ".join(value_label(c, v) for c, v in zip(extra, values, strict=True)),
            )
            for values, line in looks["lines"].items()
        ]
    marks = []
    if points["front"].any():
        ring = Line2D([], [], color="black", alpha=0.3, lw=2.5, marker="o", markersize=10)
        ring.set_markerfacecolor("none")
        marks.append((ring, "Pareto front"))
    if looks["base"]:
        marks.append((Line2D([], [], color="grey", linestyle="--"), "float model"))
    if marks:
        handles += [_header(""), *marks]
    place = (
        {"loc": "center", "bbox_to_anchor": spare.get_position().bounds}
        if spare is not None
        else {"loc": "center left", "bbox_to_anchor": (1.0, 0.5)}
    )
    legend = fig.legend(
        [h for h, _ in handles],
        [t for _, t in handles],
        **place,
        frameon=False,
        fontsize=8,
        handlelength=2.2,
    )
    for (handle, _), text in zip(handles, legend.get_texts(), strict=True):
        if handle.get_gid() == "header":
            text.set_fontweight("bold")
            text.set_x(-28)  # headers start where the handles do


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
    points = plot_points(table, x=x, y=y, hue=hue, style=style, facet=facet, columns=columns)
    a = points.attrs
    rows = sorted(points["row"].unique(), key=_natural)
    cols = sorted(points["col"].unique(), key=lambda v: (-_natural(v)[1], str(v)))  # A16 first
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
    styles = sorted(points[a["style"]].unique(), key=_natural) if a["style"] else []
    extra = a["extra"]
    extras = sorted({tuple(r) for r in points[extra].itertuples(index=False)}) if extra else []
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
            for i, h in enumerate(sorted(points[hue].unique(), key=_natural))
        },
        "markers": {s: MARKERS[i % len(MARKERS)] for i, s in enumerate(styles)},
        "lines": {e: LINESTYLES[i % len(LINESTYLES)] for i, e in enumerate(extras)},
    }
    for r, line in enumerate(grid):
        for c, (row, col) in enumerate(line):
            ax = axes[r][c]
            data = points[(points["row"] == row) & (points["col"] == col)]
            if data.empty:
                ax.set_visible(False)
                continue
            rows_here = table if not a["facet"] else table[table[a["facet"]] == row]
            _draw_panel(ax, data, rows_here, looks, a["higher"][row])
            ax.set_title(_panel_title(points, data, row, col), fontsize=10)
            if r == len(grid) - 1 or c >= len(grid[-1]):  # no panel below
                ax.set_xlabel(X_LABELS.get(x, x.replace("_", " ")), fontsize=8)
        for c in range(len(line), n_cols):
            axes[r][c].set_visible(False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.62 / fig.get_figheight()), w_pad=2.0)
    spare = axes[-1][len(grid[-1])] if len(grid[-1]) < n_cols else None
    _legend(fig, points, looks, spare)
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
    paths = [out / f"{stem}.png", out / f"{stem}.svg"]
    fig.savefig(paths[0], dpi=200, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return paths
