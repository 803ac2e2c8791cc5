"""Engines: where inference runs. Servicers talk to the `Engine` interface only.

`EmbeddedEngine` runs the semgen pipeline in this process on a small thread pool, so the
CPU/GPU-bound torch work never blocks the gRPC event loop. torch and semgen are imported
only when a real pipeline is loaded; this module itself needs numpy only.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from serving.metrics import ServingMetrics


class InvalidInput(ValueError):
    """Bad client input; the message starts with the field name ("level: ...")."""


class Unavailable(RuntimeError):
    """The engine cannot take work now (loading, shutting down); the client may retry."""


class NotFound(LookupError):
    """An unknown model, head or attribute; the message starts with the field name."""


class AlreadyExists(RuntimeError):
    """Creating something that exists (a head name) without asking to replace it."""


class ResourceExhausted(RuntimeError):
    """The server is at a limit (running jobs); the client may retry later."""


class Unsupported(RuntimeError):
    """This engine does not offer the operation (another engine does)."""


class DeadlineExceeded(RuntimeError):
    """The request's deadline passed while the engine was working on it."""


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


class EmbeddedEngine(Engine):
    """Runs a `PyramidPipeline`-like object in-process.

    With a batch `policy`, calls go through a `DynamicBatcher` (the pipeline's prepare/run);
    without one, each call runs alone on one of `workers` threads (then the pipeline's methods
    must be thread-safe when workers > 1; torch already uses several cores inside one call).
    """

    def __init__(self, pipeline: Any, levels: tuple[str, ...], workers: int = 1,
                 metrics: ServingMetrics | None = None, policy=None):
        from serving.batcher import DynamicBatcher  # it imports this module's errors

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
        return await self._generated("generate", dict(image=image, levels=levels, num_samples=num_samples,
                                                      seed=seed, class_index=class_index))

    async def repaint(self, image, region, level, num_samples, seed, class_index=None) -> Generated:
        return await self._generated("repaint", dict(image=image, region=region, level=level,
                                                     num_samples=num_samples, seed=seed, class_index=class_index))

    async def composite(self, image, object_image, box, level, num_samples, seed, class_index=None) -> Generated:
        return await self._generated("composite", dict(image=image, object_image=object_image, box=box, level=level,
                                                       num_samples=num_samples, seed=seed, class_index=class_index))

    async def _generated(self, op: str, args: dict) -> Generated:
        if self._batcher is not None:
            result = await self._batcher.call(op, args)
        else:
            result = await self._work.call(op, getattr(self._pipeline, op), **args)
        return Generated(images=result.images, class_index=int(result.class_index), level=result.level)

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
        await self._work.close()


_FIELD_PREFIX = re.compile(r"^[A-Za-z_][\w.\[\]]*: ")  # "head: ...", "mask[conv3]: ..."


def client_error(e: Exception) -> Exception:
    """A pipeline's documented input errors as the engine's: ValueError -> InvalidInput; a KeyError
    for an unknown name ("head: no head named 'x'") -> NotFound. Anything else is returned as it is:
    a bug, which the client sees as INTERNAL."""
    if isinstance(e, ValueError):
        return InvalidInput(str(e))
    message = str(e.args[0]) if isinstance(e, KeyError) and e.args else ""
    if _FIELD_PREFIX.match(message):
        return NotFound(message)
    return e


def not_found_errors(fn: Callable, field: str) -> Callable:
    """`fn` with a pipeline's KeyError for an unknown name (message "<field>: ...", e.g.
    "head: no head named 'x'") as NotFound; other KeyErrors stay bugs."""

    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyError as e:
            message = str(e.args[0]) if e.args else ""
            if message.startswith(f"{field}:"):
                raise NotFound(message) from None
            raise

    return call


class WorkerPool:
    """Blocking calls on `workers` threads, timed into the engine queue/compute metrics.

    The pipeline's documented input checks raise short ValueErrors (convention 4); they leave
    as InvalidInput.
    """

    def __init__(self, workers: int, metrics: ServingMetrics, name: str = "semgen-engine"):
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix=name)
        self._metrics = metrics
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        await asyncio.to_thread(self._pool.shutdown, wait=True)

    async def call(self, op: str, fn: Callable, *args, **kwargs):
        if self._closed:
            raise Unavailable("engine: shutting down; retry on another replica")
        m = self._metrics
        submitted = time.perf_counter()

        def work():
            started = time.perf_counter()
            m.engine_queue_depth.dec()
            m.engine_queue_latency.labels(op=op).observe(started - submitted)
            try:
                return fn(*args, **kwargs)
            except ValueError as e:
                raise InvalidInput(str(e)) from e
            finally:
                m.engine_compute_latency.labels(op=op).observe(time.perf_counter() - started)

        m.engine_queue_depth.inc()
        future = self._pool.submit(work)
        # A call cancelled while still queued never runs `work`, so fix the depth here.
        future.add_done_callback(lambda f: m.engine_queue_depth.dec() if f.cancelled() else None)
        return await asyncio.wrap_future(future)
