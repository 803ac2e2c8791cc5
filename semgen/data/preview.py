"""A picture of the scene world: each row one scene — photo, label map, and the other renditions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from semgen.data.scenes import CATEGORIES, CLASSES, RENDITIONS, render_scene
from semgen.reports import image_grid

# one colour per class, in CLASSES order
PALETTE = np.array(
    [
        (110, 170, 240),  # sky
        (235, 235, 235),  # cloud
        (255, 220, 0),  # sun
        (120, 100, 90),  # mountain
        (200, 240, 255),  # snow
        (20, 60, 200),  # water
        (230, 200, 120),  # sand
        (60, 180, 60),  # grass
        (0, 90, 30),  # tree
        (200, 60, 60),  # building
        (70, 70, 70),  # road
    ],
    np.uint8,
)
assert len(PALETTE) == len(CLASSES)


def colorize(labels: np.ndarray) -> np.ndarray:
    """uint8 label map [H, W] -> RGB [H, W, 3]."""
    return PALETTE[labels]


def write_preview(out: str | Path, n: int = 8, size: int = 64, seed: int = 0) -> Path:
    rows, names = [], []
    for i in range(n):
        category = i % len(CATEGORIES)
        scenes = [render_scene(seed + i, size, category=category, rendition=r) for r in RENDITIONS]
        rows.append([scenes[0].image, colorize(scenes[0].labels)] + [s.image for s in scenes[1:]])
        names.append(CATEGORIES[category])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image_grid(rows, scale=2, labels=names).save(out)
    return out
