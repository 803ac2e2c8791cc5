"""Engines: where inference runs. Servicers talk to the `Engine` interface only.

`EmbeddedEngine` runs the semgen pipeline in this process on a small thread pool, so the
CPU/GPU-bound torch work never blocks the gRPC event loop. torch and semgen are imported
only when a real pipeline is loaded; this module itself needs numpy only.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from semgen.pipelines.forward import Op, run_batch
from serving.core.batcher import DynamicBatcher
from serving.core.graphs import GraphCalls
from serving.core.metrics import ServingMetrics
from serving.core.workers import WorkerPool


@dataclass(frozen=True)
class ModelInfo:
    levels: tuple[str, ...]
    class_names: tuple[str, ...]
    image_size: int


@dataclass(frozen=True)
class Generated:
    images: np.ndarray  # uint8 [N, H, W, 3]
    class_index: int
    level: str


class Engine(abc.ABC):
    """One interface for every backend (embedded now; TorchServe later)."""

    info: ModelInfo

    @abc.abstractmethod
    async def generate(self, image: np.ndarray, levels: Mapping[str, np.ndarray | None], num_samples: int,
                       seed: int, class_index: int | None = None) -> Generated:
        """Pyramid generation from a decoded uint8 [H, W, 3] reference; `levels` maps each level to
        None (whole map) or a float mask [H, W] in [0, 1]. Raises InvalidInput."""

    @abc.abstractmethod
    async def repaint(self, image: np.ndarray, region: np.ndarray, level: str, num_samples: int, seed: int,
                      class_index: int | None = None) -> Generated:
        """Regenerate `region` (float [H, W], 1 = repaint) of `image` from `level`."""

    @abc.abstractmethod
    async def composite(self, image: np.ndarray, object_image: np.ndarray, box: tuple[int, int, int, int],
                        level: str, num_samples: int, seed: int, class_index: int | None = None) -> Generated:
        """Paste `object_image` into box (left, top, width, height) of `image`, regenerate the box from `level`."""

    async def close(self) -> None:
        """Finish running work and release resources."""


class EmbeddedEngine(GraphCalls, Engine):
    """Runs a `PyramidPipeline`-like object in-process.

    With a batch `policy`, calls go through a `DynamicBatcher` (the pipeline's prepare/run);
    without one, each call runs alone on one of `workers` threads (then the pipeline's methods
    must be thread-safe when workers > 1; torch already uses several cores inside one call).
    """

    def __init__(self, pipeline: Any, levels: tuple[str, ...], workers: int = 1,
                 metrics: ServingMetrics | None = None, policy=None):
        if workers < 1:
            raise ValueError(f"workers: must be >= 1, got {workers}")
        self._pipeline = pipeline
        metrics = metrics or ServingMetrics()
        self._work = WorkerPool(workers, metrics)
        self._batcher = None if policy is None else DynamicBatcher(pipeline, "pyramid", policy, metrics)
        self.info = ModelInfo(
            levels=tuple(levels),
            class_names=tuple(pipeline.class_names),
            image_size=int(pipeline.image_size),
        )

    @classmethod
    def from_dir(cls, models_dir: str | Path, device: str = "auto", workers: int = 1,
                 metrics: ServingMetrics | None = None, classifier: str | None = None, onnx=None,
                 policy=None) -> "EmbeddedEngine":
        """Load the pyramid bundle in `models_dir` (blocking; call it off the event loop); `onnx`:
        an OnnxModels exported from it, to run the forward passes on; `policy`: a BatchPolicy."""
        import torch
        from semgen.pipelines.pyramid import LEVELS, PyramidPipeline

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        pipeline = PyramidPipeline.from_dir(models_dir, device=device, classifier=classifier, onnx=onnx)
        return cls(pipeline, LEVELS, workers=workers, metrics=metrics, policy=policy)

    async def generate(self, image, levels, num_samples, seed, class_index=None) -> Generated:
        return await self._generated(Op.GENERATE, dict(image=image, levels=levels, num_samples=num_samples,
                                                      seed=seed, class_index=class_index))

    async def repaint(self, image, region, level, num_samples, seed, class_index=None) -> Generated:
        return await self._generated(Op.REPAINT, dict(image=image, region=region, level=level,
                                                     num_samples=num_samples, seed=seed, class_index=class_index))

    async def composite(self, image, object_image, box, level, num_samples, seed, class_index=None) -> Generated:
        return await self._generated(Op.COMPOSITE, dict(image=image, object_image=object_image, box=box, level=level,
                                                       num_samples=num_samples, seed=seed, class_index=class_index))

    async def _generated(self, op: Op, args: dict) -> Generated:
        if self._batcher is not None:
            result = await self._batcher.call(op, args)
        else:
            result = await self._work.call(op, getattr(self._pipeline, op), **args)
        return Generated(images=result.images, class_index=int(result.class_index), level=result.level)

    def run_batch(self, requests: list[tuple[str, dict]]) -> list:
        """Forward requests [(op, args)] run together on this thread, as TorchServe hands the handler a batch;
        each request's result, or its own exception."""
        return run_batch(self._pipeline, requests)

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
        await self._work.close()
