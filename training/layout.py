"""Layout diversity: how differently the segmenter lays out two images (share of pixels whose
labels differ). Between samples of one reference it says whether a level leaves room for new
layouts; between real scenes of one category it gives the reference point ("as varied as real")."""

from __future__ import annotations

import numpy as np
import torch

from semgen.data.loaders import to_tensor


@torch.no_grad()
def segment_labels(segmenter, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """uint8 [N, S, S, 3] -> the segmenter's labels int64 [N, S, S]."""
    x = to_tensor(images)
    return torch.cat([segmenter(c).argmax(1) for c in x.split(batch_size)]).numpy()


def sample_disagreement(labels: np.ndarray) -> float:
    """labels [n, k, S, S] (k samples of each of n references) -> mean over sample pairs of the
    share of pixels labelled differently."""
    k = labels.shape[1]
    pairs = [(a, b) for a in range(k) for b in range(a + 1, k)]
    return float(np.mean([(labels[:, a] != labels[:, b]).mean() for a, b in pairs]))


def same_class_disagreement(labels: np.ndarray, cats: np.ndarray) -> float:
    """Real scenes: each scene against the next scene of its own category."""
    diffs = []
    for c in np.unique(cats):
        idx = np.flatnonzero(cats == c)
        diffs.extend((labels[idx[:-1]] != labels[idx[1:]]).mean((1, 2)))
    return float(np.mean(diffs))
