"""`SemanticsPipeline`: one object with every linear-semantics task, for callers that want them
all on one set of models (the serving engine, training and export). Each method hands over to its
task module: sampling, fewshot, scs, sie; the shared models and checks are `SemanticModels`'."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from semgen.checkpoints import load_checkpoint, save_checkpoint
from semgen.networks.heads import SemanticHead
from semgen.pipelines.forward import Op, Prepared, Rows
from semgen.pipelines.graphs import GRAPH_KEY, graph_specs, prepare_graph, run_graph
import semgen.pipelines.semantics.fewshot as fewshot
import semgen.pipelines.semantics.sampling as sampling
import semgen.pipelines.semantics.scs as scs
import semgen.pipelines.semantics.sie as sie
from semgen.pipelines.semantics.fewshot import FewShotSchedule
from semgen.pipelines.semantics.headstore import load_heads
from semgen.pipelines.semantics.models import Samples, SemanticModels, StepCallback
from semgen.pipelines.semantics.scs import CandidateCallback, CandidatePool


class SemanticsPipeline(SemanticModels):
    """The layer-wise generator, the segmenter and named semantic heads, with every task on them."""

    @classmethod
    def from_dir(cls, models_dir: str | Path, device: str = "cpu", extra_heads_dir: str | Path | None = None,
                 onnx=None):
        """<models>/stylegan, <models>/segmenter (optional), every head in <models>/heads/<name>/
        and in `extra_heads_dir` (heads fitted by users); `onnx` as in the constructor, exported
        from this bundle."""
        models_dir = Path(models_dir)
        segmenter = load_checkpoint(models_dir / "segmenter") if (models_dir / "segmenter").exists() else None
        pipe = cls(load_checkpoint(models_dir / "stylegan"), segmenter, device=device, onnx=onnx)
        for name, head in load_heads(models_dir / "heads"):
            pipe.add_head(name, head)
        if onnx is not None:
            pipe.onnx_heads = {name for name in pipe.heads if onnx.has(f"synthesis_{name}")}
            # samples without masks: a fused graph where there is one (the bundled models' bytes stay as they were),
            # else the generator alone (exports since the plain graph was added)
            plain = "synthesis" if onnx.has("synthesis") else None
            pipe.onnx_synthesis = f"synthesis_{min(pipe.onnx_heads)}" if pipe.onnx_heads else plain
            # the exported graphs a client may call by tensor (Op.GRAPH)
            pipe.graphs = graph_specs(onnx, ["mapping", *([plain] if plain else []),
                                             *(f"synthesis_{h}" for h in sorted(pipe.onnx_heads))])
        for name, head in load_heads(extra_heads_dir) if extra_heads_dir else []:
            pipe.add_head(name, head)
        return pipe

    # ---- sampling and segmentation (forward-only) ----------------------------------------

    def sample(self, seeds=None, latents=None, psi: float = 1.0, predictor: str | None = None,
               batch_size: int = 32) -> Samples:
        """Images (and masks by `predictor`) for seeds or given latents, `batch_size` at a time."""
        return sampling.sample(self, seeds, latents, psi, predictor, batch_size)

    def segment(self, latents, predictor: str) -> np.ndarray:
        """Masks uint8 [N, S, S] of the images the latents make."""
        return sampling.segment(self, latents, predictor)

    def prepare(self, op: Op | str, args: dict) -> Prepared:
        """The batching interface (semgen.pipelines.forward): `op` is Op.SAMPLE, and `args` are
        `sample`'s keyword arguments (but batch_size); or Op.GRAPH (semgen.pipelines.graphs.prepare_graph)."""
        if op == Op.GRAPH:
            return prepare_graph(self.graphs, args)
        return sampling.prepare(self, op, args)

    def run(self, key: str, rows: Rows) -> Rows:
        """Synthesis (+ the predictor's masks) over a batch of w+ rows, key = "synthesis:<predictor>"; or the
        graph that a "graph:<name>" key names."""
        if key.startswith(GRAPH_KEY):
            return run_graph(self.onnx, key, rows)
        return sampling.run(self, key, rows)

    # ---- few-shot heads -----------------------------------------------------------------

    def fit_head(self, latents, masks, class_names, seed: int = 0, schedule: FewShotSchedule | None = None,
                 iterations: int | None = None, on_step: StepCallback | None = None, kind: str = "lse") -> SemanticHead:
        """A few-shot head (LSE by default) from 1–16 latents and their masks (uint8 [N, S, S],
        indices into class_names)."""
        return fewshot.fit_head(self, latents, masks, class_names, seed, schedule, iterations, on_step, kind)

    def save_head(self, name: str, head: SemanticHead, folder: str | Path, training: dict | None = None) -> Path:
        """Write `head` to folder/<name>/ and serve it as `name` (no name rules: see HeadStore)."""
        path = Path(folder) / name
        save_checkpoint(path, head, head.config, training=training)
        self.add_head(name, head)
        return path

    # ---- SCS and SIE (iterative) --------------------------------------------------------

    def sample_conditional(self, target_mask, predictor: str, num_samples: int, seed: int, n_init: int = 100,
                           iterations: int = 50, lr: float = 0.01, space: str = "w+", psi: float = 1.0,
                           on_step: StepCallback | None = None,
                           on_candidates: CandidateCallback | None = None) -> Samples:
        """SCS (App. H, Algorithm 3): per sample, the best of n_init random latents, then Adam on
        the latent with cross-entropy to the target mask. `on_candidates(done, total)` runs after
        every batch of the candidates' generator passes, `on_step` after every Adam step; either
        may raise to stop."""
        return scs.sample_conditional(self, target_mask, predictor, num_samples, seed, n_init, iterations, lr,
                                      space, psi, on_step, on_candidates)

    def conditional_batch(self, targets: torch.Tensor, predictor: str, per_target: int, pool: CandidatePool,
                          iterations: int = 50, lr: float = 0.01, space: str = "w+",
                          on_step: StepCallback | None = None) -> Samples:
        """SCS for several checked targets [T, S, S] at once, `per_target` samples each (target-major)."""
        return scs.conditional_batch(self, targets, predictor, per_target, pool, iterations, lr, space, on_step)

    def candidate_pool(self, predictor: str, n: int, seed: int, psi: float = 1.0, batch_size: int = 64,
                       on_candidates: CandidateCallback | None = None) -> CandidatePool:
        """n random latents (seeded) and their masks by `predictor`; `on_candidates(done, n)` after
        every batch of generator passes."""
        return scs.candidate_pool(self, predictor, n, seed, psi, batch_size, on_candidates)

    def edit(self, latent, target_mask, predictor: str, iterations: int = 50, lr: float = 0.01, space: str = "w+",
             on_step: StepCallback | None = None) -> Samples:
        """SIE (App. G, Algorithm 2): Adam on the latents [B, ...] towards the edited masks [B, S, S]."""
        return sie.edit(self, latent, target_mask, predictor, iterations, lr, space, on_step)

    def edit_colors(self, latent, colors: np.ndarray, region: np.ndarray, iterations: int = 50, lr: float = 0.01,
                    space: str = "w+", on_step: StepCallback | None = None) -> Samples:
        """The colour-space editing baseline (App. G): strokes uint8 [B, S, S, 3] inside region bool [B, S, S]."""
        return sie.edit_colors(self, latent, colors, region, iterations, lr, space, on_step)
