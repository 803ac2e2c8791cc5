"""Linear semantics at inference time (Xu & Zheng): sample, segment, fit few-shot heads, SCS, SIE.

Latents are w+ codes [N, num_ws, w_dim] (a w [N, w_dim] is broadcast to every layer). Images are
made with the generator's constant layer noise, so a latent always gives the same image.

A *predictor* turns an image and its generator features into class logits: a semantic head
(LSE/NSE, reads the features) or the segmenter (reads the pixels). SCS and SIE steer the latent
with the cross-entropy between a predictor's logits and a target mask.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from semgen.checkpoints import load_checkpoint, save_checkpoint
from semgen.data.loaders import to_uint8
from semgen.networks.heads import HEAD_KINDS, SemanticHead
from semgen.pipelines.forward import Prepared, Rows, chunks, concat_rows, split_rows

SEGMENTER = "segmenter"
LATENT_SPACES = ("w", "w+")
_ALONE = itertools.count()  # keys for requests that must not be batched with others

# Called after every optimisation step with (iteration, loss, current images [N, 3, S, S]).
# It may raise to stop the job (cancel, deadline): the pipeline stops within one iteration.
StepCallback = Callable[[int, float, torch.Tensor], None]


@dataclass
class Samples:
    images: np.ndarray  # uint8 [N, S, S, 3]
    latents: np.ndarray  # float32 [N, num_ws, w_dim]
    masks: np.ndarray | None  # uint8 [N, S, S] class indices, when a predictor was asked for
    scores: np.ndarray | None = None  # SCS: agreement with the target per sample (pixel share)


@dataclass
class FewShotSchedule:
    """Paper App. D: batch = N, 2000 iterations for 1 and 4 shots, 1000 for 8, 500 for 16.

    The paper re-draws StyleGAN's layer noise every iteration; by default we keep the constant
    noise the served images are made with (the masks were drawn on those very images), which
    also lets the features be computed once: ~10× faster on a CPU."""

    lr: float = 1e-3
    resample_noise: bool = False  # True: the paper's way; the noise comes from torch's global RNG (not seeded)

    @staticmethod
    def iterations(shots: int) -> int:
        return 2000 if shots <= 4 else 1000 if shots <= 8 else 500


class SemanticsPipeline:
    """The layer-wise generator, the segmenter and named semantic heads."""

    def __init__(self, generator, segmenter=None, heads: dict[str, SemanticHead] | None = None, device: str = "cpu",
                 onnx=None):
        self.device = torch.device(device)
        # `onnx`: an OnnxModels with mapping.onnx and synthesis_<head>.onnx; the graphs then run the
        # forward passes of `sample` for the heads in `onnx_heads` (those exported from these weights),
        # and `onnx_synthesis` for samples without masks (its image output does not depend on the head)
        self.onnx = onnx
        self.onnx_heads: set[str] = set()
        self.onnx_synthesis: str | None = None
        self.generator = generator.to(self.device).eval().requires_grad_(False)
        self.segmenter = None if segmenter is None else segmenter.to(self.device).eval().requires_grad_(False)
        self.heads: dict[str, SemanticHead] = {}
        for name, head in (heads or {}).items():
            self.add_head(name, head)
        self.image_size = generator.image_size
        self.latent_shape = (generator.num_ws, generator.w_dim)

    @classmethod
    def from_dir(cls, models_dir: str | Path, device: str = "cpu", extra_heads_dir: str | Path | None = None,
                 onnx=None):
        """<models>/stylegan, <models>/segmenter (optional), every head in <models>/heads/<name>/
        and in `extra_heads_dir` (heads fitted by users); `onnx` as in the constructor, exported
        from this bundle."""
        models_dir = Path(models_dir)
        segmenter = load_checkpoint(models_dir / "segmenter") if (models_dir / "segmenter").exists() else None
        pipe = cls(load_checkpoint(models_dir / "stylegan"), segmenter, device=device, onnx=onnx)
        for path in sorted((models_dir / "heads").glob("*/config.json")):
            pipe.add_head(path.parent.name, load_checkpoint(path.parent))
        if onnx is not None:
            pipe.onnx_heads = {name for name in pipe.heads if onnx.has(f"synthesis_{name}")}
            pipe.onnx_synthesis = f"synthesis_{min(pipe.onnx_heads)}" if pipe.onnx_heads else None
        for path in sorted(Path(extra_heads_dir).glob("*/config.json")) if extra_heads_dir else []:
            pipe.add_head(path.parent.name, load_checkpoint(path.parent))
        return pipe

    # ---- predictors ---------------------------------------------------------------------

    def add_head(self, name: str, head: SemanticHead) -> None:
        if tuple(head.layer_channels) != tuple(self.generator.layer_channels()):
            raise ValueError(f"head {name!r}: made for layers {head.layer_channels}, "
                             f"the generator has {tuple(self.generator.layer_channels())}")
        self.heads[name] = head.to(self.device).eval().requires_grad_(False)
        self.onnx_heads.discard(name)  # a new head of that name is not the exported one

    def predictor_classes(self, predictor: str) -> tuple[str, ...]:
        model = self._predictor_model(predictor)
        return tuple(model.class_names) or tuple(str(i) for i in range(model.num_classes))

    def _predictor_model(self, predictor: str):
        if predictor == SEGMENTER and self.segmenter is not None:
            return self.segmenter
        if predictor in self.heads:
            return self.heads[predictor]
        known = sorted(self.heads) + ([SEGMENTER] if self.segmenter is not None else [])
        raise KeyError(f"head: no head named {predictor!r}; known: {', '.join(known)}")

    def predict(self, predictor: str, images: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        """Class logits [N, C, S, S] of `predictor` for images and their generator features."""
        model = self._predictor_model(predictor)
        return model(images) if predictor == SEGMENTER else model(features, self.image_size)

    # ---- latents and images -------------------------------------------------------------

    def latents_from_seeds(self, seeds, psi: float = 1.0) -> torch.Tensor:
        """One w+ [N, num_ws, w_dim] per seed (z ~ N(0, I) from the seed, mapped, truncated)."""
        z = torch.stack([torch.randn(self.generator.z_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds])
        with torch.no_grad():
            if self.onnx is not None and self.onnx.has("mapping"):
                w = torch.from_numpy(self.onnx.run("mapping", {"z": z.numpy()}, batched=False)["w"]).to(self.device)
                w = self.generator.w_avg.lerp(w, psi) if psi != 1.0 else w
            else:
                w = self.generator.mapping_w(z.to(self.device), psi)
        return self.generator.broadcast(w).contiguous()

    def check_latents(self, latents, field: str = "latents") -> torch.Tensor:
        """float [N, num_ws, w_dim] or [N, w_dim] (broadcast) -> w+ tensor; ValueError naming `field`.
        A batch dimension is required: [num_ws, w_dim] alone reads as num_ws separate w's."""
        x = torch.as_tensor(np.asarray(latents, np.float32), device=self.device)
        num_ws, w_dim = self.latent_shape
        if x.numel() == 0:
            raise ValueError(f"{field}: empty; give at least one latent")
        if x.dim() == 2 and x.shape[1] == w_dim:
            x = self.generator.broadcast(x).contiguous()
        if x.dim() != 3 or tuple(x.shape[1:]) != (num_ws, w_dim):
            raise ValueError(f"{field}: shape must be [N, {num_ws}, {w_dim}] (w+) or [N, {w_dim}] (w), got {list(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{field}: contains NaN or infinity")
        return x

    def synthesize(self, ws: torch.Tensor):
        """w+ -> (images [N, 3, S, S], per-layer features)."""
        return self.generator.synthesis(ws, noise_mode="const", return_features=True)

    def check_mask(self, mask, predictor: str, field: str = "mask") -> torch.Tensor:
        """uint8/int [S, S] class indices -> int64 tensor; ValueError for the wrong size or an unknown class."""
        m = np.asarray(mask)
        size = self.image_size
        if m.shape != (size, size):
            raise ValueError(f"{field}: must be {size}×{size} class indices, got shape {list(m.shape)}")
        n = len(self.predictor_classes(predictor))
        if not np.issubdtype(m.dtype, np.integer):
            raise ValueError(f"{field}: must hold integer class indices, got {m.dtype}")
        if m.min() < 0 or m.max() >= n:
            bad = int(m.min()) if m.min() < 0 else int(m.max())
            raise ValueError(f"{field}: class index {bad} is not in {predictor!r}'s {n} classes (0..{n - 1})")
        return torch.as_tensor(m.astype(np.int64), device=self.device)

    # ---- forward-only operations --------------------------------------------------------

    def sample(self, seeds=None, latents=None, psi: float = 1.0, predictor: str | None = None,
               batch_size: int = 32) -> Samples:
        """Images (and masks by `predictor`) for seeds or given latents, `batch_size` at a time."""
        prepared = self._prepare_sample(seeds, latents, psi, predictor)
        outputs = [self.run(prepared.key, rows) for rows in split_rows(prepared.rows, chunks(len(prepared), batch_size))]
        return prepared.finish(concat_rows(outputs))

    # ---- prepare / run: the batching interface (semgen.pipelines.forward) ------------------

    def prepare(self, op: str, args: dict) -> Prepared:
        """`op` is sample; `args` are `sample`'s keyword arguments (but batch_size)."""
        if op != "sample":
            raise ValueError(f"op: unknown operation {op!r}; expected sample")
        return self._prepare_sample(**args)

    @torch.no_grad()
    def run(self, key: str, rows: Rows) -> Rows:
        """Synthesis (+ the predictor's masks) over a batch of w+ rows; key = "synthesis:<predictor>"."""
        predictor = key.split(":")[1] or None
        graph = self._onnx_graph(predictor)
        if graph is not None:
            out = self.onnx.run(graph, {"ws": rows["ws"]})
            result = {"image": out["image"]}
            if predictor is not None:
                result["mask"] = out["logits"].argmax(1).astype(np.uint8)
            return result
        images, feats = self.synthesize(torch.from_numpy(rows["ws"]).to(self.device))
        result = {"image": images.cpu().numpy()}
        if predictor is not None:
            result["mask"] = self.predict(predictor, images, feats).argmax(1).to(torch.uint8).cpu().numpy()
        return result

    def _prepare_sample(self, seeds=None, latents=None, psi: float = 1.0, predictor: str | None = None) -> Prepared:
        # 1. check inputs
        if (seeds is None) == (latents is None):
            raise ValueError("seeds: give either seeds or latents")
        if seeds is not None and len(seeds) == 0:
            raise ValueError("seeds: empty; give at least one seed")
        if predictor is not None:
            self._predictor_model(predictor)
        # 2. latents, one row per image
        ws = self.latents_from_seeds(seeds, psi) if latents is None else self.check_latents(latents)
        ws = ws.cpu().numpy().astype(np.float32)

        # 3. (the forward pass is `run`) 4. postprocess
        def finish(out: Rows) -> Samples:
            return Samples(images=to_uint8(torch.from_numpy(out["image"])), latents=ws, masks=out.get("mask"))

        key = f"synthesis:{predictor or ''}"
        if self.onnx is not None and self._onnx_graph(predictor) is None:
            # eager torch is not batch-size invariant: such a request never shares a batch
            key += f":alone-{next(_ALONE)}"
        return Prepared(key, {"ws": ws}, finish)

    def _onnx_graph(self, predictor: str | None) -> str | None:
        """The exported synthesis graph for `predictor`, if its head is the one that was exported."""
        if self.onnx is None:
            return None
        if predictor is None:
            return self.onnx_synthesis
        return f"synthesis_{predictor}" if predictor in self.onnx_heads else None

    def segment(self, latents, predictor: str) -> np.ndarray:
        """Masks uint8 [N, S, S] of the images the latents make."""
        return self.sample(latents=latents, predictor=predictor).masks

    # ---- few-shot heads -----------------------------------------------------------------

    def fit_head(self, latents, masks, class_names, seed: int = 0, schedule: FewShotSchedule | None = None,
                 iterations: int | None = None, on_step: StepCallback | None = None, kind: str = "lse") -> SemanticHead:
        """A few-shot head (LSE by default) from 1–16 latents and their masks (uint8 [N, S, S],
        indices into class_names)."""
        # 1. check inputs
        ws = self.check_latents(latents)
        class_names = tuple(class_names)
        if len(class_names) < 2:
            raise ValueError("class_names: give at least two classes")
        masks = np.asarray(masks)
        if masks.shape != (len(ws), self.image_size, self.image_size):
            raise ValueError(f"masks: need one {self.image_size}×{self.image_size} mask per latent "
                             f"({len(ws)}), got shape {list(masks.shape)}")
        if not np.issubdtype(masks.dtype, np.integer):
            raise ValueError(f"masks: must hold integer class indices, got {masks.dtype}")
        if masks.min() < 0 or masks.max() >= len(class_names):
            bad = int(masks.min()) if masks.min() < 0 else int(masks.max())
            raise ValueError(f"masks: class index {bad} is not in 0..{len(class_names) - 1} (class_names)")
        schedule = schedule or FewShotSchedule()
        steps = schedule.iterations(len(ws)) if iterations is None else iterations
        target = torch.as_tensor(masks.astype(np.int64), device=self.device)
        # 2. head and optimiser; the learning rate drops ×10 after 40% (App. D: epoch 20 of 50)
        if kind not in HEAD_KINDS:
            raise ValueError(f"kind: must be one of {sorted(HEAD_KINDS)}, got {kind!r}")
        head = HEAD_KINDS[kind](self.generator.layer_channels(), len(class_names), class_names)
        head = seeded_init(head, seed).to(self.device)
        optim = torch.optim.Adam(head.parameters(), lr=schedule.lr)
        features = None
        for it in range(steps):
            if it == int(0.4 * steps):
                for group in optim.param_groups:
                    group["lr"] = schedule.lr / 10
            if features is None or schedule.resample_noise:
                with torch.no_grad():
                    mode = "random" if schedule.resample_noise else "const"
                    images, features = self.generator.synthesis(ws, noise_mode=mode, return_features=True)
            loss = F.cross_entropy(head(features, self.image_size), target)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            if on_step is not None:
                on_step(it + 1, loss.item(), images)
        return head.eval().requires_grad_(False)

    def save_head(self, name: str, head: SemanticHead, folder: str | Path, training: dict | None = None) -> Path:
        path = Path(folder) / name
        save_checkpoint(path, head, head.config, training=training)
        self.add_head(name, head)
        return path

    # ---- optimisation: SCS and SIE ------------------------------------------------------

    def _optimise(self, ws0: torch.Tensor, loss_fn, space: str, iterations: int, lr: float,
                  on_step: StepCallback | None) -> torch.Tensor:
        """Adam on the latent (one w per sample, or w+) from ws0; returns the final w+.

        loss_fn(images, features) gives one loss per sample [B]; they are summed, so each
        latent moves exactly as it would alone (the batch only shares the forward pass).
        Regularisers (App. G/H, moved from z to w): 1e-3 ‖w − w0‖² and 1e-3 ‖w − w̄‖² (w̄: the
        generator's average w, the centre of its latent distribution), both averaged over the
        num_ws layers so that w and w+ are held alike."""
        if space not in LATENT_SPACES:
            raise ValueError(f"space: must be one of {LATENT_SPACES}, got {space!r}")
        if space == "w" and not torch.equal(ws0, ws0[:, :1].expand_as(ws0)):
            raise ValueError("space: 'w' needs a latent that is the same at every layer; use 'w+'")
        param = (ws0[:, 0].clone() if space == "w" else ws0.clone()).requires_grad_(True)
        to_ws = (lambda p: self.generator.broadcast(p)) if space == "w" else (lambda p: p)
        optim = torch.optim.Adam([param], lr=lr)
        w_avg = self.generator.w_avg
        for it in range(iterations):
            ws = to_ws(param)
            images, features = self.synthesize(ws)
            # App. G/H: the task loss + 1e-3 ‖w − w0‖² (stay near the start) + 1e-3 ‖w − w̄‖² (stay likely)
            reg = 1e-3 * ((ws - ws0).pow(2).sum((1, 2)) + (ws - w_avg).pow(2).sum((1, 2))) / ws.shape[1]
            loss = loss_fn(images, features) + reg  # [B]
            optim.zero_grad(set_to_none=True)
            loss.sum().backward()
            optim.step()
            if on_step is not None:
                on_step(it + 1, loss.mean().item(), images.detach())
        return to_ws(param.detach()).contiguous()

    def _semantic_loss(self, predictor: str, target: torch.Tensor):
        return lambda images, features: F.cross_entropy(
            self.predict(predictor, images, features), target, reduction="none").mean((1, 2))

    def sample_conditional(self, target_mask, predictor: str, num_samples: int, seed: int, n_init: int = 100,
                           iterations: int = 50, lr: float = 0.01, space: str = "w+", psi: float = 1.0,
                           on_step: StepCallback | None = None) -> Samples:
        """SCS (App. H, Algorithm 3): per sample, the best of n_init random latents, then Adam on
        the latent with cross-entropy to the target mask. The paper's lr is Adam's default 1e-3;
        our default is 0.01 (SIE's), as 50 steps at 1e-3 barely move a w+ code of this generator."""
        # 1. check inputs
        target = self.check_mask(target_mask, predictor, "target_mask")
        if num_samples < 1 or n_init < 1 or iterations < 0:
            raise ValueError("num_samples: num_samples and n_init must be >= 1, iterations >= 0")
        # 2. candidates (sample j draws from its own group of n_init), 3. optimise, 4. result
        pool = self.candidate_pool(predictor, num_samples * n_init, seed, psi)
        return self.conditional_batch(target[None], predictor, num_samples, pool, iterations, lr, space, on_step)

    def conditional_batch(self, targets: torch.Tensor, predictor: str, per_target: int, pool: "CandidatePool",
                          iterations: int = 50, lr: float = 0.01, space: str = "w+",
                          on_step: StepCallback | None = None) -> Samples:
        """SCS for several checked targets [T, S, S] at once, `per_target` samples each (target-major)."""
        ws0 = torch.cat([pool.best(t, per_target)[0] for t in targets])
        goal = targets.repeat_interleave(per_target, 0)
        ws = self._optimise(ws0, self._semantic_loss(predictor, goal), space, iterations, lr, on_step)
        return self._result(ws, predictor, goal)

    def candidate_pool(self, predictor: str, n: int, seed: int, psi: float = 1.0, batch_size: int = 64) -> "CandidatePool":
        """n random latents (seeded) and their masks by `predictor`."""
        seeds = [(int(seed) * 1_000_003 + i) % 2**63 for i in range(n)]
        ws = self.latents_from_seeds(seeds, psi)
        masks = []
        with torch.no_grad():
            for chunk in ws.split(batch_size):
                images, feats = self.synthesize(chunk)
                masks.append(self.predict(predictor, images, feats).argmax(1))
        return CandidatePool(ws, torch.cat(masks))

    def edit(self, latent, target_mask, predictor: str, iterations: int = 50, lr: float = 0.01, space: str = "w+",
             on_step: StepCallback | None = None) -> Samples:
        """SIE (App. G, Algorithm 2): from an image's latent, Adam on the latent towards the edited
        mask. Several latents [B, ...] with masks [B, S, S] are edited together."""
        ws0 = self.check_latents(latent, "latent")
        masks = np.asarray(target_mask)
        masks = masks[None] if masks.ndim == 2 else masks
        if len(masks) != len(ws0):
            raise ValueError(f"target_mask: one mask per latent, got {len(masks)} for {len(ws0)}")
        target = torch.stack([self.check_mask(m, predictor, "target_mask") for m in masks])
        ws = self._optimise(ws0, self._semantic_loss(predictor, target), space, iterations, lr, on_step)
        return self._result(ws, predictor, target)

    def edit_colors(self, latent, colors: np.ndarray, region: np.ndarray, iterations: int = 50, lr: float = 0.01,
                    space: str = "w+", on_step: StepCallback | None = None) -> Samples:
        """The colour-space editing baseline (App. G): pixel MSE to colour strokes (uint8 [B, S, S, 3])
        inside `region` (bool [B, S, S]) + MSE to the original image outside it."""
        ws0 = self.check_latents(latent, "latent")
        b, size = len(ws0), self.image_size
        colors, region = np.asarray(colors, np.float32), np.asarray(region, np.float32)
        if colors.shape != (b, size, size, 3):
            raise ValueError(f"colors: must be [{b}, {size}, {size}, 3] RGB strokes, got {list(colors.shape)}")
        if region.shape != (b, size, size):
            raise ValueError(f"region: must be [{b}, {size}, {size}], got {list(region.shape)}")
        with torch.no_grad():
            original, _ = self.synthesize(ws0)
        strokes = torch.as_tensor(colors, device=self.device).permute(0, 3, 1, 2) / 127.5 - 1
        m = torch.as_tensor(region, device=self.device)[:, None]

        def loss_fn(images, _features):
            edit = (m * (images - strokes)).pow(2).sum((1, 2, 3)) / (3 * m.sum((1, 2, 3))).clamp(min=1)
            keep = ((1 - m) * (images - original)).pow(2).sum((1, 2, 3)) / (3 * (1 - m).sum((1, 2, 3))).clamp(min=1)
            return edit + keep

        ws = self._optimise(ws0, loss_fn, space, iterations, lr, on_step)
        return self._result(ws, None, None)

    @torch.no_grad()
    def _result(self, ws: torch.Tensor, predictor: str | None, target: torch.Tensor | None) -> Samples:
        images, feats = self.synthesize(ws)
        masks = self.predict(predictor, images, feats).argmax(1) if predictor else None
        scores = (masks == target).float().mean((1, 2)).cpu().numpy() if target is not None else None  # [B]
        return Samples(images=to_uint8(images), latents=ws.cpu().numpy().astype(np.float32),
                       masks=None if masks is None else masks.to(torch.uint8).cpu().numpy(), scores=scores)


@torch.no_grad()
def seeded_init(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Re-draw every parameter from its own generator (uniform ±1/√fan_in, PyTorch's default
    scale), so concurrent fits do not share the global random state."""
    gen = torch.Generator().manual_seed(int(seed))
    for layer in module.modules():
        weight = getattr(layer, "weight", None)
        if isinstance(weight, torch.nn.Parameter):
            bound = 1 / weight[0].numel() ** 0.5  # the layer's fan-in
            for p in (weight, getattr(layer, "bias", None)):
                if p is not None:
                    p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * bound)
    return module


@dataclass
class CandidatePool:
    """Random latents and their predicted masks, scored against targets (SCS step 1). The pool is
    split into equal groups; sample j takes the best latent of group j."""

    latents: torch.Tensor  # [M, num_ws, w_dim]
    masks: torch.Tensor  # [M, S, S]

    def best(self, target: torch.Tensor, num_samples: int):
        agreement = (self.masks == target).float().mean((1, 2))  # Algorithm 3: pixels that match
        group = len(agreement) // num_samples
        if group < 1:
            raise ValueError(f"n_init: the candidate pool has {len(agreement)} latents for {num_samples} samples")
        idx = agreement[: group * num_samples].view(num_samples, group).argmax(1) + torch.arange(num_samples, device=agreement.device) * group
        return self.latents[idx], agreement[idx]
