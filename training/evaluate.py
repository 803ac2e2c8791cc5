"""Evaluation commands: numbers as JSON + pictures under reports/."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from semgen.checkpoints import load_checkpoint
from semgen.data.loaders import SceneSource
from semgen.data.scenes import CATEGORIES
from semgen.reports import confusion_image


@torch.no_grad()
def eval_classifier(checkpoint: str = "artifacts/classifier", n: int = 2000, batch_size: int = 200,
                    report_dir: str = "reports/classifier") -> dict:
    """Top-1 accuracy on held-out scene seeds (never used in training)."""
    model = load_checkpoint(checkpoint)
    source = SceneSource(model.image_size, heldout=True)
    confusion = np.zeros((len(CATEGORIES), len(CATEGORIES)), np.int64)
    for step in range((n + batch_size - 1) // batch_size):
        images, labels = source.batch(step, batch_size)
        pred = model(images).argmax(1)
        np.add.at(confusion, (labels.numpy(), pred.numpy()), 1)
    total = confusion.sum()
    result = {
        "top1": float(np.trace(confusion) / total),
        "n": int(total),
        "per_class": {c: float(confusion[i, i] / max(confusion[i].sum(), 1)) for i, c in enumerate(CATEGORIES)},
    }
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "classifier.json").write_text(json.dumps({**result, "confusion": confusion.tolist()}, indent=2))
    confusion_image(confusion, CATEGORIES).save(out / "confusion.png")
    return result


@torch.no_grad()
def eval_pyramid(models: str = "artifacts", n: int = 48, samples: int = 2, report_dir: str = "reports/pyramid") -> dict:
    """A first look at the pyramid generator, per level over n held-out references:
    class_agreement (classifier puts samples in the reference's category), pixel_l1 to the
    reference, and diversity (mean L1 between two samples of one reference)."""
    from semgen.networks.classifier import LEVELS
    from semgen.pipelines.pyramid import PyramidPipeline
    from semgen.reports import image_grid

    pipe = PyramidPipeline.from_dir(models)
    source = SceneSource(pipe.image_size, heldout=True)
    refs, cats = source.batch(0, n)
    refs_u8 = ((refs + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    result, grid = {}, [[r] for r in refs_u8[:6]]
    for level in LEVELS:
        agree, l1, div = [], [], []
        for i in range(n):
            out = pipe.generate(refs_u8[i], level, samples, seed=i).images
            pred = pipe.classifier(torch.tensor(out).permute(0, 3, 1, 2).float() / 127.5 - 1).argmax(1)
            agree.append((pred == cats[i]).float().mean().item())
            l1.append(np.abs(out.astype(np.float32) - refs_u8[i].astype(np.float32)).mean() / 255)
            div.append(np.abs(out[0].astype(np.float32) - out[1].astype(np.float32)).mean() / 255)
            if i < 6:
                grid[i].extend(out[:2])
        result[level] = {"class_agreement": round(float(np.mean(agree)), 4), "pixel_l1": round(float(np.mean(l1)), 4),
                         "diversity": round(float(np.mean(div)), 4)}
    out_dir = Path(report_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "pyramid.json").write_text(json.dumps(result, indent=2))
    image_grid(grid, scale=2).save(out_dir / "levels.png")  # reference, then two samples per level conv1..fc8
    return result
