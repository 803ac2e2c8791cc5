"""Train the Semantic Pyramid generator against a fixed classifier (paper §3.2–3.4).

Each step draws B/2 reference images, duplicates them into pairs that share features, masks
and class but not noise, and optimises
    LSGAN adversarial + rec_weight · reconstruction + div_weight · diversity
where reconstruction is an L1 between 2×2 max-pooled classifier features of the reference and
of the generated image on the levels that were passed (normalised together; with --rec-deeper also,
weighted, on the conv levels deeper than the selected one), and diversity is
‖z1 − z2‖₁ / (‖G(z1) − G(z2)‖₁ + ε) over the pairs; with --div-level the distance between the two
images is taken in the classifier's features at that level (normalised per channel) instead of pixels,
so that changing colour alone no longer counts as diverse; --div-from and --div-level-weights weigh
the pairs by the level they were made from. With --pixel-weight, + W · an L1 in pixels
wherever conv1 is passed. With --spectral-weight, + W · the mean |log|
difference between the generated batch's power spectrum and the references' (per selected level with
--spectral-by-level; up to the --spectral-own-refs level against the very references of that level's
samples, else against every reference seen so far): a periodic texture is a peak in that spectrum.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from semgen.checkpoints import load_checkpoint, load_classifier, save_checkpoint
from semgen.data.loaders import make_source, to_uint8
from semgen.networks.classifier import LEVELS
from semgen.networks.pyramid import PyramidDiscriminator, PyramidGenerator
from semgen.options import opt
from semgen.pipelines.masks import level_masks
from semgen.pipelines.pyramid import check_pair
from semgen.reports import image_grid
from training.common import Progress, load_state, save_state, setup_torch, write_options
from training.grid import power_spectrum
from training.masks import deeper_conv_masks, sample_training_masks


@dataclass
class PyramidOptions:
    classifier: str = opt("artifacts/classifier", "fixed feature extractor: a checkpoint folder or "
                                                   "torchvision-vgg16:PATH")
    out: str = opt("artifacts/pyramid", "EMA generator checkpoint that serving loads")
    run_dir: str = opt("runs/pyramid", "resumable state, options, log")
    data: str = opt("scenes", "'scenes' or an image folder (one subfolder per class)")
    init_from: str = opt("", "warm start: a generator checkpoint to start G and its EMA from (D starts fresh), "
                             "upgraded to --upsample/--noise/--padding where they differ")
    d_warmup: int = opt(0, "steps at the start of a run that train only D (lets a fresh D catch up)")
    steps: int = opt(6000, "training steps (the shipped model's)")
    batch_size: int = opt(32, "B/2 references, each twice")
    lr: float = opt(2e-4, "learning rate")
    rec_weight: float = opt(1.0, "weight of the feature reconstruction loss")
    rec_deeper: float = opt(0.0, "weight of also reconstructing the conv levels deeper than the selected one "
                                 "(functions of what was passed: keeps shallow-level images' semantics); "
                                 "0: only the passed levels, as the paper")
    div_weight: float = opt(0.1, "weight of the diversity loss")
    spectral_weight: float = opt(0.0, "weight of matching the generated images' mean log power spectrum to the "
                                      "real references' (a periodic texture is a spectral peak); 0: off, as the paper")
    spectral_by_level: bool = opt(False, "match the spectrum separately for the samples of each selected level "
                                         "(else over the whole batch, where levels can trade peaks for dips)")
    spectral_own_refs: str = opt("", "with --spectral-by-level: the samples of this level (e.g. conv3) and shallower "
                                     "are matched to the spectrum of the references they were made from, not of every "
                                     "reference seen, which agrees with reconstructing them; empty: no level")
    pixel_weight: float = opt(0.0, "weight of an L1 in pixels wherever conv1 is passed: conv1 nearly fixes the "
                                   "pixels, and re-painting keeps the image outside the region from it; 0: off, "
                                   "as the paper (features only)")
    div_eps: float = opt(0.1, "epsilon of the diversity loss")
    p_crop: float = opt(0.3, "share of training masks that are random crops")
    ema: float = opt(0.999, "EMA decay of the generator that serving loads")
    z_dim: int = opt(64, "for a new generator; a warm start keeps its own")
    upsample: str = opt("bilinear", "'bilinear' or 'nearest' (version 1; grid texture)")
    noise: bool = opt(True, "a per-block noise map derived from z (version 2)")
    padding: str = opt("zeros", "'zeros' or 'reflect': how the generator's 3x3 convolutions pad")
    div_level: str = opt("", "diversity measured in this classifier level's features (e.g. conv3); "
                             "empty: in pixels, as the paper")
    div_level_weights: str = opt("", "LEVEL=W,...: the diversity of pairs made from LEVEL counts W times (e.g. fc8=2: "
                                     "fc8 carries less than fc7, so its samples should differ at least as much); "
                                     "empty: 1 for every level")
    div_from: str = opt("", "diversity counted only for pairs whose selected level is this one or deeper "
                            "(e.g. conv4: shallow levels are left to reconstruct); empty: every pair, as the paper")
    levels: str = opt("", "comma-separated levels the training samples are made from (e.g. fc8); empty: every "
                          "level, as the paper")
    train_only: str = opt("", "comma-separated parameter-name prefixes that train (e.g. from_fc8: the layer only fc8 "
                              "passes through); every other weight and the batch-norm statistics stay as they are, so "
                              "samples that do not use them do not change; empty: everything trains")
    save_every: int = opt(100, "steps between resumable saves")
    sample_every: int = opt(250, "picture of EMA samples by level in run_dir/samples/")
    threads: int = opt(2, "torch threads (0: torch's default)")
    seed: int = opt(0, "random seed")


def upgraded_generator(path: str, upsample: str, noise: bool, padding: str = "zeros") -> PyramidGenerator:
    """The checkpoint's generator with `upsample`, `noise` and `padding`. Every weight carries over
    (upsampling and padding have none, and new noise scales start at 0), so a version-1 generator
    becomes a version-2 one that draws what it drew, up to the smoothing of bilinear upsampling and
    what changes at the border, and fine-tuning starts from there."""
    old = load_checkpoint(path)
    if old.config.get("noise") and not noise:
        raise ValueError(f"init_from: {path} has per-block noise; --no-noise cannot remove it")
    G = PyramidGenerator(**{**old.config, "upsample": upsample, "noise": noise, "padding": padding})
    missing, unexpected = G.load_state_dict(old.state_dict(), strict=False)
    assert not unexpected and all(".noise_" in k for k in missing), (missing, unexpected)
    return G


def reconstruction_loss(real: dict, fake: dict, masks: dict) -> torch.Tensor:
    """Masked L1 between pooled, jointly normalised features, summed over passed levels."""
    total = 0.0
    for level in LEVELS:
        m = masks.get(level)
        if m is None or not m.any():
            continue
        r, f = real[level], fake[level]
        if r.dim() == 4:
            if r.shape[-1] >= 2:
                r, f = F.max_pool2d(r, 2), F.max_pool2d(f, 2)
                m = F.adaptive_avg_pool2d(m, r.shape[-2:])
            dims = (0, 2, 3)
        else:
            dims = (0,)
        both = torch.cat([r, f]).detach()
        mean, std = both.mean(dims, keepdim=True), both.std(dims, keepdim=True) + 1e-5
        err = ((r - mean) / std - (f - mean) / std).abs()
        total = total + (err * m).sum() / (m.sum() * err.shape[1] + 1e-8)
    return total


def pixel_loss(real: torch.Tensor, fake: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |fake − real| over the pixels under `mask` [B, 1, h, w] (nearest-upsampled to the images)."""
    m = F.interpolate(mask, size=fake.shape[-2:], mode="nearest")
    return ((fake - real).abs() * m).sum() / (m.sum() * fake.shape[1] + 1e-8)


def diversity_loss(z: torch.Tensor, images: torch.Tensor, eps: float,
                   pairs: torch.Tensor | None = None) -> torch.Tensor:
    """images: the generated pixels, or any [B, …] tensor to measure the pairs' distance in;
    pairs: a weight per pair, 0 = not counted (None: all count once); the sum over pairs is divided
    by the number counted, so a weight of 2 doubles that pair's pull."""
    half = z.shape[0] // 2
    dz = (z[:half] - z[half:]).abs().mean(1)
    dx = (images[:half] - images[half:]).abs().flatten(1).mean(1)
    ratio = dz / (dx + eps)
    return ratio.mean() if pairs is None else (ratio * pairs).sum() / (pairs > 0).sum().clamp(min=1)


def parse_level_weights(text: str) -> dict[str, float]:
    """"fc8=2,fc7=1.5" -> {"fc8": 2.0, "fc7": 1.5}."""
    weights = {}
    for item in filter(None, text.split(",")):
        level, _, value = item.partition("=")
        try:
            weights[level.strip()] = float(value)
        except ValueError:
            raise ValueError(f"div_level_weights: {item!r} is not LEVEL=NUMBER") from None
        if level.strip() not in LEVELS or weights[level.strip()] < 0:
            raise ValueError(f"div_level_weights: {item!r}: the level must be one of {', '.join(LEVELS)} "
                             "and the weight >= 0")
    return weights


def parse_levels(text: str) -> tuple[int, ...]:
    """"conv5,fc8" -> their indices in LEVELS."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in LEVELS]
    if unknown:
        raise ValueError(f"levels: {', '.join(unknown)} not among {', '.join(LEVELS)}")
    return tuple(LEVELS.index(name) for name in names)


def trainable_parameters(G: torch.nn.Module, train_only: str) -> list[torch.nn.Parameter]:
    """All of G's parameters, or only those whose names start with one of the comma-separated
    prefixes; then the rest is frozen and G runs in eval mode, so its batch-norm statistics stay too."""
    prefixes = tuple(p.strip() for p in train_only.split(",") if p.strip())
    if not prefixes:
        return list(G.parameters())
    for name, p in G.named_parameters():
        p.requires_grad_(name.startswith(prefixes))
    trained = [p for p in G.parameters() if p.requires_grad]
    if not trained:
        raise ValueError(f"train_only: no parameter of the generator starts with {', '.join(prefixes)}")
    G.eval()
    return trained


def pair_weights(selected: torch.Tensor, div_from: str, level_weights: dict[str, float]) -> torch.Tensor | None:
    """The diversity weight of each pair, from its selected level index [n]: 0 below `div_from`,
    else the level's weight (1 unless given); None when every pair counts once."""
    if not div_from and not level_weights:
        return None
    table = torch.tensor([level_weights.get(level, 1.0) for level in LEVELS])
    if div_from:
        table[: LEVELS.index(div_from)] = 0.0
    return table[selected]


def spectral_loss(fake: torch.Tensor, real_spectrum: torch.Tensor, groups: torch.Tensor | None = None,
                  group_spectra: dict | None = None) -> torch.Tensor:
    """Mean |log power| difference over all frequency bins between the fakes and a real spectrum [S, S];
    with `groups` [B], the mean of that for each group's own spectrum, against `group_spectra[g]` for
    the groups it holds and `real_spectrum` for the rest."""
    if groups is None:
        return (torch.log(power_spectrum(fake) + 1e-6) - torch.log(real_spectrum + 1e-6)).abs().mean()
    spectra = group_spectra or {}
    return torch.stack([spectral_loss(fake[groups == g], spectra.get(int(g), real_spectrum))
                        for g in groups.unique()]).mean()


def running_mean(mean: torch.Tensor, count: int, value: torch.Tensor, weight: int) -> tuple[torch.Tensor, int]:
    return (mean * count + value * weight) / (count + weight), count + weight


def normalised(features: torch.Tensor) -> torch.Tensor:
    """Per-channel standardised over the batch (and positions), so distances are in units of spread."""
    dims = (0, 2, 3) if features.dim() == 4 else (0,)
    return (features - features.mean(dims, keepdim=True).detach()) / (features.std(dims, keepdim=True).detach() + 1e-5)


def _twice(tensors: dict) -> dict:
    return {k: torch.cat([v, v]) for k, v in tensors.items()}


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float):
    for pe, p in zip(ema.parameters(), model.parameters()):
        pe.lerp_(p, 1 - decay)
    for be, b in zip(ema.buffers(), model.buffers()):
        be.copy_(b)


@torch.no_grad()
def write_samples(path: Path, G, classifier, source, n_refs: int = 6):
    """Rows: a fixed reference, then one sample from each level conv1..fc8."""
    refs, labels = source.batch(10_000_000, n_refs)  # a batch index training never reaches
    feats = classifier.features(refs)
    z = torch.randn(n_refs, G.z_dim, generator=torch.Generator().manual_seed(0))
    columns = [refs]
    for level in LEVELS:
        columns.append(G(z, feats, level_masks(classifier.level_shapes(), {level: None}, n_refs), labels))
    tiles = [to_uint8(c) for c in columns]
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid([[t[i] for t in tiles] for i in range(n_refs)]).save(path)


def train_pyramid(opt: PyramidOptions) -> Path:
    run_dir, out = Path(opt.run_dir), Path(opt.out)
    if opt.spectral_own_refs and (opt.spectral_own_refs not in LEVELS or not opt.spectral_by_level):
        raise ValueError(f"spectral_own_refs: must be one of {', '.join(LEVELS)} and needs --spectral-by-level, "
                         f"got {opt.spectral_own_refs!r}")
    setup_torch(opt.threads, opt.seed)
    write_options(run_dir, opt)
    classifier = load_classifier(opt.classifier).requires_grad_(False)
    size = classifier.image_size
    source = make_source(opt.data, size)
    if len(source.class_names) != classifier.num_classes:
        raise ValueError(f"data has {len(source.class_names)} classes, the classifier {classifier.num_classes}")
    shapes = classifier.level_shapes()
    div_weights = parse_level_weights(opt.div_level_weights)
    level_indices = parse_levels(opt.levels)
    for name in ("div_level", "div_from"):
        if getattr(opt, name) and getattr(opt, name) not in LEVELS:
            raise ValueError(f"{name} must be one of {', '.join(LEVELS)} or empty, got {getattr(opt, name)!r}")
    if opt.init_from:  # warm start: the checkpoint's weights (replaced below when resuming)
        G = upgraded_generator(opt.init_from, opt.upsample, opt.noise, opt.padding).train()
        check_pair(classifier, G)
    else:
        G = PyramidGenerator.mirroring(classifier, z_dim=opt.z_dim, class_names=source.class_names,
                                       upsample=opt.upsample, noise=opt.noise, padding=opt.padding)
    trained = trainable_parameters(G, opt.train_only)
    D = PyramidDiscriminator(image_size=size, num_classes=classifier.num_classes)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    opt_g = torch.optim.Adam(trained, lr=opt.lr, betas=(0.0, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=opt.lr, betas=(0.0, 0.999))
    start = load_state(run_dir, G=G, D=D, G_ema=G_ema, opt_g=opt_g, opt_d=opt_d)
    if start and opt.init_from:
        print(f"resuming {run_dir} at step {start}; --init-from applies only to a new run", flush=True)
    progress = Progress(run_dir, opt.steps, start, "pyramid")
    half = opt.batch_size // 2
    own_upto = LEVELS.index(opt.spectral_own_refs) if opt.spectral_own_refs else -1  # levels matched to own refs
    real_spectrum, seen = torch.zeros(size, size), 0  # the references': a running mean over the run's steps
    for step in range(start if opt.spectral_weight else 0):  # replayed when resuming
        real_spectrum, seen = running_mean(real_spectrum, seen, power_spectrum(source.batch(step, half)[0]), half)
    for step in range(start, opt.steps):
        gen = torch.Generator().manual_seed(opt.seed * 1_000_003 + step)  # step-seeded: resumes replay exactly
        train_g = step >= opt.d_warmup  # during the warm-up only D learns
        refs, labels = source.batch(step, half)
        with torch.no_grad():
            feats = classifier.features(refs)
            if opt.spectral_weight:
                real_spectrum, seen = running_mean(real_spectrum, seen, power_spectrum(refs), len(refs))
        masks, selected = sample_training_masks(shapes, half, size, opt.p_crop, gen, level_indices)
        div_pairs = pair_weights(selected, opt.div_from, div_weights)
        # both halves of the batch share features, masks and labels; only z differs
        feats2, masks2, labels2 = _twice(feats), _twice(masks), torch.cat([labels, labels])
        z = torch.randn(opt.batch_size, G.z_dim, generator=gen)
        with torch.set_grad_enabled(train_g):
            fake = G(z, feats2, masks2, labels2)

        # discriminator: LSGAN, real -> 1, fake -> 0
        d_loss = (D(refs, labels) - 1).pow(2).mean() + D(fake.detach(), labels2).pow(2).mean()
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        numbers = {"d": d_loss.item()}

        if train_g:
            adv = (D(fake, labels2) - 1).pow(2).mean()
            fake_feats = classifier.features(fake)
            rec = reconstruction_loss(feats2, fake_feats, masks2)
            if opt.rec_deeper:
                deeper = _twice(deeper_conv_masks(shapes, selected))
                rec = rec + opt.rec_deeper * reconstruction_loss(feats2, fake_feats, deeper)
            div = diversity_loss(z, normalised(fake_feats[opt.div_level]) if opt.div_level else fake, opt.div_eps,
                                 div_pairs)
            g_loss = adv + opt.rec_weight * rec + opt.div_weight * div
            if opt.pixel_weight:
                pixel = pixel_loss(torch.cat([refs, refs]), fake, masks2["conv1"])
                g_loss = g_loss + opt.pixel_weight * pixel
                numbers.update(pixel=pixel.item())
            if opt.spectral_weight:
                groups = torch.cat([selected, selected]) if opt.spectral_by_level else None
                own = {g: power_spectrum(refs[selected == g]) for g in selected.unique().tolist() if g <= own_upto}
                spectral = spectral_loss(fake, real_spectrum, groups, own)
                g_loss = g_loss + opt.spectral_weight * spectral
                numbers.update(spectral=spectral.item())
            opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            opt_g.step()
            ema_update(G_ema, G, min(opt.ema, (1 + step) / (10 + step)))  # ramp: early EMA tracks G closely
            numbers.update(adv=adv.item(), rec=rec.item(), div=div.item())

        progress.update(step + 1, **numbers)
        if (step + 1) % opt.save_every == 0 or step + 1 == opt.steps:
            save_state(run_dir, step + 1, G=G, D=D, G_ema=G_ema, opt_g=opt_g, opt_d=opt_d)
            save_checkpoint(out, G_ema, G_ema.config, step=step + 1,
                            training={"data": opt.data, "classifier": opt.classifier, "init_from": opt.init_from})
        if (step + 1) % opt.sample_every == 0:
            write_samples(run_dir / "samples" / f"{step + 1:06d}.png", G_ema, classifier, source)
    progress.close()
    return out
