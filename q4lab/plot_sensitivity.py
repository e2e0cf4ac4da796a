"""The per-layer sensitivity heat map: the loss to the float model when only one layer is
quantized (`q4lab.sensitivity.layer_sensitivity`), for each layer (rows, in the model's order)
and each candidate width (columns)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from q4lab.plot_layout import quantizer_label
from q4lab.plots import save_figure


def sensitivity_table(rows: Sequence[dict] | pd.DataFrame, value: str = "loss") -> pd.DataFrame:
    """Layers x candidates of ``value``, layers in the order they were measured."""
    table = pd.DataFrame(rows)
    return table.pivot_table(index="layer", columns="candidate", values=value, sort=False)


def sensitivity_heatmap(rows: Sequence[dict] | pd.DataFrame, title: str = "") -> plt.Figure:
    """Loss per (layer, candidate), coloured on a log scale, each cell labelled with its value."""
    frame = pd.DataFrame(rows)
    table = sensitivity_table(frame)
    values = table.to_numpy()
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * table.shape[1], 0.9 + 0.24 * table.shape[0]))
    top = float(np.nanmax(values)) if np.nanmax(values) > 0 else 1.0
    floor = max(float(np.nanmin(np.where(values > 0, values, np.inf))), top * 1e-6)
    norm = plt.matplotlib.colors.LogNorm(vmin=min(floor, top), vmax=top, clip=True)
    image = ax.imshow(np.maximum(values, floor), aspect="auto", cmap="magma_r", norm=norm)
    wide = table.shape[1] > 4  # width x group labels would overlap side by side
    ax.set_xticks(range(table.shape[1]), table.columns, rotation=30 if wide else 0)
    if wide:
        plt.setp(ax.get_xticklabels(), ha="right", rotation_mode="anchor")
    ax.set_yticks(range(table.shape[0]), table.index, fontsize=7)
    for (i, j), v in np.ndenumerate(values):
        dark = norm(max(v, floor)) > 0.6
        ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=6, color="w" if dark else "k")
    kind = frame["loss_kind"].iloc[0] if "loss_kind" in frame else "loss"
    fig.colorbar(image, ax=ax, label=kind.replace(", ", "\n"))
    ax.set_xlabel("only this layer quantized, at")
    by = f", {quantizer_label(frame['quantizer'].iloc[0])}" if "quantizer" in frame else ""
    by += f", {frame['weights'].iloc[0]}" if "weights" in frame else ""
    ax.set_title(title or f"{frame['task'].iloc[0]}: per-layer sensitivity{by}", fontsize=10)
    return fig


def save_heatmap(
    rows: Sequence[dict] | pd.DataFrame, directory: str | Path, stem: str
) -> list[Path]:
    """Write the heat map as PNG and SVG under ``directory``; returns the paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    return save_figure(sensitivity_heatmap(rows), out, stem)
