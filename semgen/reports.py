"""Pictures for reports: image grids of generated pictures (PIL), and charts (line charts, heatmaps
such as confusion matrices) drawn with matplotlib."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # not pyplot: no global state, and savefig to .png uses Agg by itself
from PIL import Image, ImageDraw


def image_grid(rows: list[list[np.ndarray]], scale: int = 2, pad: int = 2, labels: list[str] | None = None) -> Image.Image:
    """rows of uint8 [H, W, 3] tiles (all the same size) -> one picture, optional row labels on the left."""
    h, w = rows[0][0].shape[:2]
    n_cols = max(len(r) for r in rows)
    label_w = 90 if labels else 0
    canvas = Image.new("RGB", (label_w + n_cols * (w * scale + pad) + pad, len(rows) * (h * scale + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(rows):
        y = pad + r * (h * scale + pad)
        if labels:
            draw.text((4, y + h * scale // 2 - 5), labels[r], fill="black")
        for c, tile in enumerate(row):
            x = label_w + pad + c * (w * scale + pad)
            canvas.paste(Image.fromarray(tile).resize((w * scale, h * scale), Image.NEAREST), (x, y))
    return canvas


def confusion_chart(path: str | Path, confusion: np.ndarray, names) -> Path:
    """Counts [n, n] (true class × predicted class) -> rows normalised to sum 1, as a heatmap PNG."""
    norm = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    return heatmap_chart(path, norm, [f"{i} {n}" for i, n in enumerate(names)], [str(i) for i in range(len(names))],
                         x_label="predicted", y_label="true")


def heatmap_chart(path: str | Path, values: np.ndarray, row_labels, col_labels, title: str = "",
                  x_label: str = "", y_label: str = "") -> Path:
    """values [rows, cols] in [0, 1] -> a PNG table of blue cells (darker = larger) with the values printed."""
    rows, cols = values.shape
    values = np.clip(values, 0, 1)
    fig = Figure(figsize=(1.5 + 0.45 * cols, 0.8 + 0.4 * rows), dpi=100)
    ax = fig.add_subplot()
    ax.imshow(values, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for i in range(rows):
        for j in range(cols):
            v = float(values[i, j])
            ax.text(j, i, f"{v:.2f}".removeprefix("0"), ha="center", va="center", fontsize=7,
                    color="white" if v > 0.6 else "black")  # stays readable on dark cells
    ax.set_xticks(range(cols), [str(c) for c in col_labels], fontsize=8)
    ax.set_yticks(range(rows), [str(r) for r in row_labels], fontsize=8)
    ax.xaxis.tick_top()
    ax.xaxis.set_label_position("top")
    ax.set(title=title, xlabel=x_label, ylabel=y_label)
    return _save(fig, path)


def label_colors(labels) -> np.ndarray:
    """int [B, H, W] class maps (tensor or array) -> uint8 [B, H, W, 3] with one fixed colour per class."""
    palette = np.array([[90, 160, 235], [235, 235, 240], [255, 210, 40], [120, 100, 90], [250, 250, 255],
                        [30, 80, 200], [225, 200, 140], [70, 170, 60], [20, 95, 35], [170, 60, 60],
                        [90, 90, 90]] + [[255, 0, 255]] * 64, np.uint8)
    return palette[np.asarray(labels.cpu() if hasattr(labels, 'cpu') else labels)]


def line_chart(path: str | Path, xs: Sequence[float], series: Mapping[str, Sequence[float | None]], title: str = "",
               x_label: str = "", y_label: str = "", refs: Mapping[str, float] | None = None,
               annotate: bool = False) -> Path:
    """A PNG line chart: one line with markers per named series over the shared x values (None leaves a
    gap); refs are dashed grey horizontal reference lines (label -> y); annotate prints each point's y."""
    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    for name, ys in series.items():
        ys = np.array([np.nan if y is None else y for y in ys], dtype=float)
        ax.plot(xs, ys, marker="o", label=name)
        if annotate:
            for x, y in zip(xs, ys):
                if np.isfinite(y):
                    ax.annotate(f"{y:g}", (x, y), textcoords="offset points", xytext=(4, 6), fontsize=8)
    for label, y in (refs or {}).items():
        ax.axhline(y, color="grey", linestyle="--", linewidth=1)
        ax.annotate(label, (1, y), xycoords=("axes fraction", "data"), xytext=(-4, 3), textcoords="offset points",
                    ha="right", fontsize=8, color="grey")
    ax.set(title=title, xlabel=x_label, ylabel=y_label)
    ax.grid(alpha=0.3)
    if len(series) > 1:  # a single series is named by the title and the y label
        ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    fig.savefig(path, bbox_inches="tight")  # tight: long tick labels are not clipped
    return path
