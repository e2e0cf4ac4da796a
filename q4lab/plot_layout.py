"""How `q4lab.plots` names and places what it draws: the labels a reader sees, the x ticks, the
sideways dodge of points that share an ``x``, the width of a panel, and the legend.

Glossary: a *tick cluster* is a run of distinct ``x`` values closer than `TICK_MERGE` of the
panel's x span; they share one tick label. A panel's *crowd* is the most points in one cluster, its
*gap* the smallest distance between clusters; the dodge must fit ``crowd`` points, ``step`` apart,
into ``0.7 * gap`` and into `MAX_SPREAD` of the span. Sizes on the page are in points (1/72 inch)
or inches, sizes along the axis in ``x`` units.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from q4lab.core.spec import group_label

X_LABELS = {
    "bits_per_weight": "stored bits per weight (codes + scales + zeros; 5-8-bit codes in bytes)",
    "ideal_bits_per_weight": "ideal packed bits per weight (b-bit codes + scales + zeros)",
}
QUANTIZER_NAMES = {
    "minmax": "min-max",
    "percentile": "percentile",
    "mse": "MSE",
    "gptq": "GPTQ",
    "awq": "AWQ",
    "hqq": "HQQ, float zero points",
    "rotation": "rotation",
}
DODGE_PT = 5.0  # spacing of dodged points on the page, in points (1/72 inch)
TICK_MERGE = 0.045  # ticks closer than this fraction of the x span share one label
AXES_WIDTH = (3.4, 8.0)  # inches: a panel's plotting area grows with its crowd, within these
MAX_SPREAD = 0.2  # dodged points of one tick span at most this fraction of the panel's x span


# ----------------------------------------------------------------------------- labels


def y_label(table: pd.DataFrame, y: str) -> str:
    if y in ("score", "delta_score") and "metric" in table and table["metric"].nunique() == 1:
        metric = table["metric"].iloc[0]
        return metric if y == "score" else f"{metric} - float"
    return y.replace("_", " ")


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
    if column == "symmetric_grid":
        return (
            "amax half a step beyond the top code"
            if value == "half_step"
            else "amax on the top code"
        )
    if column == "zero_point":
        names = {"int": "integer zero points", "float": "float zero points"}
        return names.get(str(value), "the quantizer's zero points")
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
    if column == "rotation" and isinstance(value, str):
        return "no rotation" if value == "none" else f"{value.capitalize()} rotation"
    if column == "smooth_alpha" and isinstance(value, int | float) and not pd.isna(value):
        return "no smoothing" if value == 0 else f"SmoothQuant {value:g}"
    if column == "calib_padding":
        return "padding calibrated" if value == "include" else "padding not calibrated"
    if column.endswith("options"):
        return f"{column.replace('_', ' ')}: {_options_label(value)}"
    if column == "budget_groups":  # what a bits_budget allocation chose group sizes from
        groups = json.loads(value) if isinstance(value, str) else list(value)
        return "groups " + "/".join(map(group_label, groups)) if groups else "one group size"
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


def natural_key(value: object) -> tuple:
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def _bits_label(bits: Sequence[object]) -> str:
    return "W" + "/".join(str(b) for b in sorted(set(bits), key=natural_key))


def _widths_label(points: pd.DataFrame) -> str:
    """The weight widths of ``points``; mixed-precision ones (a ``bits_budget``) are "mixed":
    their ``bits`` is only the width most of their weights got."""
    mixed = points["bits_budget"].fillna(0).astype(float) > 0 if "bits_budget" in points else None
    if mixed is None or not mixed.any():
        return _bits_label(points["bits"])
    uniform = points.loc[~mixed, "bits"]
    return (_bits_label(uniform) + "/" if len(uniform) else "") + "mixed"


def default_title(table: pd.DataFrame, x: str, y: str) -> str:
    """``"digits-mlp: accuracy vs stored bits per weight"``."""
    metric = y_label(table, y)
    what = "stored" if x == "bits_per_weight" else "ideal" if x.startswith("ideal") else ""
    against = f"{what} bits per weight".strip() if "bits_per_weight" in x else x.replace("_", " ")
    title = f"{metric} vs {against}"
    if "task" in table and table["task"].nunique() == 1:
        title = f"{table['task'].iloc[0]}: {title}"
    return title


def panel_title(points: pd.DataFrame, data: pd.DataFrame, row: object, col: object) -> str:
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


def crowding(xs: pd.Series) -> tuple[float, float, int]:
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
        span, gap, crowd = crowding(part[x])
        if not (np.isfinite(gap) and span > 0):
            continue
        need = max(need, 1.15 * span * crowd * step_pt / 72 / (0.7 * gap))
        need = max(need, 1.15 * crowd * step_pt / 72 / MAX_SPREAD)
        need = max(need, label_width(*x_ticks(part, x), span))
    return float(min(need, AXES_WIDTH[1]))


def label_width(ticks: list[float], labels: list[str], span: float, step: int = 1) -> float:
    """Inches of plotting area at which tick labels ``step`` apart do not overlap (7.5 pt font:
    about 0.06 inch per character)."""
    chars = [max(len(line) for line in label.split("\n")) for label in labels]
    need = 0.0
    for i in range(len(ticks) - step):
        room = (chars[i] + chars[i + step]) / 2 * 0.06 + 0.08
        need = max(need, 1.15 * span * room / (ticks[i + step] - ticks[i]))
    return need


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
                width = _widths_label(part) + " " if "bits" in part else ""
                configs.append(width + group_label(g))
        elif "bits" in rows:
            configs.append(_widths_label(rows))
        ticks.append(float(np.mean(cluster)))
        labels.append("\n".join([number, *configs]))
    return ticks, labels


# ----------------------------------------------------------------------------- legend


def _header(text: str) -> tuple[Line2D, str]:
    handle = Line2D([], [], linestyle="none")
    handle.set_gid("header")  # `draw_legend` sets these in bold
    return handle, text


def draw_legend(fig: plt.Figure, points: pd.DataFrame, looks: dict, spare: plt.Axes | None) -> None:
    """Sections: colours (hue), markers (style), line styles and marker fills (other varying
    fields), marks."""
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
                Line2D(
                    [],
                    [],
                    color="dimgrey",
                    linestyle=line,
                    marker=looks["extra_markers"][values],
                    fillstyle=looks["fills"][values],
                ),
                ", ".join(value_label(c, v) for c, v in zip(extra, values, strict=True)),
            )
            for values, line in looks["lines"].items()
        ]
    marks = []
    if points["front"].any():
        ring = Line2D([], [], color="black", alpha=0.3, lw=2.5, marker="o", markersize=10)
        ring.set_markerfacecolor("none")
        marks.append((ring, "Pareto front"))
    if looks["base"] or looks["y"].startswith("delta_"):  # its value, or 0 for a change
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
