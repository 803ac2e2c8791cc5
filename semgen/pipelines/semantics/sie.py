"""Semantic image editing (SIE, App. G, Algorithm 2): from an image's latent, Adam on the latent
towards an edited mask; and the colour-space baseline the paper compares it with."""

from __future__ import annotations

import numpy as np
import torch

from semgen.pipelines.semantics.models import Samples, SemanticModels, StepCallback
from semgen.pipelines.semantics.optimise import optimise, result, semantic_loss


def edit(models: SemanticModels, latent, target_mask, predictor: str, iterations: int = 50, lr: float = 0.01,
         space: str = "w+", on_step: StepCallback | None = None) -> Samples:
    """SIE (App. G, Algorithm 2): from an image's latent, Adam on the latent towards the edited
    mask. Several latents [B, ...] with masks [B, S, S] are edited together."""
    # 1. check inputs
    ws0 = models.check_latents(latent, "latent")
    masks = np.asarray(target_mask)
    masks = masks[None] if masks.ndim == 2 else masks
    if len(masks) != len(ws0):
        raise ValueError(f"target_mask: one mask per latent, got {len(masks)} for {len(ws0)}")
    target = torch.stack([models.check_mask(m, predictor, "target_mask") for m in masks])
    # 2. optimise from the given latents, 3. result
    ws = optimise(models, ws0, semantic_loss(models, predictor, target), space, iterations, lr, on_step)
    return result(models, ws, predictor, target)


def edit_colors(models: SemanticModels, latent, colors: np.ndarray, region: np.ndarray, iterations: int = 50,
                lr: float = 0.01, space: str = "w+", on_step: StepCallback | None = None) -> Samples:
    """The colour-space editing baseline (App. G): pixel MSE to colour strokes (uint8 [B, S, S, 3])
    inside `region` (bool [B, S, S]) + MSE to the original image outside it."""
    # 1. check inputs
    ws0 = models.check_latents(latent, "latent")
    b, size = len(ws0), models.image_size
    colors, region = np.asarray(colors, np.float32), np.asarray(region, np.float32)
    if colors.shape != (b, size, size, 3):
        raise ValueError(f"colors: must be [{b}, {size}, {size}, 3] RGB strokes, got {list(colors.shape)}")
    if region.shape != (b, size, size):
        raise ValueError(f"region: must be [{b}, {size}, {size}], got {list(region.shape)}")
    # 2. the original images and the strokes
    with torch.no_grad():
        original, _ = models.synthesize(ws0)
    strokes = torch.as_tensor(colors, device=models.device).permute(0, 3, 1, 2) / 127.5 - 1
    m = torch.as_tensor(region, device=models.device)[:, None]

    def loss_fn(images, _features):
        edit = (m * (images - strokes)).pow(2).sum((1, 2, 3)) / (3 * m.sum((1, 2, 3))).clamp(min=1)
        keep = ((1 - m) * (images - original)).pow(2).sum((1, 2, 3)) / (3 * (1 - m).sum((1, 2, 3))).clamp(min=1)
        return edit + keep

    # 3. optimise, 4. result (no predictor: no masks)
    ws = optimise(models, ws0, loss_fn, space, iterations, lr, on_step)
    return result(models, ws, None, None)
