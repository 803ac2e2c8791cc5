"""What every linear-semantics task shares: the layer-wise generator, the predictors (the segmenter
and named semantic heads), the exported graphs that may run them, and the checks of latents and masks.

Latents are w+ codes [N, num_ws, w_dim] (a w [N, w_dim] is broadcast to every layer). Images are
made with the generator's constant layer noise, so a latent always gives the same image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from semgen.bundle import SEGMENTER, unknown_head
from semgen.networks.heads import SemanticHead

LATENT_SPACES = ("w", "w+")
# estimated working memory (sample_bytes) of one generator pass over many latents: SCS's candidates go through in
# chunks this size, so a 256-1024 px generator takes one or two at a time where the 64 px one takes 64
PASS_BYTES = 1024 * 1024 * 1024
# a pass's short-lived tensors (the modulated convs' scaled inputs, outputs before noise and activation, the
# head's upsampled logits) next to the feature maps it keeps: measured 5.6x the kept bytes at 256 px, eager torch
TRANSIENT_FACTOR = 5

# Called after every optimisation step with (iteration, loss, current images [N, 3, S, S]).
# It may raise to stop the job (cancel, deadline): the pipeline stops within one iteration.
StepCallback = Callable[[int, float, torch.Tensor], None]


@dataclass
class Samples:
    images: np.ndarray  # uint8 [N, S, S, 3]
    latents: np.ndarray  # float32 [N, num_ws, w_dim]
    masks: np.ndarray | None  # uint8 [N, S, S] class indices, when a predictor was asked for
    scores: np.ndarray | None = None  # SCS: agreement with the target per sample (pixel share)


class SemanticModels:
    """The generator, the segmenter and named semantic heads, on one device."""

    def __init__(self, generator, segmenter=None, heads: dict[str, SemanticHead] | None = None, device: str = "cpu",
                 onnx=None):
        self.device = torch.device(device)
        # `onnx`: an OnnxModels with mapping.onnx and synthesis_<head>.onnx; the graphs then run the
        # forward passes of `sample` for the heads in `onnx_heads` (those exported from these weights),
        # and `onnx_synthesis` for samples without masks (its image output does not depend on the head)
        self.onnx = onnx
        self.onnx_heads: set[str] = set()
        self.onnx_synthesis: str | None = None
        self.graphs: dict = {}  # name -> GraphSpec: the exported graphs called by tensor (from_dir sets them)
        self.generator = generator.to(self.device).eval().requires_grad_(False)
        self.segmenter = None if segmenter is None else segmenter.to(self.device).eval().requires_grad_(False)
        self.heads: dict[str, SemanticHead] = {}
        for name, head in (heads or {}).items():
            self.add_head(name, head)
        self.image_size = generator.image_size
        self.latent_shape = (generator.num_ws, generator.w_dim)
        # floats of every feature map a head reads, per sample: sample_bytes runs per request, the sum once here
        self.feature_floats = sum(c * r * r for c, r in zip(generator.layer_channels(), generator.layer_resolutions()))

    def sample_bytes(self, predictor: str | None = None) -> int:
        """Estimated working memory of one generated sample, float32: its image and, with a predictor, every
        generator feature map a head reads (with the pass's short-lived tensors: TRANSIENT_FACTOR) and the logits.
        What batches, requests and SCS's candidate chunks are bounded by: with a head, an FFHQ-sized 1024 px
        generator needs ~270x what the bundled 64 px one does."""
        side = self.image_size
        if predictor is None:
            return 4 * 3 * side * side
        classes = len(self.predictor_classes(predictor))
        return 4 * (3 * side * side + TRANSIENT_FACTOR * self.feature_floats + classes * side * side)

    # ---- predictors ---------------------------------------------------------------------

    def add_head(self, name: str, head: SemanticHead) -> None:
        if tuple(head.layer_channels) != tuple(self.generator.layer_channels()):
            raise ValueError(f"head {name!r}: made for layers {head.layer_channels}, "
                             f"the generator has {tuple(self.generator.layer_channels())}")
        self.heads[name] = head.to(self.device).eval().requires_grad_(False)
        self.onnx_heads.discard(name)  # a new head of that name is not the exported one

    def predictor_classes(self, predictor: str) -> tuple[str, ...]:
        model = self.predictor_model(predictor)
        return tuple(model.class_names) or tuple(str(i) for i in range(model.num_classes))

    def predictor_model(self, predictor: str):
        """The segmenter or the head named `predictor`; KeyError "head: ..." for an unknown name."""
        if predictor == SEGMENTER and self.segmenter is not None:
            return self.segmenter
        if predictor in self.heads:
            return self.heads[predictor]
        raise unknown_head(predictor, self.heads, self.segmenter is not None)

    def predict(self, predictor: str, images: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        """Class logits [N, C, S, S] of `predictor` for images and their generator features."""
        model = self.predictor_model(predictor)
        return model(images) if predictor == SEGMENTER else model(features, self.image_size)

    def onnx_graph(self, predictor: str | None) -> str | None:
        """The exported synthesis graph for `predictor`, if its head is the one that was exported."""
        if self.onnx is None:
            return None
        if predictor is None:
            return self.onnx_synthesis
        return f"synthesis_{predictor}" if predictor in self.onnx_heads else None


    # ---- latents, masks and images ------------------------------------------------------

    def latents_from_seeds(self, seeds, psi: float = 1.0) -> torch.Tensor:
        """One w+ [N, num_ws, w_dim] per seed (z ~ N(0, I) from the seed, mapped, truncated)."""
        z = self.z_from_seeds(seeds)
        with torch.no_grad():
            if self.onnx is not None and self.onnx.has("mapping"):
                w = torch.from_numpy(self.onnx.run("mapping", {"z": z.numpy()}, batched=False)["w"]).to(self.device)
                w = self.generator.w_avg.lerp(w, psi) if psi != 1.0 else w
            else:
                w = self.generator.mapping_w(z.to(self.device), psi)
        return self.generator.broadcast(w).contiguous()

    def z_from_seeds(self, seeds) -> torch.Tensor:
        """z [N, z_dim] ~ N(0, I), one per seed."""
        return torch.stack([torch.randn(self.generator.z_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds])

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

    def synthesize(self, ws: torch.Tensor):
        """w+ -> (images [N, 3, S, S], per-layer features)."""
        return self.generator.synthesis(ws, noise_mode="const", return_features=True)
