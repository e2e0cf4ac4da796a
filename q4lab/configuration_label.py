"""A configuration's human-readable name (``"GPTQ W4 g32"``), as the report and the ablations
show it: the fields that vary, and the method fields wherever they are not at their default."""

from __future__ import annotations

import json

import pandas as pd

from q4lab.plot_layout import group_label, quantizer_label, value_label

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
