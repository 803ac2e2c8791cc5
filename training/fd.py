"""Fréchet distance between classifier features: the realism proxy standing in for FID.

FID uses Inception pool features of 299 px ImageNet images; we have neither, so the same
formula runs on our scene classifier's fc7 features ("fd_fc7"). Values are only comparable
between runs that use the same classifier and the same number of samples.
"""

from __future__ import annotations

import numpy as np
import torch

from semgen.data.loaders import to_tensor


@torch.no_grad()
def classifier_outputs(classifier, images: np.ndarray, batch_size: int = 250) -> dict[str, np.ndarray]:
    """uint8 [N, S, S, 3] -> {level: float64 [N, ...]} for every level of the classifier."""
    parts: dict[str, list] = {}
    for start in range(0, len(images), batch_size):
        feats = classifier.features(to_tensor(images[start : start + batch_size]))
        for level, value in feats.items():
            parts.setdefault(level, []).append(value.double().numpy())
    return {level: np.concatenate(v) for level, v in parts.items()}


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖μa − μb‖² + tr(Σa + Σb − 2 (Σa Σb)^½) between two sets of vectors [N, D]."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr((Σa Σb)^½) = Σ √λ of the symmetric Σa^½ Σb Σa^½ (same eigenvalues), which eigh handles stably
    vals, vecs = np.linalg.eigh(cov_a)
    root_a = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)

