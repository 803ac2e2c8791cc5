"""Pictures for reports: image grids, heatmaps (confusion matrices) and line plots, drawn with PIL only."""

from __future__ import annotations

import numpy as np
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


def confusion_image(confusion: np.ndarray, names, cell: int = 36) -> Image.Image:
    """Counts [n, n] -> rows normalised to sum 1, as a heatmap."""
    norm = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    return heatmap(norm, names, [str(i) for i in range(len(names))], cell)


def heatmap(values: np.ndarray, row_labels, col_labels, cell: int = 36) -> Image.Image:
    """values [rows, cols] in [0, 1] -> a table of blue cells (darker = larger) with the values printed."""
    rows, cols = values.shape
    left, top = 110, 20
    img = Image.new("RGB", (left + cols * cell + 10, top + rows * cell + 10), "white")
    draw = ImageDraw.Draw(img)
    for j, name in enumerate(col_labels):
        draw.text((left + j * cell + 4, 4), str(name)[:5], fill="black")
    for i, name in enumerate(row_labels):
        draw.text((4, top + i * cell + cell // 2 - 5), str(name)[:16], fill="black")
        for j in range(cols):
            v = float(np.clip(values[i, j], 0, 1))
            shade = int(255 * (1 - v))
            draw.rectangle([left + j * cell, top + i * cell, left + (j + 1) * cell - 1, top + (i + 1) * cell - 1],
                           fill=(shade, shade, 255))
            draw.text((left + j * cell + 6, top + i * cell + cell // 2 - 5), f"{v:.2f}"[1:] if v < 1 else "1", fill="black")
    return img


def label_colors(labels) -> np.ndarray:
    """int [B, H, W] class maps (tensor or array) -> uint8 [B, H, W, 3] with one fixed colour per class."""
    palette = np.array([[90, 160, 235], [235, 235, 240], [255, 210, 40], [120, 100, 90], [250, 250, 255],
                        [30, 80, 200], [225, 200, 140], [70, 170, 60], [20, 95, 35], [170, 60, 60],
                        [90, 90, 90]] + [[255, 0, 255]] * 64, np.uint8)
    return palette[np.asarray(labels.cpu() if hasattr(labels, 'cpu') else labels)]


def line_plot(xs, ys, x_label: str, y_label: str, size=(360, 240)) -> Image.Image:
    """One curve with its points labelled (e.g. quality against iterations), drawn with PIL."""
    w, h = size
    left, bottom, pad = 50, 30, 15
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)

    def at(x, y):
        px = left + (x - x0) / ((x1 - x0) or 1) * (w - left - 4 * pad)  # room for the last label
        py = h - bottom - (y - y0) / ((y1 - y0) or 1) * (h - bottom - 2 * pad)
        return px, py

    draw.line([(left, pad), (left, h - bottom), (w - pad, h - bottom)], fill="black")
    draw.line([at(x, y) for x, y in zip(xs, ys)], fill=(30, 80, 200), width=2)
    for x, y in zip(xs, ys):
        px, py = at(x, y)
        draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=(30, 80, 200))
        draw.text((px + 4, py - 12), f"{y:g}", fill="black")
        draw.text((px - 8, h - bottom + 4), f"{x:g}", fill="black")
    draw.text((w // 2 - 30, h - 14), x_label, fill="black")
    draw.text((4, 2), y_label, fill="black")
    return img
