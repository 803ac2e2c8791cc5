"""Training data sources: the scene world (infinite, seeded) and a user's image folder.

Both give batches as (images float [B, 3, S, S] in [-1, 1], class indices int64 [B]) and
name their classes, so training code does not care which one it reads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from semgen.data.scenes import CATEGORIES, HELDOUT_SEED_OFFSET, render_batch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [B, H, W, 3] -> float [B, 3, H, W] in [-1, 1]."""
    return torch.tensor(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float [B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3]."""
    x = images.detach().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


class SceneSource:
    """Scenes rendered on the fly. Batch `step` always holds the same seeds, so a resumed run
    sees exactly the data it would have seen."""

    def __init__(self, size: int = 64, heldout: bool = False, rendition: str = "photo"):
        self.size = size
        self.offset = HELDOUT_SEED_OFFSET if heldout else 0
        self.rendition = rendition
        self.class_names = CATEGORIES

    def seeds(self, step: int, batch_size: int) -> np.ndarray:
        return self.offset + step * batch_size + np.arange(batch_size)

    def batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, _, cats, _ = render_batch(self.seeds(step, batch_size), self.size, self.rendition)
        return to_tensor(images), torch.from_numpy(cats)


class ImageFolderSource:
    """A user's folder with one subfolder per class. Images are resized (centre-cropped to a
    square first) to `size` and kept in memory."""

    def __init__(self, root: str | Path, size: int = 64, seed: int = 0):
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"data: {root} is not a folder")
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not classes:
            raise ValueError(f"data: {root} has no class subfolders")
        images, labels = [], []
        for idx, name in enumerate(classes):
            for f in sorted((root / name).iterdir()):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    images.append(load_image(f, size))
                    labels.append(idx)
        if not images:
            raise ValueError(f"data: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}")
        self.size = size
        self.class_names = tuple(classes)
        self.images = np.stack(images)
        self.labels = np.array(labels, np.int64)
        self.seed = seed

    def batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng((self.seed, step))
        idx = rng.integers(len(self.images), size=batch_size)
        return to_tensor(self.images[idx]), torch.from_numpy(self.labels[idx])


def load_image(path: str | Path, size: int) -> np.ndarray:
    with Image.open(path) as im:
        return square_resize(np.asarray(im.convert("RGB")), size)


def square_resize(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> centre-cropped square uint8 [size, size, 3] (bicubic)."""
    crop = center_square(image)
    if crop.shape[0] == size:
        return np.ascontiguousarray(crop)
    return np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC))


def center_square(array: np.ndarray) -> np.ndarray:
    """The centred square [s, s, ...] of an [H, W, ...] array, s = min(H, W) (a view)."""
    h, w = array.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return array[top : top + s, left : left + s]


def make_source(data: str | None, size: int):
    """`data` None or 'scenes' -> the scene world; anything else is an image folder path."""
    return SceneSource(size) if data in (None, "scenes") else ImageFolderSource(data, size)
