"""Semantic-conditional sampling (SCS, App. H, Algorithm 3): images whose masks follow a target.

Per sample, the best of n_init random latents (the candidate stage, forward-only), then Adam on
the latent with cross-entropy to the target mask (the refinement stage, `optimise`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from semgen.pipelines.semantics.models import PASS_BYTES, Samples, SemanticModels, StepCallback
from semgen.pipelines.semantics.optimise import optimise, result, semantic_loss

# Called with (latents scored so far, pool size) before the candidate stage's first batch of generator
# passes and after every batch. It may raise to stop the job (cancel, deadline): the candidate stage
# has no optimisation steps, so this is its only chance to stop. It changes no draw or result.
CandidateCallback = Callable[[int, int], None]


@dataclass
class CandidatePool:
    """Random latents and their predicted masks, scored against targets (SCS step 1). The pool is
    split into equal groups; sample j takes the best latent of group j."""

    latents: torch.Tensor  # [M, num_ws, w_dim]
    masks: torch.Tensor  # [M, S, S]

    def best(self, target: torch.Tensor, num_samples: int):
        agreement = (self.masks == target).float().mean((1, 2))  # Algorithm 3: pixels that match
        group = len(agreement) // num_samples
        if group < 1:
            raise ValueError(f"n_init: the candidate pool has {len(agreement)} latents for {num_samples} samples")
        idx = agreement[: group * num_samples].view(num_samples, group).argmax(1) + torch.arange(num_samples, device=agreement.device) * group
        return self.latents[idx], agreement[idx]


def sample_conditional(models: SemanticModels, target_mask, predictor: str, num_samples: int, seed: int,
                       n_init: int = 100, iterations: int = 50, lr: float = 0.01, space: str = "w+",
                       psi: float = 1.0, on_step: StepCallback | None = None,
                       on_candidates: CandidateCallback | None = None) -> Samples:
    """SCS (App. H, Algorithm 3): per sample, the best of n_init random latents, then Adam on
    the latent with cross-entropy to the target mask. The paper's lr is Adam's default 1e-3;
    our default is 0.01 (SIE's), as 50 steps at 1e-3 barely move a w+ code of this generator.
    `on_candidates` is called during the candidate stage (num_samples × n_init generator passes),
    `on_step` after every step of the refinement."""
    # 1. check inputs
    target = models.check_mask(target_mask, predictor, "target_mask")
    if num_samples < 1 or n_init < 1 or iterations < 0:
        raise ValueError("num_samples: num_samples and n_init must be >= 1, iterations >= 0")
    # 2. candidates (sample j draws from its own group of n_init), 3. optimise, 4. result
    pool = candidate_pool(models, predictor, num_samples * n_init, seed, psi, on_candidates=on_candidates)
    return conditional_batch(models, target[None], predictor, num_samples, pool, iterations, lr, space, on_step)


def conditional_batch(models: SemanticModels, targets: torch.Tensor, predictor: str, per_target: int,
                      pool: CandidatePool, iterations: int = 50, lr: float = 0.01, space: str = "w+",
                      on_step: StepCallback | None = None) -> Samples:
    """SCS for several checked targets [T, S, S] at once, `per_target` samples each (target-major)."""
    ws0 = torch.cat([pool.best(t, per_target)[0] for t in targets])
    goal = targets.repeat_interleave(per_target, 0)
    ws = optimise(models, ws0, semantic_loss(models, predictor, goal), space, iterations, lr, on_step)
    return result(models, ws, predictor, goal)


def candidate_pool(models: SemanticModels, predictor: str, n: int, seed: int, psi: float = 1.0,
                   batch_size: int = 64, on_candidates: CandidateCallback | None = None) -> CandidatePool:
    """n random latents (seeded) and their masks by `predictor`, `batch_size` generator passes at a
    time (fewer where PASS_BYTES of working memory hold fewer); `on_candidates(done, n)` before the first batch
    and after every batch."""
    batch_size = max(1, min(batch_size, PASS_BYTES // models.sample_bytes(predictor)))
    seeds = [(int(seed) * 1_000_003 + i) % 2**63 for i in range(n)]
    ws = models.latents_from_seeds(seeds, psi)
    masks, done = [], 0
    if on_candidates is not None:
        on_candidates(done, n)
    with torch.no_grad():
        for chunk in ws.split(batch_size):
            images, feats = models.synthesize(chunk)
            masks.append(models.predict(predictor, images, feats).argmax(1))
            done += len(chunk)
            if on_candidates is not None:
                on_candidates(done, n)
    return CandidatePool(ws, torch.cat(masks))
