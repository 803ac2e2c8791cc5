"""Few-shot semantic heads (paper §3.3, App. D): fit an LSE (or NSE) head on the generator's
features from 1–16 latents and their masks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from semgen.networks.heads import HEAD_KINDS, SemanticHead
from semgen.pipelines.semantics.models import SemanticModels, StepCallback


@dataclass
class FewShotSchedule:
    """Paper App. D: batch = N, 2000 iterations for 1 and 4 shots, 1000 for 8, 500 for 16.

    The paper re-draws StyleGAN's layer noise every iteration; by default we keep the constant
    noise the served images are made with (the masks were drawn on those very images), which
    also lets the features be computed once: ~10× faster on a CPU. The paper's lr is 1e-3; on our
    generator 1e-2 fits better (a probe on 8 shots × 5 draws: mIoU +0.03; see the README)."""

    lr: float = 1e-2
    resample_noise: bool = False  # True: the paper's way; the noise comes from torch's global RNG (not seeded)

    @staticmethod
    def iterations(shots: int) -> int:
        return 2000 if shots <= 4 else 1000 if shots <= 8 else 500


def fit_head(models: SemanticModels, latents, masks, class_names, seed: int = 0,
             schedule: FewShotSchedule | None = None, iterations: int | None = None,
             on_step: StepCallback | None = None, kind: str = "lse") -> SemanticHead:
    """A few-shot head (LSE by default) from 1–16 latents and their masks (uint8 [N, S, S],
    indices into class_names)."""
    # 1. check inputs
    ws = models.check_latents(latents)
    class_names = tuple(class_names)
    if len(class_names) < 2:
        raise ValueError("class_names: give at least two classes")
    masks = np.asarray(masks)
    if masks.shape != (len(ws), models.image_size, models.image_size):
        raise ValueError(f"masks: need one {models.image_size}×{models.image_size} mask per latent "
                         f"({len(ws)}), got shape {list(masks.shape)}")
    if not np.issubdtype(masks.dtype, np.integer):
        raise ValueError(f"masks: must hold integer class indices, got {masks.dtype}")
    if masks.min() < 0 or masks.max() >= len(class_names):
        bad = int(masks.min()) if masks.min() < 0 else int(masks.max())
        raise ValueError(f"masks: class index {bad} is not in 0..{len(class_names) - 1} (class_names)")
    schedule = schedule or FewShotSchedule()
    steps = schedule.iterations(len(ws)) if iterations is None else iterations
    target = torch.as_tensor(masks.astype(np.int64), device=models.device)
    # 2. head and optimiser; the learning rate drops ×10 after 40% (App. D: epoch 20 of 50)
    if kind not in HEAD_KINDS:
        raise ValueError(f"kind: must be one of {sorted(HEAD_KINDS)}, got {kind!r}")
    head = HEAD_KINDS[kind](models.generator.layer_channels(), len(class_names), class_names)
    head = seeded_init(head, seed).to(models.device)
    optim = torch.optim.Adam(head.parameters(), lr=schedule.lr)
    # 3. optimise (the features once, or every step when the noise is re-drawn)
    features = None
    for it in range(steps):
        if it == int(0.4 * steps):
            for group in optim.param_groups:
                group["lr"] = schedule.lr / 10
        if features is None or schedule.resample_noise:
            with torch.no_grad():
                mode = "random" if schedule.resample_noise else "const"
                images, features = models.generator.synthesis(ws, noise_mode=mode, return_features=True)
        loss = F.cross_entropy(head(features, models.image_size), target)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        if on_step is not None:
            on_step(it + 1, loss.item(), images)
    # 4. a frozen head
    return head.eval().requires_grad_(False)


@torch.no_grad()
def seeded_init(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Re-draw every parameter from its own generator (uniform ±1/√fan_in, PyTorch's default
    scale), so concurrent fits do not share the global random state."""
    gen = torch.Generator().manual_seed(int(seed))
    for layer in module.modules():
        weight = getattr(layer, "weight", None)
        if isinstance(weight, torch.nn.Parameter):
            bound = 1 / weight[0].numel() ** 0.5  # the layer's fan-in
            for p in (weight, getattr(layer, "bias", None)):
                if p is not None:
                    p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * bound)
    return module
