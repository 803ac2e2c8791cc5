"""Evaluation commands: numbers as JSON + pictures under reports/."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from semgen.checkpoints import load_checkpoint
from semgen.data.loaders import SceneSource
from semgen.data.scenes import CATEGORIES
from semgen.reports import confusion_chart


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
    confusion_chart(out / "confusion.png", confusion, CATEGORIES)
    return result
