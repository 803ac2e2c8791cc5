"""Steering a latent with Adam, shared by SCS and SIE (App. G/H): the loop, the semantic loss
(cross-entropy between a predictor's logits and a target mask) and the final Samples."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from semgen.data.loaders import to_uint8
from semgen.pipelines.semantics.models import LATENT_SPACES, Samples, SemanticModels, StepCallback


def optimise(models: SemanticModels, ws0: torch.Tensor, loss_fn, space: str, iterations: int, lr: float,
             on_step: StepCallback | None) -> torch.Tensor:
    """Adam on the latent (one w per sample, or w+) from ws0; returns the final w+.

    loss_fn(images, features) gives one loss per sample [B]; they are summed, so each
    latent moves exactly as it would alone (the batch only shares the forward pass).
    Regularisers (App. G/H, moved from z to w): 1e-3 ‖w − w0‖² and 1e-3 ‖w − w̄‖² (w̄: the
    generator's average w, the centre of its latent distribution), both averaged over the
    num_ws layers so that w and w+ are held alike."""
    if space not in LATENT_SPACES:
        raise ValueError(f"space: must be one of {LATENT_SPACES}, got {space!r}")
    if space == "w" and not torch.equal(ws0, ws0[:, :1].expand_as(ws0)):
        raise ValueError("space: 'w' needs a latent that is the same at every layer; use 'w+'")
    param = (ws0[:, 0].clone() if space == "w" else ws0.clone()).requires_grad_(True)
    to_ws = (lambda p: models.generator.broadcast(p)) if space == "w" else (lambda p: p)
    optim = torch.optim.Adam([param], lr=lr)
    w_avg = models.generator.w_avg
    for it in range(iterations):
        ws = to_ws(param)
        images, features = models.synthesize(ws)
        # App. G/H: the task loss + 1e-3 ‖w − w0‖² (stay near the start) + 1e-3 ‖w − w̄‖² (stay likely)
        reg = 1e-3 * ((ws - ws0).pow(2).sum((1, 2)) + (ws - w_avg).pow(2).sum((1, 2))) / ws.shape[1]
        loss = loss_fn(images, features) + reg  # [B]
        optim.zero_grad(set_to_none=True)
        loss.sum().backward()
        optim.step()
        if on_step is not None:
            on_step(it + 1, loss.mean().item(), images.detach())
    return to_ws(param.detach()).contiguous()


def semantic_loss(models: SemanticModels, predictor: str, target: torch.Tensor):
    """loss_fn for `optimise`: per-sample cross-entropy of `predictor`'s logits to target [B, S, S]."""
    return lambda images, features: F.cross_entropy(
        models.predict(predictor, images, features), target, reduction="none").mean((1, 2))


@torch.no_grad()
def result(models: SemanticModels, ws: torch.Tensor, predictor: str | None, target: torch.Tensor | None) -> Samples:
    """The images of the final latents, with `predictor`'s masks and their agreement with `target`."""
    images, feats = models.synthesize(ws)
    masks = models.predict(predictor, images, feats).argmax(1) if predictor else None
    scores = (masks == target).float().mean((1, 2)).cpu().numpy() if target is not None else None  # [B]
    return Samples(images=to_uint8(images), latents=ws.cpu().numpy().astype(np.float32),
                   masks=None if masks is None else masks.to(torch.uint8).cpu().numpy(), scores=scores)
