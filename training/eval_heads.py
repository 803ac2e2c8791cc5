"""`semgen eval heads`: the paper's tables 1 and 2 on our generator, plus §3.3's class centres.

Ground truth is the segmenter's labelling of fresh generated samples (as in the paper, where
UNet/DeepLabV3 provide it). Few-shot LSEs are fitted here, `repeats` times per N with different
annotated samples that go round the generator's scene categories (8 shots: one per category);
8-shot LSEs fitted on random draws are reported beside them. All heads are scored in one pass over
the same evaluation samples.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from semgen.data.loaders import to_uint8
from semgen.networks.heads import LinearSemanticExtractor
from semgen.pipelines.semantics import SemanticsPipeline
from semgen.reports import image_grid, label_colors
from training.heads import EVAL_SEED_OFFSET, fewshot_head, labelled_samples
from training.iou import IoUMeter

CENTER_SEED_OFFSET = 6_000_000
RANDOM_DRAW_SHOTS = 8  # few-shot heads also fitted on random draws (not one per category), for comparison
FULL_KINDS = ("lse", "nse1", "nse2")


@torch.no_grad()
def class_centers(pipe: SemanticsPipeline, n: int, batch_size: int = 16) -> torch.Tensor:
    """§3.3: per class, the mean of its pixels' stacked feature vectors normalised onto the unit
    sphere, renormalised -> [num_classes, sum of layer channels]."""
    num_classes = pipe.segmenter.num_classes
    sums = torch.zeros(num_classes, sum(pipe.generator.layer_channels()))
    for start in range(0, n, batch_size):
        seeds = CENTER_SEED_OFFSET + start + np.arange(min(batch_size, n - start))
        _, _, features, labels = labelled_samples(pipe, seeds)
        size = pipe.image_size
        x = torch.cat([F.interpolate(f, size=(size, size), mode="bilinear", align_corners=False)
                       if f.shape[-1] != size else f for f in features], 1)
        x = x / x.norm(dim=1, keepdim=True).clamp(min=1e-8)
        onehot = F.one_hot(labels, num_classes).permute(0, 3, 1, 2).float()
        sums += torch.einsum("bchw,bkhw->kc", x, onehot)
    return sums / sums.norm(dim=1, keepdim=True).clamp(min=1e-8)


def eval_heads(models: str = "artifacts", n: int = 1000, repeats: int = 5, shots=(1, 4, 8, 16), n_centers: int = 500,
               batch_size: int = 50, report_dir: str = "reports/heads", progress=print) -> dict:
    pipe = SemanticsPipeline.from_dir(models)
    missing = [k for k in FULL_KINDS if k not in pipe.heads]
    if missing or pipe.segmenter is None:
        raise ValueError(f"models: need the segmenter and heads {FULL_KINDS} in {models} (missing: {missing}); "
                         "run `semgen train segmenter` and `semgen train heads --kind lse,nse1,nse2`")
    classes = pipe.predictor_classes("segmenter")
    num_classes = len(classes)

    # 1. heads that are made here: few-shot LSEs and the class-centre LSE
    heads = {k: pipe.heads[k] for k in FULL_KINDS}
    for n_shots in shots:
        for r in range(repeats):
            progress(f"fitting {n_shots}-shot LSE, repeat {r + 1}/{repeats}")
            heads[f"{n_shots}shot.{r}"] = fewshot_head(pipe, "lse", n_shots, repeat=r)
    for r in range(repeats):  # the reference point: shots drawn at random, whatever their category
        progress(f"fitting {RANDOM_DRAW_SHOTS}-shot LSE on a random draw, repeat {r + 1}/{repeats}")
        heads[f"random{RANDOM_DRAW_SHOTS}shot.{r}"] = fewshot_head(pipe, "lse", RANDOM_DRAW_SHOTS, repeat=r,
                                                                    per_category=False)
    progress(f"class centres from {n_centers} samples")
    heads["class_centers"] = LinearSemanticExtractor(pipe.generator.layer_channels(), num_classes, classes).set_from_centers(
        class_centers(pipe, n_centers))

    # 2. one pass over the evaluation samples, every head on the same features
    meters = {name: IoUMeter(num_classes) for name in heads}
    picture = None
    for start in range(0, n, batch_size):
        seeds = EVAL_SEED_OFFSET + start + np.arange(min(batch_size, n - start))
        _, images, features, labels = labelled_samples(pipe, seeds)
        with torch.no_grad():
            preds = {name: head(features, pipe.image_size).argmax(1) for name, head in heads.items()}
        for name, pred in preds.items():
            meters[name].add(pred, labels)
        if picture is None:
            picture = [images[:8], labels[:8]] + [preds[k][:8] for k in ("lse", "nse1", "nse2", "8shot.0", "class_centers") if k in preds]
        progress(f"scored {min(start + batch_size, n)}/{n} samples")

    # 3. tables
    miou = {name: meters[name].miou() for name in ("lse", "nse1", "nse2", "class_centers")}
    best = max(miou[k] for k in FULL_KINDS)

    def fewshot_row(prefix: str) -> dict:
        values = np.array([meters[f"{prefix}.{r}"].miou() for r in range(repeats)])
        return {"mean": float(values.mean()), "maxdev": float(np.abs(values - values.mean()).max()),
                "ratio": float(values.mean() / miou["lse"]), "runs": values.tolist()}

    fewshot = {str(n_shots): fewshot_row(f"{n_shots}shot") for n_shots in shots}
    result = {
        "miou": miou,
        "relative_to_best": {k: (miou[k] - best) / best for k in FULL_KINDS},
        "fewshot": fewshot,
        "fewshot_random_draw": {str(RANDOM_DRAW_SHOTS): fewshot_row(f"random{RANDOM_DRAW_SHOTS}shot")},
        "per_class": {name: dict(zip(classes, meters[name].per_class())) for name in ("lse", "nse1", "nse2", "class_centers")},
        "n": n,
        "repeats": repeats,
    }
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "heads.json").write_text(json.dumps(result, indent=2))
    columns = [to_uint8(picture[0])] + [label_colors(p) for p in picture[1:]]
    image_grid([[c[i] for c in columns] for i in range(len(columns[0]))]).save(out / "heads.png")
    return result

