"""HiGAN (Yang et al.): attribute boundaries in the layer-wise latent space, re-scoring (which layers
control which attribute) and layer-wise editing.

Scores come from off-the-shelf predictors: the attribute predictor (layout, objects, attribute and
colour-scheme levels, in the renderer's units) and the scene classifier (one probability per
category). A boundary is the unit normal of a linear SVM in w space that separates latents whose
images score high on one score from those that score low (`semgen train boundaries`); a transfer
boundary `<a>_to_<b>` separates latents classified as category a from those classified as b.
An attribute boundary can instead hold a gradient direction (`method` "gradient"): the predictor's
mean gradient on the boundary's default layers with the other attributes' gradients projected out.

Strengths are in units of `Boundary.scale`, the spread (std) of sampled latents along the normal:
strength 1 moves w by one standard deviation along the boundary. An edit adds
strength · scale · normal to the w of the chosen layers of w+ only (paper §3.2); conditional
editing first projects the other named boundaries out of the direction (InterFaceGAN's trick).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from semgen.bundle import MissingPart, no_directions
from semgen.checkpoints import load_checkpoint
from semgen.data.loaders import to_uint8
from semgen.pipelines.semantics import SemanticsPipeline

LEVELS = ("layout", "objects", "attribute", "color", "category")
RESCORING_STEP = 2.0  # λ of eq. 1, in units of Boundary.scale
TRANSFER_SEP = "_to_"  # transfer boundaries are named <source>_to_<target>
# The category transfers that get a boundary between the two categories' latents (paper §3.3):
# the one-against-all category boundaries do not carry one category into another.
TRANSFERS = (("field", "forest"), ("beach", "lake"), ("city_street", "night_city"), ("desert", "snowy_mountains"))


@dataclass(frozen=True)
class Boundary:
    name: str
    level: str  # one of LEVELS
    normal: np.ndarray  # float32 [w_dim], unit length; + = more of the score
    scale: float  # std of w·normal over the sampled latents
    val_acc: float  # the SVM's accuracy on its 30% validation split
    default_layers: tuple[int, ...]  # chosen from re-scoring (the layers that move the score most)
    method: str = "svm"  # how the normal was found: "svm" (HiGAN) or "gradient" (semgen train boundaries)


@dataclass(frozen=True)
class Edit:
    attribute: str
    strength: float  # in units of the boundary's scale
    layers: tuple[int, ...] | None = None  # indices into w+; None = the boundary's default layers


@dataclass
class Manipulation:
    images: np.ndarray  # uint8 [len(sweep), N, S, S, 3]
    latents: np.ndarray  # float32 [len(sweep), N, num_ws, w_dim]: the edited w+
    scores: dict[str, np.ndarray]  # score name -> [len(sweep), N]
    sweep: tuple[float, ...]  # the multiplier of every edit's strength, per row


def save_boundaries(folder: str | Path, boundaries: list[Boundary], training: dict | None = None) -> Path:
    """boundaries.safetensors (name -> normal) + boundaries.json (everything else)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({b.name: torch.from_numpy(np.asarray(b.normal, np.float32)) for b in boundaries},
              str(folder / "boundaries.safetensors"))
    meta = [{k: v for k, v in asdict(b).items() if k != "normal"} | {"space": "w"} for b in boundaries]
    (folder / "boundaries.json").write_text(json.dumps({"boundaries": meta, "training": training or {}}, indent=2))
    return folder


def load_boundaries(folder: str | Path) -> dict[str, Boundary]:
    folder = Path(folder)
    normals = load_file(str(folder / "boundaries.safetensors"))
    meta = json.loads((folder / "boundaries.json").read_text())["boundaries"]
    return {m["name"]: Boundary(m["name"], m["level"], normals[m["name"]].numpy(), float(m["scale"]),
                                float(m["val_acc"]), tuple(m["default_layers"]), m.get("method", "svm")) for m in meta}


class HiganPipeline:
    """`predictor` and `classifier` score the images (both optional: a bundle imported with its own directions has
    neither, and its edits come back without scores; re-scoring needs them)."""

    def __init__(self, generator, predictor=None, classifier=None, segmenter=None,
                 boundaries: dict[str, Boundary] | None = None, device: str = "cpu"):
        self.device = torch.device(device)
        self.gan = SemanticsPipeline(generator, segmenter, device=device)  # latents, synthesis, segmentation
        self.generator = self.gan.generator
        self.predictor, self.classifier = (None if m is None else m.to(self.device).eval().requires_grad_(False)
                                           for m in (predictor, classifier))
        if any(m is not None and m.image_size != generator.image_size for m in (predictor, classifier)):
            raise ValueError("the predictor, the classifier and the generator must share one image size")
        self.num_ws, self.w_dim = self.gan.latent_shape
        self.image_size = generator.image_size
        categories = () if classifier is None else (
            tuple(classifier.class_names) or tuple(f"class_{i}" for i in range(classifier.num_classes)))
        attributes = () if predictor is None else tuple(predictor.attribute_names)
        self.score_names = attributes + categories
        self.score_levels = (() if predictor is None else tuple(predictor.levels)) + ("category",) * len(categories)
        self.boundaries: dict[str, Boundary] = dict(boundaries or {})

    @classmethod
    def from_dir(cls, models: str | Path, device: str = "cpu") -> "HiganPipeline":
        """<models>/stylegan, and what of attributes, classifier, segmenter and boundaries it has."""
        models = Path(models)

        def optional(folder):
            return load_checkpoint(models / folder) if (models / folder).exists() else None

        boundaries = load_boundaries(models / "boundaries") if (models / "boundaries").exists() else {}
        return cls(load_checkpoint(models / "stylegan"), optional("attributes"), optional("classifier"),
                   optional("segmenter"), boundaries, device)

    # ---- scores ---------------------------------------------------------------------------

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> np.ndarray:
        """images [N, 3, S, S] in [-1, 1] -> scores [N, len(score_names)]: attributes, then category
        probabilities."""
        parts = ([] if self.predictor is None else [self.predictor(images)]) + (
            [] if self.classifier is None else [self.classifier(images).softmax(1)])
        return torch.cat(parts, 1).cpu().numpy() if parts else np.zeros((len(images), 0), np.float32)

    @torch.no_grad()
    def render(self, ws: torch.Tensor, batch_size: int = 250) -> tuple[torch.Tensor, np.ndarray]:
        """w+ [N, num_ws, w_dim] -> (images [N, 3, S, S], scores [N, len(score_names)])."""
        images = torch.cat([self.generator.synthesis(c, noise_mode="const") for c in ws.split(batch_size)])
        return images, np.concatenate([self.score(c) for c in images.split(batch_size)])

    # ---- directions and edits -------------------------------------------------------------

    def boundary(self, name: str) -> Boundary:
        if not self.boundaries:
            raise no_directions()
        if name not in self.boundaries:
            raise KeyError(f"attribute: no boundary named {name!r}; known: {', '.join(self.boundaries) or 'none'}")
        return self.boundaries[name]

    def direction(self, name: str, condition_on=()) -> torch.Tensor:
        """The unit normal of `name` with the normals of `condition_on` projected out [w_dim]."""
        n = torch.as_tensor(self.boundary(name).normal, device=self.device)
        others = [torch.as_tensor(self.boundary(c).normal, device=self.device) for c in dict.fromkeys(condition_on) if c != name]
        if others:
            u, sv, _ = torch.linalg.svd(torch.stack(others, 1), full_matrices=False)
            q = u[:, sv > 1e-6 * sv.max()]  # orthonormal basis of the span of the other boundaries
            n = n - q @ (q.T @ n)
            if n.norm() < 1e-3:
                raise ValueError(f"condition_on: {name!r} lies in the span of {list(condition_on)}; nothing is left to move")
        return n / n.norm()

    def check_edits(self, edits, condition_on=()) -> list[Edit]:
        edits = [e if isinstance(e, Edit) else Edit(*e) for e in edits]
        if not edits:
            raise ValueError("edits: give at least one (attribute, strength, layers) edit")
        for i, e in enumerate(edits):
            self.boundary(e.attribute)
            if not np.isfinite(e.strength):
                raise ValueError(f"edits[{i}].strength: must be a finite number, got {e.strength}")
            if e.layers is not None:
                if not e.layers:
                    raise ValueError(f"edits[{i}].layers: empty; leave it out for the default layers")
                bad = [l for l in e.layers if not 0 <= l < self.num_ws]
                if bad:
                    raise ValueError(f"edits[{i}].layers: {bad} out of range; this generator has layers 0..{self.num_ws - 1}")
                if len(set(e.layers)) != len(e.layers):
                    raise ValueError(f"edits[{i}].layers: a layer is given twice in {list(e.layers)}")
        for name in condition_on:
            self.boundary(name)
        return edits

    def edit_latents(self, ws: torch.Tensor, edits: list[Edit], condition_on=(), multiplier: float = 1.0) -> torch.Tensor:
        """w+ [N, num_ws, w_dim] moved along every edit's direction on that edit's layers."""
        out = ws.clone()
        for e in edits:
            b = self.boundary(e.attribute)
            layers = list(e.layers if e.layers is not None else b.default_layers)
            out[:, layers] += multiplier * e.strength * b.scale * self.direction(e.attribute, condition_on)
        return out

    def manipulate(self, edits, seeds=None, latents=None, sweep=None, condition_on=()) -> Manipulation:
        """Images of seeds (or given latents) after the edits; with `sweep`, one row per multiplier
        of every edit's strength (e.g. (-1, -0.5, 0, 0.5, 1))."""
        # 1. check inputs
        edits = self.check_edits(edits, tuple(condition_on))
        sweep = (1.0,) if sweep is None else tuple(float(s) for s in sweep)
        if not sweep or not all(np.isfinite(sweep)):
            raise ValueError("sweep: give at least one finite multiplier (or none for a single edit)")
        if (seeds is None) == (latents is None):
            raise ValueError("seeds: give either seeds or latents")
        if seeds is not None and len(seeds) == 0:
            raise ValueError("seeds: empty; give at least one seed")
        # 2. latents
        ws = self.gan.latents_from_seeds(seeds) if latents is None else self.gan.check_latents(latents)
        # 3. edit and render every row of the sweep
        rows = [self.edit_latents(ws, edits, tuple(condition_on), m) for m in sweep]
        rendered = [self.render(r) for r in rows]
        # 4. postprocess
        scores = np.stack([s for _, s in rendered])  # [len(sweep), N, scores]
        return Manipulation(images=np.stack([to_uint8(i) for i, _ in rendered]),
                            latents=np.stack([r.cpu().numpy() for r in rows]).astype(np.float32),
                            scores={n: scores[..., i] for i, n in enumerate(self.score_names)}, sweep=sweep)

    # ---- re-scoring (paper eq. 1) ---------------------------------------------------------

    @torch.no_grad()
    def rescore(self, name: str, ws: torch.Tensor, layer_groups, step: float = RESCORING_STEP,
                base_scores: np.ndarray | None = None) -> np.ndarray:
        """Δs per layer group: the mean over the latents of max(0, F(G(w moved on that group only)) − F(G(w)))
        for the boundary's score (its own name, or the target category of a transfer boundary).
        `base_scores` (= render(ws)[1]) saves rendering the unmoved latents again for every boundary."""
        if score_of(name) not in self.score_names:
            raise MissingPart(f"attribute: re-scoring {name!r} needs a predictor of that score (attributes/ or "
                              f"classifier/ in the bundle); this bundle scores {list(self.score_names) or 'nothing'}")
        column = self.score_names.index(score_of(name))
        base = (self.render(ws)[1] if base_scores is None else base_scores)[:, column]
        deltas = []
        for group in layer_groups:
            moved = self.edit_latents(ws, [Edit(name, step, tuple(group))])
            deltas.append(np.clip(self.render(moved)[1][:, column] - base, 0, None).mean())
        return np.array(deltas)


def transfer_name(source: str, target: str) -> str:
    """The boundary between two categories (paper §3.3): + = from `source` towards `target`."""
    return f"{source}{TRANSFER_SEP}{target}"


def score_of(boundary_name: str) -> str:
    """The score a boundary moves: its own name, or a transfer boundary's target category."""
    return boundary_name.split(TRANSFER_SEP)[-1]


def default_layers(deltas: np.ndarray, share: float = 0.5) -> tuple[int, ...]:
    """The layers whose re-scoring Δs is at least `share` of the largest (all, if none moves the score)."""
    if deltas.max() <= 0:
        return tuple(range(len(deltas)))
    return tuple(int(i) for i in np.flatnonzero(deltas >= share * deltas.max()))
