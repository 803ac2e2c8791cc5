"""The HiGAN engine: attribute boundaries and layer-wise editing of seeds or latents.

Manipulate is forward-only work (edit the latents, synthesise, score): it runs on a `WorkerPool`
like the pyramid engine and the semantics engine's Sample, so the torch work never blocks the
event loop and waits in the engine queue when every worker is busy. No randomness beyond the
seeds, so the same request gives the same bytes.

torch and semgen are imported only by `from_dir` and on worker threads.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.core.errors import not_found_errors
from serving.core.workers import WorkerPool
from serving.core.metrics import ServingMetrics

OP = "manipulate"  # the engine op in the metrics


@dataclass(frozen=True)
class AttributeSummary:
    name: str
    level: str  # layout, objects, attribute, color or category
    default_layers: tuple[int, ...]
    val_acc: float
    scale: float  # std of sampled latents along the normal: strength 1 moves w this far


@dataclass(frozen=True)
class HiganInfo:
    image_size: int
    latent_shape: tuple[int, int]  # (num_ws, w_dim)
    attributes: dict[str, AttributeSummary]  # in the bundle's order


@dataclass(frozen=True)
class AttributeEdit:
    attribute: str
    strength: float  # in units of the boundary's scale
    layers: tuple[int, ...] | None = None  # None: the boundary's default layers


@dataclass(frozen=True)
class Frames:
    images: np.ndarray  # uint8 [len(sweep), N, S, S, 3]
    latents: np.ndarray  # float32 [len(sweep), N, num_ws, w_dim], the edited w+
    scores: dict[str, np.ndarray]  # score name -> float [len(sweep), N]
    sweep: tuple[float, ...]


class HiganEngine(abc.ABC):
    """One interface for every backend of the HiGAN service."""

    @property
    @abc.abstractmethod
    def info(self) -> HiganInfo:
        """The generator's shape and every boundary."""

    @abc.abstractmethod
    async def manipulate(self, edits: list[AttributeEdit], seeds: list[int] | None, latents: np.ndarray | None,
                         sweep: tuple[float, ...], condition_on: tuple[str, ...]) -> Frames:
        """Seeds or latents [N, num_ws, w_dim] / [N, w_dim] edited for every multiplier of `sweep`.
        Raises InvalidInput (the pipeline's checks), NotFound (an unknown attribute)."""

    async def close(self) -> None:
        """Finish running work and release resources."""


class EmbeddedHiganEngine(HiganEngine):
    """Runs a `HiganPipeline` in-process on `workers` threads."""

    def __init__(self, pipeline, workers: int = 1, metrics: ServingMetrics | None = None):
        if workers < 1:
            raise ValueError(f"workers: must be >= 1, got {workers}")
        self._pipeline = pipeline
        self._work = WorkerPool(workers, metrics or ServingMetrics(), name="semgen-higan")
        p = pipeline
        attributes = {b.name: AttributeSummary(b.name, b.level, tuple(int(i) for i in b.default_layers),
                                               float(b.val_acc), float(b.scale)) for b in p.boundaries.values()}
        self._info = HiganInfo(int(p.image_size), (int(p.num_ws), int(p.w_dim)), attributes)

    @classmethod
    def from_dir(cls, models_dir: str | Path, device: str = "auto", workers: int = 1,
                 metrics: ServingMetrics | None = None) -> "EmbeddedHiganEngine":
        """Load <models>/stylegan and what it has of attributes, classifier, boundaries and segmenter, blocking."""
        import torch
        from semgen.pipelines.higan import HiganPipeline

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(HiganPipeline.from_dir(models_dir, device=device), workers=workers, metrics=metrics)

    @property
    def info(self) -> HiganInfo:
        return self._info

    async def manipulate(self, edits, seeds, latents, sweep, condition_on) -> Frames:
        from semgen.pipelines.higan import Edit

        pipeline_edits = [Edit(e.attribute, e.strength, e.layers) for e in edits]
        manipulate = not_found_errors(self._pipeline.manipulate, "attribute")
        r = await self._work.call(OP, manipulate, pipeline_edits, seeds=seeds, latents=latents, sweep=list(sweep),
                                  condition_on=tuple(condition_on))
        return Frames(r.images, r.latents, r.scores, tuple(r.sweep))

    async def close(self) -> None:
        await self._work.close()
