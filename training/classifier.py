"""Train the scene classifier (the fixed feature extractor of the Semantic Pyramid)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from semgen.checkpoints import save_checkpoint
from semgen.data.loaders import make_source
from semgen.networks.classifier import Classifier
from semgen.options import opt
from training.common import Progress, load_state, save_state, setup_torch, write_options


@dataclass
class ClassifierOptions:
    out: str = opt("artifacts/classifier", "the checkpoint serving loads")
    run_dir: str = opt("runs/classifier", "resumable state, options, log")
    data: str = opt("scenes", "'scenes' or an image folder (one subfolder per class)")
    image_size: int = opt(64, "image size in pixels")
    steps: int = opt(500, "training steps")
    batch_size: int = opt(64, "images per step")
    lr: float = opt(2e-3, "learning rate")
    weight_decay: float = opt(5e-4, "weight decay")
    save_every: int = opt(100, "steps between resumable saves")
    threads: int = opt(2, "torch threads (0: torch's default)")
    seed: int = opt(0, "random seed")


def one_cycle_lr(step: int, total: int, peak: float, warmup: float = 0.15) -> float:
    """Linear warm-up to `peak`, then cosine decay to zero. A function of the step alone, so a
    resumed run (even with a longer --steps) needs no scheduler state."""
    ramp = max(int(total * warmup), 1)
    if step < ramp:
        return peak * (step + 1) / ramp
    return peak * 0.5 * (1 + math.cos(math.pi * (step - ramp) / max(total - ramp, 1)))


def train_classifier(opt: ClassifierOptions) -> Path:
    run_dir, out = Path(opt.run_dir), Path(opt.out)
    setup_torch(opt.threads, opt.seed)
    write_options(run_dir, opt)
    source = make_source(opt.data, opt.image_size)
    model = Classifier(image_size=opt.image_size, num_classes=len(source.class_names), class_names=source.class_names)
    model = model.to(memory_format=torch.channels_last)
    optim = torch.optim.AdamW(model.parameters(), lr=opt.lr, weight_decay=opt.weight_decay)
    start = load_state(run_dir, model=model, optim=optim)
    progress = Progress(run_dir, opt.steps, start, "classifier")
    model.train()
    for step in range(start, opt.steps):
        images, labels = source.batch(step, opt.batch_size)
        flip = torch.rand(len(images)) < 0.5  # left-right flips keep the scene category
        images[flip] = images[flip].flip(-1)
        logits = model(images.contiguous(memory_format=torch.channels_last))
        loss = F.cross_entropy(logits, labels)
        for group in optim.param_groups:
            group["lr"] = one_cycle_lr(step, opt.steps, opt.lr)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        acc = (logits.argmax(1) == labels).float().mean().item()
        progress.update(step + 1, loss=loss.item(), acc=acc)
        if (step + 1) % opt.save_every == 0 or step + 1 == opt.steps:
            save_state(run_dir, step + 1, model=model, optim=optim)
            save_checkpoint(out, model, model.config, step=step + 1, training={"data": opt.data})
    progress.close()
    return out
