"""Semantic Pyramid inference: generate images from a reference image's features at a level."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from semgen.checkpoints import load_checkpoint
from semgen.data.loaders import square_resize, to_tensor, to_uint8
from semgen.networks.classifier import LEVELS
from semgen.pipelines.masks import check_levels, level_masks

__all__ = ["LEVELS", "GenerateResult", "PyramidPipeline"]


@dataclass
class GenerateResult:
    images: np.ndarray  # uint8 [N, H, W, 3]
    class_index: int  # class label used for generation
    level: str


class PyramidPipeline:
    """The classifier (feature extractor) and the EMA pyramid generator, ready for inference."""

    def __init__(self, classifier, generator, device: str = "cpu"):
        self.classifier = classifier.to(device).eval()
        self.generator = generator.to(device).eval()
        self.device = torch.device(device)
        self.image_size = classifier.image_size
        self.class_names = tuple(generator.class_names) or tuple(str(i) for i in range(generator.num_classes))
        self.level_shapes = classifier.level_shapes()

    @classmethod
    def from_dir(cls, models_dir: str | Path, device: str = "cpu") -> "PyramidPipeline":
        models_dir = Path(models_dir)
        return cls(load_checkpoint(models_dir / "classifier"), load_checkpoint(models_dir / "pyramid"), device)

    @torch.no_grad()
    def generate(self, image: np.ndarray, level: str, num_samples: int, seed: int,
                 class_index: int | None = None) -> GenerateResult:
        """Samples from one level of `image`'s features (uint8 [H, W, 3] RGB, any size)."""
        # 1. check inputs
        check_levels([level])
        ref = self._check_image(image)
        if num_samples < 1:
            raise ValueError(f"num_samples: must be >= 1, got {num_samples}")
        # 2. features of the reference, and its class unless overridden
        feats = self.classifier.features(ref)
        label = self._class(feats, class_index)
        # 3. seeded noise, masks, forward
        z = self._noise(seed, num_samples)
        masks = {k: v.to(self.device) for k, v in level_masks(self.level_shapes, {level: None}, num_samples).items()}
        feats = {k: v.expand(num_samples, *v.shape[1:]) for k, v in feats.items()}
        labels = torch.full((num_samples,), label, dtype=torch.long, device=self.device)
        images = self.generator(z, feats, masks, labels)
        # 4. postprocess
        return GenerateResult(images=to_uint8(images), class_index=label, level=level)

    def _check_image(self, image: np.ndarray) -> torch.Tensor:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError("image: expected uint8 RGB array [H, W, 3]")
        if min(image.shape[:2]) < 8:
            raise ValueError(f"image: too small ({image.shape[1]}x{image.shape[0]}); need at least 8x8")
        return to_tensor(square_resize(image, self.image_size)[None]).to(self.device)

    def _class(self, feats: dict, class_index: int | None) -> int:
        if class_index is None:
            return int(feats["fc8"].argmax(1)[0])
        if not 0 <= class_index < len(self.class_names):
            raise ValueError(f"class_index: {class_index} out of range [0, {len(self.class_names) - 1}]")
        return int(class_index)

    def _noise(self, seed: int, n: int) -> torch.Tensor:
        # drawn on the CPU so that the same seed gives the same noise on every device
        gen = torch.Generator().manual_seed(int(seed))
        return torch.randn(n, self.generator.z_dim, generator=gen).to(self.device)
