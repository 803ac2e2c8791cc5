"""Train semantic heads (LSE, NSE-1, NSE-2) on generated samples labelled by the segmenter.

Full training (paper App. D, resized for a CPU): every step draws fresh latents, runs the
generator with random layer noise, labels the images with the segmenter and takes one Adam step
on the cross-entropy; the learning rate drops ×10 after 40% of the steps. Several kinds can be
trained on the same samples at once (`--kind lse,nse1,nse2`), which shares the generator and
segmenter work. `--pool N` labels N samples once and draws every batch from them: the features are
computed once, so a long schedule takes minutes instead of hours on a CPU (the shipped LSE's way).
Few-shot training (`--shots N`) labels N samples and runs the paper's few-shot schedule
(SemanticsPipeline.fit_head).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from semgen.networks.heads import HEAD_KINDS
from semgen.options import opt
from semgen.pipelines.semantics import SemanticsPipeline
from training.common import Progress, load_state, save_state, setup_torch, write_options

TRAIN_SEED_OFFSET = 3_000_000  # latents for head training; evaluation draws from elsewhere
FEWSHOT_SEED_OFFSET = 4_000_000
EVAL_SEED_OFFSET = 5_000_000  # `semgen eval heads` scores on latents from here on


@dataclass
class HeadsOptions:
    kind: str = opt("lse", "lse, nse1, nse2, or a comma-separated list trained on the same samples")
    shots: str = opt("all", "'all' (fresh samples every step) or N annotated samples (1..16), one per scene category in turn")
    models: str = opt("artifacts", "reads <models>/stylegan and <models>/segmenter")
    out_dir: str = opt("artifacts/heads", "writes <out_dir>/<kind> or <out_dir>/<kind>-<N>shot")
    run_dir: str = opt("runs/heads", "resumable state, options, log")
    steps: int = opt(1000, "steps of full training")
    fewshot_iterations: int = opt(0, "few-shot: 0 = the paper's schedule for N shots")
    batch_size: int = opt(32, "images per step")
    lr: float = opt(1e-3, "learning rate")
    pool: int = opt(0, "0: fresh samples every step (the paper); N: label N samples once and draw batches from them")
    psi: float = opt(1.0, "truncation of the training samples")
    save_every: int = opt(100, "steps between resumable saves")
    threads: int = opt(2, "torch threads (0: torch's default)")
    seed: int = opt(0, "random seed")


def head_name(kind: str, shots: str | int) -> str:
    return kind if str(shots) == "all" else f"{kind}-{shots}shot"


def parse_kinds(kind: str) -> list[str]:
    kinds = [k.strip() for k in kind.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in HEAD_KINDS]
    if not kinds or unknown:
        raise ValueError(f"kind: must be among {sorted(HEAD_KINDS)}, got {kind!r}")
    return kinds


@torch.no_grad()
def labelled_samples(pipe: SemanticsPipeline, seeds, psi: float = 1.0, noise_mode: str = "const"):
    """(latents, images, features, segmenter labels [N, S, S]) for the given latent seeds."""
    ws = pipe.latents_from_seeds(seeds, psi)
    images, features = pipe.generator.synthesis(ws, noise_mode=noise_mode, return_features=True)
    return ws, images, features, pipe.segmenter(images).argmax(1)


FEWSHOT_BLOCK = 256  # candidate seeds per few-shot draw
FEWSHOT_DRAWS = (EVAL_SEED_OFFSET - FEWSHOT_SEED_OFFSET) // FEWSHOT_BLOCK  # draws stop short of evaluation seeds


def fewshot_seeds(pipe: SemanticsPipeline, shots: int, draw: int, per_category: bool = True) -> np.ndarray:
    """The latent seeds of few-shot draw number `draw` (its own block of candidate seeds).

    per_category: the shots go round the class-conditional generator's scene categories (8 shots
    of 8 categories: one each), as a user annotating a head for every category would pick them;
    the paper's generators have one category each, where a random draw is the same thing.
    Otherwise, or for an unconditional generator, the first `shots` seeds of the block."""
    if not 0 <= draw < FEWSHOT_DRAWS:
        raise ValueError(f"seed: few-shot draw {draw} is outside 0..{FEWSHOT_DRAWS - 1} (draw = seed × 100 + repeat)")
    block = FEWSHOT_SEED_OFFSET + draw * FEWSHOT_BLOCK + np.arange(FEWSHOT_BLOCK)
    categories = pipe.generator.num_classes
    if not per_category or not categories:
        return block[:shots]
    of_seed = pipe.generator.class_of(pipe.z_from_seeds(block)).numpy()
    by_category = [block[of_seed == c] for c in range(categories)]
    wanted = [(i % categories, i // categories) for i in range(shots)]  # (category, its n-th seed)
    if any(n >= len(by_category[c]) for c, n in wanted):
        raise ValueError(f"shots: {shots} do not fit round {categories} categories in {FEWSHOT_BLOCK} seeds")
    return np.array([by_category[c][n] for c, n in wanted])


def fewshot_head(pipe: SemanticsPipeline, kind: str, shots: int, repeat: int, seed: int = 0, psi: float = 1.0,
                 iterations: int | None = None, per_category: bool = True):
    """Label `shots` samples (a different set per repeat) and fit a few-shot head on them."""
    seeds = fewshot_seeds(pipe, shots, seed * 100 + repeat, per_category)
    ws, _, _, labels = labelled_samples(pipe, seeds, psi)
    return pipe.fit_head(ws, labels.to(torch.uint8).cpu().numpy(), pipe.predictor_classes("segmenter"),
                         seed=seed * 100 + repeat, kind=kind, iterations=iterations)


POOL_BYTES_LIMIT = 8 * 2**30


def pool_sample_bytes(pipe: SemanticsPipeline) -> int:
    """float32 bytes of one sample's layer features."""
    return 4 * sum(c * r * r for c, r in zip(pipe.generator.layer_channels(), pipe.generator.layer_resolutions()))


def labelled_pool(pipe: SemanticsPipeline, opt: HeadsOptions):
    """(features per layer [pool, C, R, R], labels [pool, S, S]) of the first `pool` training seeds,
    each chunk with seeded random layer noise (the same pool when a run resumes)."""
    features, labels = [], []
    for start in range(0, opt.pool, opt.batch_size):
        torch.manual_seed(opt.seed * 1_000_003 - 1 - start)
        seeds = TRAIN_SEED_OFFSET + start + np.arange(min(opt.batch_size, opt.pool - start))
        _, _, f, l = labelled_samples(pipe, seeds, opt.psi, noise_mode="random")
        features.append(f)
        labels.append(l)
    return [torch.cat(layer) for layer in zip(*features)], torch.cat(labels)


def train_heads(opt: HeadsOptions) -> list[Path]:
    setup_torch(opt.threads, opt.seed)
    kinds = parse_kinds(opt.kind)
    pipe = SemanticsPipeline.from_dir(opt.models)
    if pipe.segmenter is None:
        raise ValueError(f"models: {opt.models}/segmenter is missing; train it first (semgen train segmenter)")
    classes = pipe.predictor_classes("segmenter")
    out_dir = Path(opt.out_dir)
    if opt.shots != "all":
        shots = int(opt.shots)
        if not 1 <= shots <= 16:
            raise ValueError(f"shots: must be 'all' or 1..16, got {opt.shots}")
        paths = []
        for kind in kinds:
            head = fewshot_head(pipe, kind, shots, repeat=0, seed=opt.seed, psi=opt.psi,
                                iterations=opt.fewshot_iterations or None)
            paths.append(pipe.save_head(head_name(kind, shots), head, out_dir, training={"shots": shots, "seed": opt.seed}))
        return paths

    seeds_free = FEWSHOT_SEED_OFFSET - TRAIN_SEED_OFFSET
    if opt.pool < 0 or opt.pool > seeds_free:
        raise ValueError(f"pool: must be 0 (fresh samples) or 1..{seeds_free}, got {opt.pool}")
    per_sample = pool_sample_bytes(pipe)
    if opt.pool * per_sample > POOL_BYTES_LIMIT:
        raise ValueError(f"pool: {opt.pool} samples need {opt.pool * per_sample / 2**30:.1f} GiB of features, "
                         f"more than {POOL_BYTES_LIMIT / 2**30:.0f} GiB; give at most {POOL_BYTES_LIMIT // per_sample}")
    if not opt.pool and opt.steps * opt.batch_size > seeds_free:
        raise ValueError(f"steps: {opt.steps} × {opt.batch_size} samples would reuse the few-shot and evaluation seeds")
    run_dir = Path(opt.run_dir) / "-".join(kinds)
    write_options(run_dir, opt)
    channels = pipe.generator.layer_channels()
    heads = {k: HEAD_KINDS[k](channels, len(classes), classes).train() for k in kinds}
    optims = {k: torch.optim.Adam(h.parameters(), lr=opt.lr) for k, h in heads.items()}
    start = load_state(run_dir, **{f"head_{k}": h for k, h in heads.items()}, **{f"optim_{k}": o for k, o in optims.items()})
    pool_features, pool_labels = labelled_pool(pipe, opt) if opt.pool and start < opt.steps else (None, None)
    progress = Progress(run_dir, opt.steps, start, "heads " + ",".join(kinds))
    for step in range(start, opt.steps):
        torch.manual_seed(opt.seed * 1_000_003 + step)  # layer noise, or which pool samples
        if pool_labels is None:
            seeds = TRAIN_SEED_OFFSET + step * opt.batch_size + np.arange(opt.batch_size)
            _, _, features, labels = labelled_samples(pipe, seeds, opt.psi, noise_mode="random")
        else:
            pick = torch.randint(0, opt.pool, (opt.batch_size,))
            features, labels = [f[pick] for f in pool_features], pool_labels[pick]
        lr = opt.lr if step < 0.4 * opt.steps else opt.lr / 10
        numbers = {}
        for kind, head in heads.items():
            logits = head(features, pipe.image_size)
            loss = F.cross_entropy(logits, labels)
            optims[kind].param_groups[0]["lr"] = lr
            optims[kind].zero_grad(set_to_none=True)
            loss.backward()
            optims[kind].step()
            numbers[kind] = loss.item()
            numbers[f"{kind}_acc"] = (logits.argmax(1) == labels).float().mean().item()
        progress.update(step + 1, **numbers)
        if (step + 1) % opt.save_every == 0 or step + 1 == opt.steps:
            save_state(run_dir, step + 1, **{f"head_{k}": h for k, h in heads.items()},
                       **{f"optim_{k}": o for k, o in optims.items()})
    progress.close()
    training = {"shots": "all", "steps": opt.steps, "lr": opt.lr, "pool": opt.pool}
    return [pipe.save_head(kind, head.eval(), out_dir, training=training) for kind, head in heads.items()]
