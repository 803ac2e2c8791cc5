"""`semgen train boundaries`: HiGAN's probing step. Sample latents, score their images, and for every
score train a linear SVM (scikit-learn's LinearSVC) in w space on the top and bottom k latents (70/30
split); the unit normal is the boundary; for the category transfers, also one SVM between two
categories' latents. Each boundary's default layers come from re-scoring (eq. 1) on fresh latents.

With `--directions gradient`, each attribute boundary then takes another direction on the same default
layers: the attribute predictor's mean gradient with respect to one move of those layers, with the other
attributes' gradients for that move projected out, so that to first order the edit leaves their mean
scores where they were. The SVM finds where the scores differ across samples; the gradient finds what
moves one score alone. Category and transfer boundaries stay SVM normals.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from semgen.options import opt
from semgen.pipelines.higan import TRANSFERS, Boundary, HiganPipeline, default_layers, save_boundaries, transfer_name
from training.common import setup_torch, write_options

SAMPLE_SEEDS = 20_000_000  # latents the boundaries are trained on
RESCORE_SEEDS = 30_000_000  # fresh latents for choosing default layers
GRADIENT_SEEDS = 35_000_000  # latents the gradient directions are averaged over
DIRECTIONS = ("svm", "gradient")
MIN_PER_CATEGORY = 20  # samples of each category a transfer boundary needs


@dataclass
class BoundaryOptions:
    models: str = opt("artifacts", "the bundle with stylegan/, attributes/ and classifier/")
    out: str = opt("artifacts/boundaries", "the boundaries it writes")
    run_dir: str = opt("runs/boundaries", "options and the cached scores (a rerun skips the sampling)")
    n: int = opt(10000, "sampled latents")
    top: float = opt(0.2, "k = top · n positives and k negatives")
    val: float = opt(0.3, "validation share of the 2k")
    rescore_n: int = opt(100, "latents for the default layers")
    directions: str = opt("svm", "attribute directions: svm (HiGAN's SVM normals) or gradient (the predictor's "
                                 "mean gradient on the default layers, the other attributes' projected out)")
    gradient_n: int = opt(256, "latents the gradient directions are averaged over")
    threads: int = opt(2, "torch threads (0: torch's default)")
    seed: int = opt(0, "random seed")


def fit_linear_svm(x: np.ndarray, y: np.ndarray, c: float = 1.0) -> tuple[np.ndarray, float]:
    """Linear SVM (squared hinge, L2, primal) on x [N, D], y in {-1, +1} -> (weights [D], bias) in
    x's own units: scikit-learn's LinearSVC on standardised features (for the solver only)."""
    scaler = StandardScaler().fit(x)
    # dual=False: the primal solver suits N > D and is deterministic. liblinear penalises the bias as a
    # weight on a constant feature; a large intercept_scaling keeps the bias (nearly) unpenalised. The
    # default tol (1e-4) stops early on separable splits (city_street_to_night_city: -0.011 val_acc).
    svm = LinearSVC(C=c, loss="squared_hinge", dual=False, intercept_scaling=100.0, tol=1e-6, random_state=0)
    svm.fit(scaler.transform(x), y)
    weights = svm.coef_[0] / scaler.scale_
    return weights, float(svm.intercept_[0] - weights @ scaler.mean_)


def split_top_bottom(scores: np.ndarray, top: float, val: float, seed: int):
    """Indices and ±1 labels of the top and bottom k scores, shuffled and split (train, val)."""
    k = int(top * len(scores))
    order = np.argsort(scores, kind="stable")
    idx = np.concatenate([order[-k:], order[:k]])
    labels = np.concatenate([np.ones(k), -np.ones(k)])
    perm = np.random.default_rng(seed).permutation(2 * k)
    idx, labels = idx[perm], labels[perm]
    cut = int(round((1 - val) * 2 * k))
    return (idx[:cut], labels[:cut]), (idx[cut:], labels[cut:])


def sample_scores(pipe: HiganPipeline, n: int, run_dir: Path, progress) -> tuple[np.ndarray, np.ndarray]:
    """w [n, w_dim] and scores [n, len(score_names)], cached in run_dir."""
    cache = run_dir / f"scores_{n}.npz"
    if cache.exists():
        data = np.load(cache)
        if tuple(data["names"]) == pipe.score_names:
            return data["w"], data["scores"]
    ws, scores = [], []
    for start in range(0, n, 500):
        seeds = SAMPLE_SEEDS + np.arange(start, min(start + 500, n))
        w_plus = pipe.gan.latents_from_seeds(seeds)
        ws.append(w_plus[:, 0].cpu().numpy())
        scores.append(pipe.render(w_plus)[1])
        progress(f"scored {start + len(seeds)}/{n} samples")
    w, s = np.concatenate(ws), np.concatenate(scores)
    np.savez(cache, w=w, scores=s, names=np.array(pipe.score_names))
    return w, s


def attribute_gradients(pipe: HiganPipeline, ws: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """The mean over latents of d(attribute score)/d(w of each layer) [n_attrs, num_ws, w_dim]
    (the pipeline's networks are frozen: only the latents get gradients)."""
    n_attrs = len(pipe.predictor.attribute_names)
    total = torch.zeros(n_attrs, pipe.num_ws, pipe.w_dim, dtype=ws.dtype)
    for chunk in ws.split(batch_size):
        chunk = chunk.detach().clone().requires_grad_(True)
        scores = pipe.predictor(pipe.generator.synthesis(chunk, noise_mode="const"))  # [B, n_attrs]
        for a in range(n_attrs):
            grad, = torch.autograd.grad(scores[:, a].sum(), chunk, retain_graph=a < n_attrs - 1)
            total[a] += grad.sum(0).cpu()
    return (total / len(ws)).numpy()


def gradient_direction(gradients: np.ndarray, attribute: int, layers) -> np.ndarray:
    """Unit direction for one attribute, moved on `layers`: its mean gradient for that move minus the
    part along the other attributes' gradients for the same move. gradients [n_attrs, num_ws, w_dim]."""
    move = gradients[:, list(layers)].sum(1)  # [n_attrs, w_dim]: the same vector is added to every layer
    q, _ = np.linalg.qr(np.delete(move, attribute, 0).T)  # orthonormal basis of the others' gradients
    d = move[attribute] - q @ (q.T @ move[attribute])
    if np.linalg.norm(d) < 1e-12:
        raise ValueError(f"gradient direction of attribute {attribute}: nothing is left after projecting out the others")
    return (d / np.linalg.norm(d)).astype(np.float32)


def transfer_splits(pipe: HiganPipeline, scores: np.ndarray, val: float, seed: int, progress) -> list:
    """(name, level, (train, val)) for every category transfer a -> b: the latents classified a
    (label -1) or b (+1), shuffled and split."""
    n_attrs = len(pipe.predictor.attribute_names)
    categories, predicted = pipe.score_names[n_attrs:], scores[:, n_attrs:].argmax(1)
    splits = []
    for j, (source, target) in enumerate(TRANSFERS):
        if source not in categories or target not in categories:
            continue
        counts = [int((predicted == categories.index(c)).sum()) for c in (source, target)]
        if min(counts) < MIN_PER_CATEGORY:
            progress(f"{transfer_name(source, target)}: skipped, only {counts} samples of the two categories")
            continue
        idx = np.flatnonzero(np.isin(predicted, [categories.index(source), categories.index(target)]))
        labels = np.where(predicted[idx] == categories.index(target), 1.0, -1.0)
        perm = np.random.default_rng(seed + 100 + j).permutation(len(idx))
        cut = int(round((1 - val) * len(idx)))
        splits.append((transfer_name(source, target), "category",
                       ((idx[perm[:cut]], labels[perm[:cut]]), (idx[perm[cut:]], labels[perm[cut:]]))))
    return splits


def train_boundaries(opt: BoundaryOptions, progress=print) -> Path:
    if opt.directions not in DIRECTIONS:
        raise ValueError(f"directions: {opt.directions!r} is not one of {', '.join(DIRECTIONS)}")
    run_dir = Path(opt.run_dir)
    setup_torch(opt.threads, opt.seed)
    write_options(run_dir, opt)
    pipe = HiganPipeline.from_dir(opt.models)
    w, scores = sample_scores(pipe, opt.n, run_dir, progress)
    boundaries = []
    splits = [(name, level, split_top_bottom(scores[:, i], opt.top, opt.val, opt.seed + i))
              for i, (name, level) in enumerate(zip(pipe.score_names, pipe.score_levels))]
    splits += transfer_splits(pipe, scores, opt.val, opt.seed, progress)
    for name, level, ((tr, ytr), (va, yva)) in splits:
        weights, bias = fit_linear_svm(w[tr], ytr)
        val_acc = float(((w[va] @ weights + bias > 0) == (yva > 0)).mean())
        normal = (weights / np.linalg.norm(weights)).astype(np.float32)
        scale = float((w @ normal).std())
        boundaries.append(Boundary(name, level, normal, scale, round(val_acc, 4), ()))
        progress(f"{name}: validation accuracy {val_acc:.3f} ({len(tr)} + {len(va)} latents)")
    pipe.boundaries = {b.name: b for b in boundaries}
    fresh = pipe.gan.latents_from_seeds(RESCORE_SEEDS + np.arange(opt.rescore_n))
    layers = [(i,) for i in range(pipe.num_ws)]
    chosen, base = [], pipe.render(fresh)[1]
    for b in boundaries:
        deltas = pipe.rescore(b.name, fresh, layers, base_scores=base)
        chosen.append(Boundary(b.name, b.level, b.normal, b.scale, b.val_acc, default_layers(deltas)))
        progress(f"{b.name}: default layers {chosen[-1].default_layers}")
    if opt.directions == "gradient":
        chosen = with_gradient_directions(pipe, chosen, w, opt.gradient_n, progress)
    return save_boundaries(opt.out, chosen, training={"n": opt.n, "top": opt.top, "val": opt.val,
                                                       "rescore_n": opt.rescore_n, "directions": opt.directions,
                                                       "gradient_n": opt.gradient_n, "models": opt.models})


def with_gradient_directions(pipe: HiganPipeline, boundaries: list[Boundary], w: np.ndarray, n: int, progress) -> list[Boundary]:
    """The attribute boundaries with gradient directions on their default layers (scale: the spread of
    the sampled w along the new direction); the others as they are."""
    gradients = attribute_gradients(pipe, pipe.gan.latents_from_seeds(GRADIENT_SEEDS + np.arange(n)))
    attrs = list(pipe.predictor.attribute_names)
    out = []
    for b in boundaries:
        if b.name not in attrs:
            out.append(b)
            continue
        normal = gradient_direction(gradients, attrs.index(b.name), b.default_layers)
        out.append(Boundary(b.name, b.level, normal, float((w @ normal).std()), b.val_acc, b.default_layers, "gradient"))
        progress(f"{b.name}: gradient direction, {float(normal @ b.normal):+.2f} cosine with the SVM normal")
    return out
