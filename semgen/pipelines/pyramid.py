"""Semantic Pyramid inference (Shocher et al. §4): every operation runs the same trained generator.

- generate:  features from any set of levels, each with an optional spatial mask;
- repaint:   a region is regenerated from one level, shallower levels masked out in the region;
- composite: an object crop pasted into a box; the paste feeds the chosen level, shallower
             levels are masked out in the box, so the object is re-drawn to fit its surroundings;
- re-label:  any of the above with `class_index` set to another class.

Masks and regions are given at the reference image's own size (1 = pass the reference's
features for a level mask, 1 = regenerate for a repaint region) and follow the image through
the same centre crop and resize.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from PIL import Image

from semgen.checkpoints import load_checkpoint, load_classifier
from semgen.data.loaders import center_square, square_resize, to_tensor, to_uint8
from semgen.networks.classifier import LEVELS, SPATIAL_LEVELS
from semgen.pipelines.forward import Op, Prepared, Rows, complete
from semgen.pipelines.graphs import GRAPH_KEY, graph_specs, prepare_graph, run_graph
from semgen.pipelines.masks import check_levels, level_masks

__all__ = ["LEVELS", "GenerateResult", "PyramidPipeline", "check_pair", "paste_box"]


@dataclass
class GenerateResult:
    images: np.ndarray  # uint8 [N, S, S, 3]
    class_index: int  # class label used for generation
    level: str  # the deepest level used
    reference: np.ndarray  # uint8 [S, S, 3]: the image whose features were used (the paste, for composite)


class PyramidPipeline:
    """The classifier (feature extractor) and the EMA pyramid generator, ready for inference.

    `onnx`: an `OnnxModels` with classifier.onnx and pyramid.onnx, which then run the forward
    passes; the torch modules still answer the shape questions. Every operation is also split
    into `prepare(op, args)` and `run(key, rows)` (semgen.pipelines.forward) for batching.
    """

    OPS = (Op.GENERATE, Op.REPAINT, Op.COMPOSITE, Op.GRAPH)

    def __init__(self, classifier, generator, device: str = "cpu", onnx=None):
        check_pair(classifier, generator)
        self.classifier = classifier.to(device).eval()
        self.generator = generator.to(device).eval()
        self.device = torch.device(device)
        self.onnx = onnx
        self.image_size = classifier.image_size
        self.class_names = tuple(generator.class_names) or tuple(str(i) for i in range(generator.num_classes))
        self.level_shapes = classifier.level_shapes()
        # the exported graphs a client may call by tensor (Op.GRAPH)
        self.graphs = graph_specs(onnx, ("classifier", "pyramid")) if onnx is not None else {}

    @classmethod
    def from_dir(cls, models_dir: str | Path, device: str = "cpu", classifier: str | None = None,
                 onnx=None) -> "PyramidPipeline":
        """The bundle in `models_dir`; `classifier` (a checkpoint folder or torchvision-vgg16:PATH)
        replaces its classifier/ folder, for a generator trained against that classifier."""
        models_dir = Path(models_dir)
        return cls(load_classifier(classifier or models_dir / "classifier"), load_checkpoint(models_dir / "pyramid"),
                   device, onnx)

    def generate(self, image: np.ndarray, levels: str | Mapping[str, np.ndarray | None], num_samples: int,
                 seed: int, class_index: int | None = None) -> GenerateResult:
        """Samples from `image`'s features (uint8 [H, W, 3] RGB, any size).

        levels: a level name (passed whole), or {level: None (whole) or mask [H, W] in [0, 1]}.
        """
        return complete(self, self._prepare_generate(image, levels, num_samples, seed, class_index))

    def repaint(self, image: np.ndarray, region: np.ndarray, level: str, num_samples: int, seed: int,
                class_index: int | None = None) -> GenerateResult:
        """Regenerate `region` (mask [H, W], 1 = repaint) from `level`; outside it the shallower
        levels pin the reference."""
        return complete(self, self._prepare_repaint(image, region, level, num_samples, seed, class_index))

    def composite(self, image: np.ndarray, object_image: np.ndarray, box: tuple[int, int, int, int], level: str,
                  num_samples: int, seed: int, class_index: int | None = None) -> GenerateResult:
        """Paste `object_image` (resized) into `box` = (left, top, width, height) of `image`, then
        repaint the box from `level` of the paste (paper §4.3, semantic image composition)."""
        return complete(self, self._prepare_composite(image, object_image, box, level, num_samples, seed,
                                                      class_index))

    # ---- prepare / run: the batching interface --------------------------------------------

    def prepare(self, op: Op | str, args: dict) -> Prepared:
        """`op` is generate, repaint or composite, and `args` are that method's keyword arguments; or graph
        (semgen.pipelines.graphs.prepare_graph)."""
        if op not in self.OPS:
            raise ValueError(f"op: unknown operation {op!r}; expected one of {', '.join(self.OPS)}")
        if op == Op.GRAPH:
            return prepare_graph(self.graphs, args)
        return getattr(self, f"_prepare_{op}")(**args)

    @torch.no_grad()
    def run(self, key: str, rows: Rows) -> Rows:
        """The generator over a batch of rows: z, labels, then <level>_features and <level>_mask (or the
        graph that a "graph:<name>" key names)."""
        if key.startswith(GRAPH_KEY):
            return run_graph(self.onnx, key, rows)
        if self.onnx is not None:
            return self.onnx.run("pyramid", rows)
        t = {k: torch.from_numpy(v).to(self.device) for k, v in rows.items()}
        used = [lv for lv in LEVELS if rows[f"{lv}_mask"].any()]  # an all-zero mask adds exactly nothing
        images = self.generator(t["z"], {lv: t[f"{lv}_features"] for lv in used},
                                {lv: t[f"{lv}_mask"] for lv in used}, t["labels"])
        return {"image": images.cpu().numpy()}

    def _prepare_generate(self, image, levels, num_samples, seed, class_index=None) -> Prepared:
        # 1. check inputs
        if isinstance(levels, str):
            levels = {levels: None}
        if not levels:
            raise ValueError("levels: give at least one level")
        check_levels(levels)
        ref = self._check_image(image)
        regions = {lv: None if m is None else self._check_mask(m, image, f"mask[{lv}]") for lv, m in levels.items()}
        return self._rows(ref, regions, num_samples, seed, class_index)

    def _prepare_repaint(self, image, region, level, num_samples, seed, class_index=None) -> Prepared:
        check_levels([level])
        ref = self._check_image(image)
        keep = 1.0 - self._check_mask(region, image, "region", nonempty=True)
        regions = {lv: keep for lv in LEVELS[: LEVELS.index(level)] if lv in SPATIAL_LEVELS}
        regions[level] = None
        return self._rows(ref, regions, num_samples, seed, class_index)

    def _prepare_composite(self, image, object_image, box, level, num_samples, seed, class_index=None) -> Prepared:
        if (not isinstance(object_image, np.ndarray) or object_image.dtype != np.uint8 or object_image.ndim != 3
                or object_image.shape[2] != 3 or object_image.size == 0):
            raise ValueError("object_image: expected uint8 RGB array [H, W, 3]")
        pasted, region = paste_box(image, object_image, box)
        return self._prepare_repaint(pasted, region, level, num_samples, seed, class_index)

    # ---- steps shared by every operation -------------------------------------------------

    @torch.no_grad()
    def _rows(self, ref: torch.Tensor, regions: dict, num_samples: int, seed: int, class_index: int | None) -> Prepared:
        if num_samples < 1:
            raise ValueError(f"num_samples: must be >= 1, got {num_samples}")
        # 2. features of the reference, and its class unless overridden
        feats = self._features(ref)
        label = self._class(feats, class_index)
        # 3. seeded noise and masks, one row per sample; levels not asked for get all-zero masks
        masks = level_masks(self.level_shapes, regions, num_samples)
        rows = {"z": self._noise(seed, num_samples), "labels": np.full(num_samples, label, np.int64)}
        for level in LEVELS:
            f = feats[level]
            rows[f"{level}_features"] = np.repeat(f, num_samples, axis=0)  # a writable copy per sample
            rows[f"{level}_mask"] = (masks[level] if level in masks else
                                     torch.zeros(num_samples, 1, *self.level_shapes[level][1:])).numpy()
        # 4. postprocess, once the generator has run
        deepest = max(regions, key=LEVELS.index)
        reference = to_uint8(ref)[0]

        def finish(out: Rows) -> GenerateResult:
            return GenerateResult(images=to_uint8(torch.from_numpy(out["image"])), class_index=label, level=deepest,
                                  reference=reference)

        return Prepared("pyramid", rows, finish)

    @torch.no_grad()
    def _features(self, ref: torch.Tensor) -> dict[str, np.ndarray]:
        if self.onnx is not None:
            return self.onnx.run("classifier", {"image": ref.cpu().numpy()}, batched=False)  # one request's image
        return {k: v.cpu().numpy() for k, v in self.classifier.features(ref).items()}

    def _check_image(self, image: np.ndarray, field: str = "image") -> torch.Tensor:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"{field}: expected uint8 RGB array [H, W, 3]")
        if min(image.shape[:2]) < 8:
            raise ValueError(f"{field}: too small ({image.shape[1]}x{image.shape[0]}); need at least 8x8")
        return to_tensor(square_resize(image, self.image_size)[None]).to(self.device)

    def _check_mask(self, mask: np.ndarray, image: np.ndarray, field: str, nonempty: bool = False) -> torch.Tensor:
        """A mask at the image's size -> float [S, S] on the model's grid (same crop and resize)."""
        mask = np.asarray(mask)
        if mask.shape != image.shape[:2]:
            raise ValueError(f"{field}: size {_wh(mask.shape)} does not match the image's {_wh(image.shape)}")
        mask = mask.astype(np.float32)
        if not np.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
            raise ValueError(f"{field}: values must be in [0, 1]")
        if nonempty and mask.max() == 0:
            raise ValueError(f"{field}: empty (no pixel above 0); mark the region to change with values > 0")
        small = _resize_mask(mask, self.image_size)
        if nonempty and small.max() == 0:
            raise ValueError(f"{field}: lies outside the centre square of the image, which is all the model sees")
        return torch.from_numpy(small)

    def _class(self, feats: dict, class_index: int | None) -> int:
        if class_index is None:
            return int(np.argmax(feats["fc8"][0]))
        if not 0 <= class_index < len(self.class_names):
            raise ValueError(f"class_index: {class_index} out of range [0, {len(self.class_names) - 1}]")
        return int(class_index)

    def _noise(self, seed: int, n: int) -> np.ndarray:
        # drawn on the CPU so that the same seed gives the same noise on every device
        gen = torch.Generator().manual_seed(int(seed))
        return torch.randn(n, self.generator.z_dim, generator=gen).numpy()


def check_pair(classifier, generator) -> None:
    """The generator must have been built for this classifier's levels and classes."""
    shapes = classifier.level_shapes()
    expected = dict(image_size=classifier.image_size, num_classes=classifier.num_classes,
                    level_channels=[shapes[lv][0] for lv in SPATIAL_LEVELS], fc_dims=[shapes["fc7"][0], shapes["fc8"][0]])
    got = {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in generator.config.items() if k in expected}
    wrong = [f"{k} {got[k]} (classifier: {v})" for k, v in expected.items() if got[k] != v]
    if wrong:
        raise ValueError(f"classifier: does not match the generator, which was built for another one: {', '.join(wrong)}")


def paste_box(image: np.ndarray, object_image: np.ndarray, box) -> tuple[np.ndarray, np.ndarray]:
    """Naive paste: `object_image` resized into box = (left, top, width, height) of `image`.
    Returns (pasted uint8 [H, W, 3], box mask float [H, W])."""
    left, top, width, height = (int(v) for v in box)
    h, w = image.shape[:2]
    if width < 1 or height < 1:
        raise ValueError(f"box: width and height must be >= 1, got {width}x{height}")
    if left < 0 or top < 0 or left + width > w or top + height > h:
        raise ValueError(f"box: ({left}, {top}, {width}, {height}) is not inside the {w}x{h} image")
    pasted = image.copy()
    pasted[top : top + height, left : left + width] = np.asarray(
        Image.fromarray(object_image).resize((width, height), Image.BICUBIC))
    region = np.zeros((h, w), np.float32)
    region[top : top + height, left : left + width] = 1.0
    return pasted, region


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """float [H, W] -> [size, size] with the centre crop of `square_resize` and area resampling."""
    crop = np.ascontiguousarray(center_square(mask))
    if crop.shape[0] == size:
        return crop
    return np.array(Image.fromarray(crop).resize((size, size), Image.BOX), dtype=np.float32)  # a writable copy


def _wh(shape) -> str:
    return f"{shape[1]}x{shape[0]}" if len(shape) >= 2 else str(tuple(shape))
