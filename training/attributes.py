"""Train HiGAN's attribute predictor on rendered scenes and measure it on held-out renders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from semgen.checkpoints import save_checkpoint
from semgen.data.loaders import to_tensor
from semgen.data.scenes import ATTRIBUTES, HELDOUT_SEED_OFFSET, render_batch
from semgen.networks.attributes import AttributePredictor
from semgen.options import opt
from training.classifier import one_cycle_lr
from training.common import Progress, load_state, save_state, setup_torch, write_options

STATS_SEEDS = 5_000_000  # renders that fix the standardisation (not training batches)


@dataclass
class AttributeOptions:
    out: str = opt("artifacts/attributes", "the checkpoint HiGAN loads")
    run_dir: str = opt("runs/attributes", "resumable state, options, log")
    image_size: int = opt(64, "image size in pixels")
    steps: int = opt(1500, "training steps")
    batch_size: int = opt(64, "images per step")
    lr: float = opt(2e-3, "learning rate")
    weight_decay: float = opt(1e-4, "weight decay")
    stats_n: int = opt(2000, "renders for the attributes' mean and std")
    save_every: int = opt(100, "steps between resumable saves")
    threads: int = opt(2, "torch threads (0: torch's default)")
    seed: int = opt(0, "random seed")


def attribute_stats(image_size: int, n: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of every attribute over n renders."""
    attrs = render_batch(STATS_SEEDS + np.arange(n), image_size)[3]
    return attrs.mean(0), attrs.std(0) + 1e-6


def train_attributes(opt: AttributeOptions) -> Path:
    run_dir, out = Path(opt.run_dir), Path(opt.out)
    setup_torch(opt.threads, opt.seed)
    write_options(run_dir, opt)
    mean, std = attribute_stats(opt.image_size, opt.stats_n)
    model = AttributePredictor(opt.image_size, tuple(ATTRIBUTES), tuple(ATTRIBUTES.values()),
                               tuple(float(m) for m in mean), tuple(float(s) for s in std))
    optim = torch.optim.AdamW(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
    start = load_state(run_dir, model=model, optim=optim)
    progress = Progress(run_dir, opt.steps, start, "attributes")
    model.train()
    for step in range(start, opt.steps):
        images, _, _, attrs = render_batch(step * opt.batch_size + np.arange(opt.batch_size), opt.image_size)
        x = to_tensor(images)
        flip = torch.rand(len(x)) < 0.5  # every attribute is left-right symmetric
        x[flip] = x[flip].flip(-1)
        target = (torch.from_numpy(attrs) - model.mean) / model.std
        loss = F.mse_loss(model.standardised(x), target)
        for group in optim.param_groups:
            group["lr"] = one_cycle_lr(step, opt.steps, opt.lr)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        progress.update(step + 1, loss=loss.item())
        if (step + 1) % opt.save_every == 0 or step + 1 == opt.steps:
            save_state(run_dir, step + 1, model=model, optim=optim)
            save_checkpoint(out, model, model.config, step=step + 1, training={"data": "scenes"})
    progress.close()
    return out


@torch.no_grad()
def predictor_r2(model: AttributePredictor, n: int = 1000, batch_size: int = 250) -> dict[str, float]:
    """R² of every attribute on n held-out renders (1 = perfect, 0 = no better than the mean)."""
    preds, truth = [], []
    for start in range(0, n, batch_size):
        images, _, _, attrs = render_batch(HELDOUT_SEED_OFFSET + start + np.arange(min(batch_size, n - start)),
                                           model.image_size)
        preds.append(model(to_tensor(images)).numpy())
        truth.append(attrs)
    p, t = np.concatenate(preds), np.concatenate(truth)
    r2 = 1 - ((p - t) ** 2).sum(0) / ((t - t.mean(0)) ** 2).sum(0)
    return {name: round(float(v), 4) for name, v in zip(model.attribute_names, r2)}
