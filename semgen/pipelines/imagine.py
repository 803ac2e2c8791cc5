"""IMAGINE (Wang et al.): variations of one reference image by inverting a classifier.

K images are optimised together, each from its own seeded noise, to minimise (paper eq. 9)

    CE(f(x̂), y*) + α·TV(x̂) + β·‖x̂‖² + λ·R_dm(x̂; x0, Φ) + γ·R_pc(x̂)

y* is the classifier's prediction for the reference x0; R_dm matches the channel means and standard
deviations of the classifier's features on the layers Φ to the reference's (eq. 5); R_pc = −D(x̂)
with D a patch critic trained against the reference alone with WGAN-GP while the images are
optimised. Stage 1 uses matching only (γ = 0), stage 2 adds the critic.

Controls: position (Grad-CAM of y* pushed towards a Gaussian blob, eq. 10), shape (deep layers
matched to a second image, eq. 11), style (shallow layers only, starting from a content image,
eq. 12) and counterfactual edits (eq. 13). `Schedule(bn=..., dm=...)` also gives the
DeepInversion-style baseline (statistics of the classifier's batch norms instead of, or besides,
the reference's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from semgen.checkpoints import load_classifier
from semgen.data.loaders import square_resize, to_tensor, to_uint8
from semgen.networks.patch_discriminator import PatchDiscriminator
from semgen.pipelines.semantics import seeded_init


@dataclass(frozen=True)
class Schedule:
    """Iterations and loss weights. The paper runs 2,000 + 2,000 iterations at 224 px; here 400 in
    all (`semgen bench imagine`'s quality-vs-iterations curve at 64 px), with most of them in stage 2:
    screened against the stage-1 baseline on the eval's references (README, "IMAGINE, measured")."""

    stage1: int = 100  # matching only
    stage2: int = 300  # matching + patch critic
    lr: float = 0.05  # Adam on the pixels ([-1, 1] scale), one cosine decay over both stages
    d_lr: float = 1e-3  # Adam on the critic
    tv: float = 1.0  # α (paper 1e-4 at 224 px; our small classifier needs a much stronger smoothness prior)
    l2: float = 1e-5  # β
    dm: float = 5.0  # λ: reference statistics
    pc: float = 1000.0  # γ in stage 2, on the critic's mean patch score (≈ 4 on its sum over 16×16 patches)
    loc: float = 10.0  # ν: position control
    bn: float = 0.0  # DeepInversion: the classifier's batch-norm statistics (eq. 3)
    counterfactual: float = 100.0  # weight of eq. 13's L1 term (pixel mean) outside the region
    gp: float = 1.0  # WGAN-GP gradient-penalty weight
    gp_every: int = 4  # lazy gradient penalty: every n-th critic step
    critic_steps: int = 2  # critic updates per image update
    critic_warmup: int = 50  # stage 2's first n (≤ stage2/4) iterations train the critic before it guides
    critic_channels: int = 32  # width of the patch critic
    critic_augment: int = 8  # the critic sees every image (reference and x̂) flipped at random and shifted ≤ n px
    jitter: int = 2  # random shift (px) of the images each iteration
    init_noise: float = 0.1  # style/counterfactual: noise added to the start image (variations differ)

    @property
    def total(self) -> int:
        return self.stage1 + self.stage2


@dataclass(frozen=True)
class Position:
    """Where the object should be: a Gaussian blob centred at (x, y), fractions of width and height."""

    x: float
    y: float
    sigma: float = 0.15  # fraction of the image side


@dataclass
class Controls:
    layers: tuple[str, ...] | None = None  # Φ (None: the classifier's default layers)
    position: Position | None = None
    shape_image: np.ndarray | None = None  # uint8 [H, W, 3]: its deep-layer statistics give the shape
    shape_layers: tuple[str, ...] | None = None  # Φc (None: the deep layers)
    style_content: np.ndarray | None = None  # uint8 [H, W, 3]: start here, match the reference's shallow layers
    counterfactual_query: np.ndarray | None = None  # uint8 [H, W, 3]: the image to explain
    query_region: np.ndarray | None = None  # bool [H, W]: the query's region to replace
    reference_region: np.ndarray | None = None  # bool [H, W]: the reference's region to take


@dataclass(frozen=True)
class Step:
    stage: int  # 1 or 2
    iteration: int  # 1-based, across both stages
    total: int
    losses: dict[str, float]
    images: Callable[[], np.ndarray]  # -> uint8 [K, S, S, 3], the variations now


@dataclass
class ImagineResult:
    images: np.ndarray  # uint8 [K, S, S, 3]
    target_class: int  # y*
    class_name: str
    predicted: np.ndarray  # int [K]: the classifier's class for each variation
    seeds: tuple[int, ...]  # variation k started from seed + k


# Called after every iteration; raising stops the run within that iteration (cancel, deadline).
StepCallback = Callable[[Step], None]


@dataclass
class _Match:
    """One R_dm term: the target's channel statistics on some layers; `region` masks the
    synthesised images before the classifier (counterfactual edits)."""

    layers: tuple[str, ...]
    stats: dict[str, tuple[torch.Tensor, torch.Tensor]]  # layer -> (mean [C], std [C])
    region: torch.Tensor | None = None  # [1, 1, S, S]


class ImaginePipeline:
    def __init__(self, classifier: torch.nn.Module, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.classifier = classifier.to(self.device).eval().requires_grad_(False)
        self.image_size = classifier.image_size
        self.class_names = tuple(classifier.class_names) or tuple(str(i) for i in range(classifier.num_classes))
        self.layer_names = tuple(classifier.spatial_layers)
        self.default_layers = tuple(classifier.match_layers)
        self.shallow_layers = self.default_layers[:-1]  # paper: conv1_1, conv2_3, conv3_4
        self.deep_layers = self.default_layers[-1:]  # paper: conv4_6
        self.gradcam_layer = classifier.gradcam_layer

    @classmethod
    def from_dir(cls, models: str | Path, classifier: str | None = None, device: str = "cpu") -> "ImaginePipeline":
        """The bundle's classifier (models/classifier), or a classifier spec such as
        'torchvision-resnet50:PATH' (see `semgen.checkpoints.load_classifier`)."""
        return cls(load_classifier(classifier or Path(models) / "classifier", device), device)

    def default_schedule(self, controls: Controls | None = None) -> Schedule:
        """Starting from noise needs a strong smoothness prior; starting from an image (style,
        counterfactual) keeps that image's detail with a smaller step and a weaker TV."""
        c = controls or Controls()
        if c.style_content is not None or c.counterfactual_query is not None:
            return replace(Schedule(), lr=0.01, tv=0.1)
        return Schedule()

    # 1. check inputs ---------------------------------------------------------------------------

    def check(self, reference: np.ndarray, controls: Controls | None = None, num_variations: int = 1) -> None:
        """Raise ValueError('<field>: <reason>') for anything the pipeline cannot run."""
        c = controls or Controls()
        _check_image(reference, "reference")
        if num_variations < 1:
            raise ValueError(f"num_variations: must be at least 1, got {num_variations}")
        for name in ("layers", "shape_layers"):
            layers = getattr(c, name)
            if layers is not None:
                if not layers:
                    raise ValueError(f"{name}: give at least one layer (or none at all for the default)")
                unknown = [l for l in layers if l not in self.layer_names]
                if unknown:
                    raise ValueError(f"{name}: unknown layer(s) {unknown}; this classifier has {list(self.layer_names)}")
        modes = [n for n in ("shape_image", "style_content", "counterfactual_query") if getattr(c, n) is not None]
        if len(modes) > 1:
            raise ValueError(f"{modes[1]}: cannot be combined with {modes[0]} (shape, style and counterfactual "
                             "are separate controls)")
        if c.shape_layers is not None and c.shape_image is None:
            raise ValueError("shape_layers: given without shape_image")
        if c.position is not None:
            p = c.position
            for name, value in (("x", p.x), ("y", p.y)):
                if not 0.0 <= value <= 1.0:
                    raise ValueError(f"position: {name}={value} is outside the image (fractions of the side, 0..1)")
            if not 0.0 < p.sigma <= 1.0:
                raise ValueError(f"position: sigma={p.sigma} must be in (0, 1]")
        for name in ("shape_image", "style_content", "counterfactual_query"):
            if getattr(c, name) is not None:
                _check_image(getattr(c, name), name)
        regions = (("query_region", c.query_region, c.counterfactual_query), ("reference_region", c.reference_region, reference))
        for name, region, image in regions:
            if (region is None) != (c.counterfactual_query is None):
                raise ValueError(f"{name}: counterfactual edits need counterfactual_query, query_region and "
                                 "reference_region together")
            if region is not None:
                if region.ndim != 2 or region.shape != image.shape[:2]:
                    raise ValueError(f"{name}: shape {region.shape} does not match its image {image.shape[:2]}")
                if not region.any():
                    raise ValueError(f"{name}: the region is empty")

    # 2.-5. prepare, optimise, return ------------------------------------------------------------

    def run(self, reference: np.ndarray, num_variations: int, seed: int, controls: Controls | None = None,
            schedule: Schedule | None = None, on_step: StepCallback | None = None) -> ImagineResult:
        c = controls or Controls()
        sch = schedule or self.default_schedule(c)
        self.check(reference, c, num_variations)
        k = num_variations

        # 2. prepare: the targets (computed once) and seeded starting images
        x0 = self._tensor(reference)
        with torch.no_grad():
            class_source = self._tensor(c.style_content) if c.style_content is not None else x0
            target_class = int(self.classifier(class_source).argmax(1))
        matches = self._matches(x0, c)
        blob = gaussian_blob(c.position, self.image_size, self.device) if c.position is not None else None
        seeds = tuple(int(seed) + i for i in range(k))
        x = self._start(seeds, c, sch).requires_grad_(True)
        y = torch.full((k,), target_class, device=self.device)
        critic = seeded_init(PatchDiscriminator(sch.critic_channels), seed).to(self.device) if sch.stage2 else None
        bn_stats = _BatchNormStats(self.classifier) if sch.bn else None
        opt = torch.optim.Adam([x], lr=sch.lr, betas=(0.5, 0.9))
        opt_d = torch.optim.Adam(critic.parameters(), lr=sch.d_lr, betas=(0.5, 0.9)) if critic else None
        jitter_gen = torch.Generator().manual_seed(int(seed))
        query = self._tensor(c.counterfactual_query) if c.counterfactual_query is not None else None
        keep = 1 - matches[0].region if query is not None else None  # outside the query's region
        warmup = min(sch.critic_warmup, sch.stage2 // 4)  # a short stage 2 still gets the critic's guidance

        # 3. optimise
        try:
            for it in range(sch.total):
                stage = 1 if it < sch.stage1 else 2
                # one cosine decay over both stages (to 5%): a restart at stage 2 costs more than the critic gains
                for group in opt.param_groups:
                    group["lr"] = sch.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * it / sch.total)))
                losses = {}
                if stage == 2:
                    for j in range(sch.critic_steps):
                        step = (it - sch.stage1) * sch.critic_steps + j
                        losses["critic"] = critic_step(critic, opt_d, x0, x.detach(), sch, step, jitter_gen)
                guided = stage == 2 and it - sch.stage1 >= warmup  # the critic learns x̂ before it guides it
                shifted = _roll(x, sch.jitter, jitter_gen)
                loss = self._image_loss(shifted, y, matches, sch, losses, blob, bn_stats, critic if guided else None, jitter_gen)
                if query is not None:
                    l1 = ((x - query).abs() * keep).mean()
                    losses["counterfactual"] = l1.item()
                    loss = loss + sch.counterfactual * l1
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    x.clamp_(-1, 1)
                if on_step is not None:
                    on_step(Step(stage, it + 1, sch.total, losses, lambda: to_uint8(x)))
        finally:
            if bn_stats is not None:
                bn_stats.remove()

        # 4. postprocess
        images = to_uint8(x)
        with torch.no_grad():
            predicted = self.classifier(to_tensor(images).to(self.device)).argmax(1).cpu().numpy()
        return ImagineResult(images, target_class, self.class_names[target_class], predicted, seeds)

    def _image_loss(self, x, y, matches, sch: Schedule, losses: dict, blob, bn_stats, critic, gen: torch.Generator):
        """Eq. 9 (+ eq. 10 with a blob, + eq. 3 for the DeepInversion baseline) for a batch x."""
        feats = self.classifier.features(x)
        logits = feats["fc8"]
        ce = F.cross_entropy(logits, y)
        tv = _total_variation(x)
        l2 = x.flatten(1).norm(dim=1).pow(2).mean()
        loss = ce + sch.tv * tv + sch.l2 * l2
        losses.update(ce=ce.item(), tv=tv.item())
        if matches and sch.dm:  # DeepInversion (dm = 0) skips the reference's statistics altogether
            dm = sum(_stats_distance(feats if m.region is None else self.classifier.features(x * m.region), m)
                     for m in matches)
            loss = loss + sch.dm * dm
            losses["dm"] = dm.item()
        if bn_stats is not None:
            bn = bn_stats.distance()
            loss = loss + sch.bn * bn
            losses["bn"] = bn.item()
        if blob is not None:
            cam = _grad_cam(logits, feats[self.gradcam_layer], y)
            target = F.interpolate(blob, size=cam.shape[-2:], mode="bilinear", align_corners=False)
            loc = (cam - target).flatten(1).norm(dim=1).mean()
            loss = loss + sch.loc * loc
            losses["loc"] = loc.item()
        if critic is not None:  # stage 2, once the critic has warmed up
            pc = -critic(_augment(x, sch.critic_augment, gen)).mean()
            loss = loss + sch.pc * pc
            losses["pc"] = pc.item()
        losses["total"] = loss.item()
        return loss

    def _tensor(self, image: np.ndarray) -> torch.Tensor:
        return to_tensor(square_resize(image, self.image_size)[None]).to(self.device)

    def _region(self, region: np.ndarray) -> torch.Tensor:
        square = square_resize(region.astype(np.uint8)[..., None].repeat(3, 2) * 255, self.image_size)
        return torch.tensor(square[..., 0] > 127, dtype=torch.float32, device=self.device)[None, None]

    @torch.no_grad()
    def _matches(self, x0: torch.Tensor, c: Controls) -> list[_Match]:
        """The R_dm terms of each mode (paper §3.2, §4.3-4.5), with the targets' statistics."""
        if c.counterfactual_query is not None:
            layers = c.layers or self.default_layers
            ref = x0 * self._region(c.reference_region)
            return [_Match(layers, _stats(self.classifier.features(ref), layers), self._region(c.query_region))]
        if c.style_content is not None:
            layers = c.layers or self.shallow_layers
            return [_Match(layers, _stats(self.classifier.features(x0), layers))]
        if c.shape_image is not None:
            ref_layers, shape_layers = c.layers or self.shallow_layers, c.shape_layers or self.deep_layers
            shape_feats = self.classifier.features(self._tensor(c.shape_image))
            return [_Match(ref_layers, _stats(self.classifier.features(x0), ref_layers)),
                    _Match(shape_layers, _stats(shape_feats, shape_layers))]
        layers = c.layers or self.default_layers
        return [_Match(layers, _stats(self.classifier.features(x0), layers))]

    def _start(self, seeds: tuple[int, ...], c: Controls, sch: Schedule) -> torch.Tensor:
        """Each variation's starting image from its own seed: noise, or the content/query image plus noise."""
        side = max(self.image_size // 8, 1)  # smooth noise: the optimisation adds the detail
        noise = torch.stack([torch.randn(3, side, side, generator=torch.Generator().manual_seed(s)) for s in seeds])
        noise = F.interpolate(noise, size=self.image_size, mode="bicubic", align_corners=False).to(self.device)
        base = c.style_content if c.style_content is not None else c.counterfactual_query
        if base is None:
            return (0.5 * noise).clamp(-1, 1)
        return (self._tensor(base) + sch.init_noise * noise).clamp(-1, 1)

def critic_step(critic, opt_d, x0, fake, sch: Schedule, step: int, gen: torch.Generator) -> float:
    """One WGAN-GP step: the critic learns to score the reference's patches above x̂'s. The
    gradient penalty (a double backward, the costliest part) runs every `gp_every` steps with
    its weight scaled to match (lazy regularisation, as StyleGAN2 does for R1)."""
    critic.requires_grad_(True)
    real = x0.expand(len(fake), -1, -1, -1)
    if sch.critic_augment:
        real, fake = _augment(real, sch.critic_augment, gen), _augment(fake, sch.critic_augment, gen)
    else:
        real = _roll(real, 4, gen)  # shifted copies: patches at all offsets
    scores = critic(torch.cat([real, fake]))
    wasserstein = scores[: len(fake)].mean() - scores[len(fake):].mean()
    loss = -wasserstein
    if step % sch.gp_every == 0:
        eps = torch.rand(len(fake), 1, 1, 1, generator=gen).to(x0.device)
        mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
        grad, = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
        loss = loss + sch.gp * sch.gp_every * (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()
    opt_d.zero_grad(set_to_none=True)
    loss.backward()
    opt_d.step()
    critic.requires_grad_(False)
    return wasserstein.item()


def gaussian_blob(p: Position, size: int, device) -> torch.Tensor:
    """a0: a Gaussian bump with peak 1 at (x, y) [1, 1, S, S]."""
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")
    blob = torch.exp(-((gx - p.x) ** 2 + (gy - p.y) ** 2) / (2 * p.sigma ** 2))
    return blob[None, None].to(device)


def blob_centre(cam: np.ndarray) -> tuple[float, float]:
    """Centre of mass (x, y) of a non-negative map [h, w], as fractions of its sides."""
    h, w = cam.shape
    total = cam.sum() + 1e-8
    ys, xs = (np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w
    return float((cam.sum(0) * xs).sum() / total), float((cam.sum(1) * ys).sum() / total)


def attribution_map(pipe: ImaginePipeline, images: np.ndarray, target_class: int) -> np.ndarray:
    """Grad-CAM of `target_class` for uint8 images [N, S, S, 3] -> [N, h, w] in [0, 1]."""
    x = to_tensor(images).to(pipe.device).requires_grad_(True)  # the classifier's weights are frozen
    with torch.enable_grad():
        feats = pipe.classifier.features(x)
        act = feats[pipe.gradcam_layer]
        y = torch.full((len(x),), target_class, device=pipe.device)
        return _grad_cam(feats["fc8"], act, y).detach().squeeze(1).cpu().numpy()


def _grad_cam(logits: torch.Tensor, act: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """ReLU(Σ_c mean(∂score/∂A_c) · A_c), normalised to a peak of 1 -> [B, 1, h, w].
    The graph is kept so that a loss on the map reaches the pixels (position control)."""
    score = logits.gather(1, y[:, None]).sum()
    grad, = torch.autograd.grad(score, act, create_graph=True)
    cam = F.relu((grad.mean((2, 3), keepdim=True) * act).sum(1, keepdim=True))
    return cam / (cam.flatten(1).amax(1).view(-1, 1, 1, 1) + 1e-8)


def _stats(feats: dict, layers) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Channel mean and std per layer, of one image [1, C, h, w] -> ([C], [C])."""
    return {layer: tuple(s[0] for s in _channel_stats(feats[layer])) for layer in layers}


def _channel_stats(f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, C, h, w] -> mean [B, C], std [B, C]."""
    flat = f.flatten(2)
    return flat.mean(2), (flat.var(2, unbiased=False) + 1e-8).sqrt()


def _stats_distance(feats: dict, m: _Match) -> torch.Tensor:
    """Eq. 5: Σ_l ‖μ_l(x̂) − μ_l(x0)‖₂ + ‖σ_l(x̂) − σ_l(x0)‖₂, averaged over the batch."""
    total = 0.0
    for layer in m.layers:
        mean, std = _channel_stats(feats[layer])
        ref_mean, ref_std = m.stats[layer]
        total = total + (mean - ref_mean).norm(dim=1) + (std - ref_std).norm(dim=1)
    return total.mean()


def _total_variation(x: torch.Tensor) -> torch.Tensor:
    """L2 norms of neighbour differences per image (DeepInversion's TV), batch mean."""
    dx = (x[..., :, 1:] - x[..., :, :-1]).flatten(1).norm(dim=1)
    dy = (x[..., 1:, :] - x[..., :-1, :]).flatten(1).norm(dim=1)
    return (dx + dy).mean()


def _roll(x: torch.Tensor, pixels: int, gen: torch.Generator) -> torch.Tensor:
    """Shift the whole batch by a random offset in [-pixels, pixels] (wrapping): no fixed pixel grid."""
    if pixels <= 0:
        return x
    dy, dx = (torch.randint(-pixels, pixels + 1, (2,), generator=gen)).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def _augment(x: torch.Tensor, pixels: int, gen: torch.Generator) -> torch.Tensor:
    """Each image flipped left-right at random and shifted by up to `pixels` (reflected borders,
    no wrap seams): the critic learns the reference's patch statistics, not one fixed image."""
    if pixels <= 0:
        return x
    n, size = len(x), x.shape[-1]
    flips = torch.rand(n, generator=gen) < 0.5
    offsets = torch.randint(0, 2 * pixels + 1, (n, 2), generator=gen).tolist()
    padded = F.pad(torch.where(flips.to(x.device)[:, None, None, None], x.flip(3), x), [pixels] * 4, mode="reflect")
    return torch.stack([padded[i, :, dy:dy + size, dx:dx + size] for i, (dy, dx) in enumerate(offsets)])


class _BatchNormStats:
    """DeepInversion's eq. 3: distance between the batch statistics entering each BatchNorm2d and
    the running statistics it learnt from the training set."""

    def __init__(self, classifier: torch.nn.Module):
        self.terms: list[torch.Tensor] = []
        self.handles = [m.register_forward_hook(self._hook) for m in classifier.modules()
                        if isinstance(m, torch.nn.BatchNorm2d)]
        if not self.handles:
            raise ValueError("bn: this classifier has no batch-norm layers to take statistics from")

    def _hook(self, module, inputs, output):
        x = inputs[0]
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
        self.terms.append((mean - module.running_mean).norm() + (var - module.running_var).norm())

    def distance(self) -> torch.Tensor:
        total, self.terms = sum(self.terms), []
        return total

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _check_image(image, field: str) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{field}: expected a uint8 RGB image [H, W, 3]")
    if min(image.shape[:2]) < 8:
        raise ValueError(f"{field}: {image.shape[1]}×{image.shape[0]} is too small (at least 8×8)")
