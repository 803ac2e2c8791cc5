"""Train and evaluate the supervisor segmenter on the scene world's label maps.

Training images are degraded at random (blur, noise, a colour shift) so that the segmenter also
labels the softer, noisier images a generator makes, which is what it is used for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from semgen.checkpoints import load_checkpoint, save_checkpoint
from semgen.data.loaders import to_tensor, to_uint8
from semgen.data.scenes import CLASSES, HELDOUT_SEED_OFFSET, render_batch
from semgen.networks.segmenter import UNetSegmenter
from semgen.options import opt
from semgen.reports import image_grid, label_colors
from training.classifier import one_cycle_lr
from training.common import Progress, load_state, save_state, setup_torch, write_options
from training.iou import IoUMeter


@dataclass
class SegmenterOptions:
    out: str = opt("artifacts/segmenter", "the checkpoint it writes")
    run_dir: str = opt("runs/segmenter", "resumable state, options, log")
    image_size: int = opt(64, "image size in pixels")
    steps: int = opt(1500, "training steps")
    batch_size: int = opt(32, "images per step")
    lr: float = opt(3e-3, "learning rate")
    save_every: int = opt(100, "steps between resumable saves")
    threads: int = opt(2, "torch threads (0: torch's default)")
    seed: int = opt(0, "random seed")


def scene_batch(step: int, batch_size: int, size: int, heldout: bool = False):
    """Images [B, 3, S, S] in [-1, 1] and label maps int64 [B, S, S] for batch `step`."""
    seeds = (HELDOUT_SEED_OFFSET if heldout else 0) + step * batch_size + np.arange(batch_size)
    images, labels, _, _ = render_batch(seeds, size)
    return to_tensor(images), torch.from_numpy(labels).long()


def degrade(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random blur, pixel noise and colour shift, each on about half of the batch."""
    b = images.shape[0]
    pick = lambda: (torch.rand(b, 1, 1, 1, generator=gen) < 0.5).float()  # noqa: E731
    blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    images = images + pick() * (blurred - images)
    images = images + pick() * 0.08 * torch.randn(images.shape, generator=gen)
    images = images + pick() * 0.1 * torch.randn(b, 3, 1, 1, generator=gen)
    return images.clamp(-1, 1)


def train_segmenter(opt: SegmenterOptions) -> Path:
    run_dir, out = Path(opt.run_dir), Path(opt.out)
    setup_torch(opt.threads, opt.seed)
    write_options(run_dir, opt)
    model = UNetSegmenter(num_classes=len(CLASSES), class_names=CLASSES)
    optim = torch.optim.AdamW(model.parameters(), lr=opt.lr, weight_decay=1e-4)
    start = load_state(run_dir, model=model, optim=optim)
    progress = Progress(run_dir, opt.steps, start, "segmenter")
    model.train()
    for step in range(start, opt.steps):
        gen = torch.Generator().manual_seed(opt.seed * 1_000_003 + step)
        images, labels = scene_batch(step, opt.batch_size, opt.image_size)
        flip = torch.rand(len(images), generator=gen) < 0.5
        images[flip], labels[flip] = images[flip].flip(-1), labels[flip].flip(-1)
        logits = model(degrade(images, gen))
        loss = F.cross_entropy(logits, labels)
        for group in optim.param_groups:
            group["lr"] = one_cycle_lr(step, opt.steps, opt.lr)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        progress.update(step + 1, loss=loss.item(), acc=(logits.argmax(1) == labels).float().mean().item())
        if (step + 1) % opt.save_every == 0 or step + 1 == opt.steps:
            save_state(run_dir, step + 1, model=model, optim=optim)
            save_checkpoint(out, model, model.config, step=step + 1, training={"image_size": opt.image_size})
    progress.close()
    return out


@torch.no_grad()
def eval_segmenter(checkpoint: str = "artifacts/segmenter", n: int = 1000, batch_size: int = 100,
                   report_dir: str = "reports/segmenter") -> dict:
    """mIoU (paper App. A) of the segmenter on held-out renders."""
    model = load_checkpoint(checkpoint)
    size = json.loads((Path(checkpoint) / "config.json").read_text())["training"].get("image_size", 64)
    meter = IoUMeter(model.num_classes)
    for step in range((n + batch_size - 1) // batch_size):
        images, labels = scene_batch(step, batch_size, size, heldout=True)
        images, labels = images[: n - step * batch_size], labels[: n - step * batch_size]
        pred = model(images).argmax(1)
        meter.add(pred, labels)
    names = model.class_names or [str(i) for i in range(model.num_classes)]
    result = {"miou": meter.miou(), "n": n, "per_class": dict(zip(names, meter.per_class()))}
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "segmenter.json").write_text(json.dumps(result, indent=2))
    k = 8
    image_grid([list(to_uint8(images[:k])), list(label_colors(labels[:k])), list(label_colors(pred[:k]))]).save(
        out / "segmenter.png")
    return result
