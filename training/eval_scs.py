"""`semgen eval scs`: semantic-conditional sampling (paper table 3) and semantic image editing.

SCS: targets are the segmenter's masks of truncated samples (as the paper does for bedrooms and
churches); each target gets `samples` images per predictor (8-shot LSE, full LSE, segmenter),
and semantic accuracy (eq. 7) is the mean IoU between the target and the *segmenter's* mask of
each image. The candidate stage shares one pool of random latents per predictor: sample j of
every target takes the best latent of group j of the pool (n_init latents per group).

SIE: a scripted set of edits of the segmenter's mask of held-out samples (grow, shrink, remove
a class region, add a box of a class) and the latent optimised towards each edited mask, for SIE
with several predictors and for the colour-space baseline (strokes in each target class's mean
colour). success = share of edited pixels whose class (by the segmenter) is the target class;
preservation = share of the other pixels whose class did not change; both are means over edits,
and `sie_no_edit` scores the unedited images (the floor). steered_success (and, for SCS,
accuracy_by_steering_predictor) is the same score by the predictor that steered the latent: far
above the segmenter's, it shows the optimiser fooling that predictor rather than changing the image.
SIE with the segmenter as predictor is scored by the same segmenter it was steered by, which
flatters it (the paper notes the same bias for its SCS baseline).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from semgen.pipelines.semantics import SEGMENTER, Samples, SemanticsPipeline
from semgen.reports import image_grid, label_colors
from training.iou import image_miou
from training.layout import segment_labels

TARGET_SEED_OFFSET = 7_000_000
POOL_SEED = 8
EDIT_SEED_OFFSET = 9_000_000
EDITS = ("grow", "shrink", "remove", "add")
PREDICTORS = {"lse_8shot": "lse-8shot", "lse_full": "lse", "segmenter": SEGMENTER}


def segment_images(pipe: SemanticsPipeline, images_uint8: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(segment_labels(pipe.segmenter, images_uint8))


def eval_scs(models: str = "artifacts", targets: int = 50, samples: int = 5, n_init: int = 100,
             iterations: int = 50, lr: float = 0.01, edits_n: int = 20, chunk: int = 10,
             report_dir: str = "reports/scs", progress=print) -> dict:
    pipe = SemanticsPipeline.from_dir(models)
    missing = [h for h in PREDICTORS.values() if h != SEGMENTER and h not in pipe.heads]
    if missing or pipe.segmenter is None:
        raise ValueError(f"models: need the segmenter and heads {missing} in {models}; "
                         "run `semgen train heads --kind lse` and `--shots 8`")
    num_classes = pipe.segmenter.num_classes
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)

    # 1. SCS targets: the segmenter's masks of truncated samples
    target_set = pipe.sample(seeds=TARGET_SEED_OFFSET + np.arange(targets), psi=0.7, predictor=SEGMENTER)
    goal = torch.as_tensor(target_set.masks.astype(np.int64))
    accuracy, accuracy_init, accuracy_steered, rows = {}, {}, {}, []
    for key, predictor in PREDICTORS.items():
        progress(f"SCS with {predictor}: candidate pool of {samples * n_init}")
        pool = pipe.candidate_pool(predictor, samples * n_init, POOL_SEED)
        init_ws = torch.cat([pool.best(t, samples)[0] for t in goal])
        init = pipe.sample(latents=init_ws.numpy())
        results = []
        for start in range(0, targets, chunk):
            results.append(pipe.conditional_batch(goal[start:start + chunk], predictor, samples, pool, iterations, lr))
            progress(f"SCS with {predictor}: {min(start + chunk, targets)}/{targets} targets")
        images = np.concatenate([r.images for r in results])
        repeated = goal.repeat_interleave(samples, 0)
        accuracy[key] = float(image_miou(segment_images(pipe, images), repeated, num_classes).mean())
        accuracy_init[key] = float(image_miou(segment_images(pipe, init.images), repeated, num_classes).mean())
        steered = torch.as_tensor(np.concatenate([r.masks for r in results]).astype(np.int64))
        accuracy_steered[key] = float(image_miou(steered, repeated, num_classes).mean())
        rows.append(images)
    # picture: per target, the target mask then the first two samples of each predictor
    picture = [[label_colors(target_set.masks[i])] + [r[i * samples + j] for r in rows for j in range(min(samples, 2))]
               for i in range(min(targets, 6))]
    image_grid(picture).save(out / "scs.png")

    # 2. SIE on scripted edits
    sie = eval_sie(pipe, edits_n, iterations, lr, out, progress)
    result = {"accuracy": accuracy, "accuracy_before_optimisation": accuracy_init,
              "accuracy_by_steering_predictor": accuracy_steered, **sie,
              "targets": targets, "samples": samples, "n_init": n_init, "iterations": iterations}
    (out / "scs.json").write_text(json.dumps(result, indent=2))
    return result


def _dilate(mask: torch.Tensor, r: int) -> torch.Tensor:
    return F.max_pool2d(mask[:, None].float(), 2 * r + 1, stride=1, padding=r)[:, 0] > 0


def _fill_from_neighbours(labels: torch.Tensor, hole: torch.Tensor, num_classes: int, exclude: int) -> torch.Tensor:
    """Relabel `hole` pixels with the nearest class other than `exclude`, grown inwards."""
    onehot = F.one_hot(labels, num_classes).permute(0, 3, 1, 2).float() * (~hole)[:, None]
    onehot[:, exclude] = 0
    filled = labels.clone()
    todo = hole.clone()
    while todo.any():
        onehot = torch.maximum(onehot, F.max_pool2d(onehot, 3, stride=1, padding=1))
        reached = todo & (onehot.sum(1) > 0)
        if not reached.any():
            break
        filled[reached] = onehot.argmax(1)[reached]
        todo &= ~reached
    return filled


def scripted_edit(labels: torch.Tensor, edit: str, num_classes: int, rng: np.random.Generator) -> torch.Tensor | None:
    """One edited mask [S, S] of `labels` [S, S], or None if the image has no class to edit."""
    size = labels.shape[-1]
    areas = torch.bincount(labels.flatten(), minlength=num_classes).float() / labels.numel()
    candidates = [c for c in range(num_classes) if 0.04 <= areas[c] <= 0.5]
    if not candidates:
        return None
    c = int(rng.choice(candidates))
    region = (labels == c)[None]
    if edit == "grow":
        return torch.where(_dilate(region, 4)[0], torch.tensor(c), labels)
    if edit == "shrink":
        hole = region & _dilate(~region, 4)  # the rim of the region
        return _fill_from_neighbours(labels[None], hole, num_classes, c)[0]
    if edit == "remove":
        return _fill_from_neighbours(labels[None], region, num_classes, c)[0]
    if edit == "add":  # a box of class c where the image shows one other class
        box = size // 4
        for _ in range(50):
            y, x = rng.integers(0, size - box, 2)
            patch = labels[y:y + box, x:x + box]
            if (patch != c).all() and (patch == patch[0, 0]).all():
                edited = labels.clone()
                edited[y:y + box, x:x + box] = c
                return edited
        return None
    raise ValueError(f"edit: unknown {edit!r}")


def edit_scores(got: torch.Tensor, original: torch.Tensor, target: torch.Tensor,
                steered: torch.Tensor | None = None) -> dict:
    """Means over edits (each edit counts once, whatever its size) of label maps [B, S, S]: `got` is the
    segmenter's labels of the results; `steered`, if given, the steering predictor's own labels of them.
    success / steered_success: share of edited pixels that show the target class to the segmenter / to
    the predictor the latent was steered by. A high steered_success with a low success means the
    optimiser changed the predictor's reading, not the picture (it fooled the head)."""
    edited = target != original

    def success(labels):
        return float((((labels == target) & edited).sum((1, 2)) / edited.sum((1, 2)).clamp(min=1)).mean())

    preservation = ((got == original) & ~edited).sum((1, 2)) / (~edited).sum((1, 2)).clamp(min=1)
    scores = {"success": success(got), "preservation": float(preservation.mean())}
    if steered is not None:
        scores["steered_success"] = success(steered)
    return scores


def _edit_scores(pipe, result: Samples, original: torch.Tensor, target: torch.Tensor) -> dict:
    steered = None if result.masks is None else torch.as_tensor(result.masks.astype(np.int64))
    return edit_scores(segment_images(pipe, result.images), original, target, steered)


def eval_sie(pipe: SemanticsPipeline, n: int, iterations: int, lr: float, out: Path, progress=print) -> dict:
    num_classes = pipe.segmenter.num_classes
    rng = np.random.default_rng(0)
    base = pipe.sample(seeds=EDIT_SEED_OFFSET + np.arange(n))
    original = segment_images(pipe, base.images)  # exactly how results are labelled (from 8-bit pixels)
    latents, targets, sources, kinds = [], [], [], []
    for i in range(n):
        for edit in EDITS:
            t = scripted_edit(original[i], edit, num_classes, rng)
            if t is not None and (t != original[i]).any():
                latents.append(base.latents[i])
                targets.append(t)
                sources.append(i)
                kinds.append(edit)
    latents, targets = np.stack(latents), torch.stack(targets)
    before = original[sources]
    # colour strokes: each target class's mean colour in this image, else over all edit images
    pixels = base.images.reshape(-1, 3).astype(np.float64)
    flat = original.flatten().numpy()
    global_mean = np.stack([pixels[flat == k].mean(0) if (flat == k).any() else np.full(3, 127.0) for k in range(num_classes)])
    colors = np.empty((len(targets), *targets.shape[1:], 3), np.float32)
    for j, (src, t) in enumerate(zip(sources, targets)):
        img, lab = base.images[src].reshape(-1, 3), original[src].flatten().numpy()
        means = np.stack([img[lab == k].mean(0) if (lab == k).any() else global_mean[k] for k in range(num_classes)])
        colors[j] = means[t.numpy()]
    region = (targets != before).numpy()

    scores, results = {}, {"no_edit": Samples(base.images[sources], latents, None)}
    for key, predictor in PREDICTORS.items():
        progress(f"SIE with {predictor}: {len(targets)} edits")
        results[key] = pipe.edit(latents, targets.numpy(), predictor, iterations=iterations, lr=lr)
        scores[key] = _edit_scores(pipe, results[key], before, targets)
    progress("colour-space editing baseline")
    results["color_baseline"] = pipe.edit_colors(latents, colors, region, iterations=iterations, lr=lr)
    baseline = _edit_scores(pipe, results["color_baseline"], before, targets)
    by_edit = {}
    for edit in EDITS:
        idx = [j for j, k in enumerate(kinds) if k == edit]
        if idx:
            by_edit[edit] = {key: _edit_scores(pipe, Samples(r.images[idx], r.latents[idx],
                                                             None if r.masks is None else r.masks[idx]),
                                               before[idx], targets[idx])
                             for key, r in results.items()}
    picture = [[base.images[sources[j]], label_colors(before[j]), label_colors(targets[j])]
               + [results[k].images[j] for k in ("lse_full", "lse_8shot", "segmenter", "color_baseline")]
               for j in range(min(len(targets), 8))]
    image_grid(picture).save(out / "sie.png")
    return {"sie": {**scores["lse_full"], "by_predictor": scores, "by_edit": by_edit, "edits": len(targets)},
            "sie_baseline": baseline, "sie_no_edit": _edit_scores(pipe, results["no_edit"], before, targets)}
