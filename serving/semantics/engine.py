"""The linear-semantics engine: sampling and segmentation, few-shot heads, SCS and SIE.

Forward work (Sample, Segment) runs on a `WorkerPool` like the pyramid engine. Iterative jobs
(head fitting, SCS, SIE) run on a `serving.core.jobs.JobRunner`: their own threads, at most `max_jobs`
at once, so a long job never holds up sampling. A job reports every optimisation step through the
pipeline's `on_step` callback, which runs on the job's thread: it hands progress to the event loop
and raises `JobStopped` once the request is cancelled or past its deadline, so the job ends within
one iteration. SCS's candidate stage (num_samples × n_init generator passes, before the first step)
checks the same way after every batch of passes, through the pipeline's `on_candidates`.

torch and semgen are imported only by `from_dir` and on job threads.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable

import numpy as np

from semgen.bundle import SEGMENTER
from semgen.pipelines.forward import Op, run_batch
from serving.core.batcher import DynamicBatcher
from serving.core.errors import AlreadyExists, ResourceExhausted, not_found_errors
from serving.core.graphs import GraphCalls
from serving.core.workers import WorkerPool
from serving.core.jobs import JobControl, JobRunner
from serving.core.metrics import ServingMetrics

log = logging.getLogger("serving.semantics")




@dataclass(frozen=True)
class HeadSummary:
    name: str
    kind: str  # "lse", "nse1", "nse2" or "segmenter"
    class_names: tuple[str, ...]
    bundled: bool
    shots: int = 0  # user heads: how many samples they were fitted from


@dataclass(frozen=True)
class SemanticsInfo:
    image_size: int
    latent_shape: tuple[int, int]  # (num_ws, w_dim)
    heads: dict[str, HeadSummary]  # every predictor by name, "segmenter" included when there is one
    sample_bytes: int = 0  # estimated working memory of one sample read by the largest head (0: not known)


@dataclass(frozen=True)
class Samples:
    images: np.ndarray  # uint8 [N, S, S, 3]
    latents: np.ndarray  # float32 [N, num_ws, w_dim]
    masks: np.ndarray | None  # uint8 [N, S, S] class indices into class_names
    class_names: tuple[str, ...]
    scores: np.ndarray | None = None  # SCS/SIE: pixel agreement with the target mask


@dataclass(frozen=True)
class Progress:
    iteration: int  # 1-based
    total: int
    loss: float
    preview: np.ndarray | None  # uint8 [S, S, 3], the first image, every `preview_every` iterations


class SemanticsEngine(abc.ABC):
    """One interface for every backend of the semantics service."""

    @property
    @abc.abstractmethod
    def info(self) -> SemanticsInfo:
        """The model and its heads now (FitHead adds heads while serving)."""

    @abc.abstractmethod
    async def sample(self, seeds: list[int] | None, latents: np.ndarray | None, psi: float,
                     head: str | None) -> Samples:
        """Images (and masks by `head`) for seeds or latents [N, num_ws, w_dim] / [N, w_dim]."""

    @abc.abstractmethod
    async def segment(self, latents: np.ndarray, head: str) -> np.ndarray:
        """uint8 masks [N, S, S] of the images the latents make."""

    @abc.abstractmethod
    async def fit_head(self, name: str, latents: np.ndarray, masks: np.ndarray, class_names: tuple[str, ...],
                       seed: int, iterations: int | None, replace: bool,
                       time_remaining: float | None) -> HeadSummary:
        """Fit, save and register a few-shot head. Raises AlreadyExists, ResourceExhausted."""

    @abc.abstractmethod
    def sample_conditional(self, target_mask: np.ndarray, head: str, num_samples: int, seed: int, n_init: int,
                           iterations: int, lr: float, space: str, psi: float, preview_every: int,
                           time_remaining: float | None) -> AsyncIterator[Progress | Samples]:
        """SCS: Progress after every iteration, then the Samples. Leaving the iteration stops the job."""

    @abc.abstractmethod
    def edit(self, latent: np.ndarray, target_mask: np.ndarray, head: str, iterations: int, lr: float,
             space: str, preview_every: int, time_remaining: float | None) -> AsyncIterator[Progress | Samples]:
        """SIE, streamed like `sample_conditional`."""

    async def close(self) -> None:
        """Stop running jobs and release resources."""


class EmbeddedSemanticsEngine(GraphCalls, SemanticsEngine):
    """Runs a `SemanticsPipeline` in-process; `heads` (a HeadStore) owns the user heads FitHead saves."""

    def __init__(self, pipeline, heads, workers: int = 1, max_jobs: int = 2,
                 metrics: ServingMetrics | None = None, jobs: JobRunner | None = None, policy=None):
        if workers < 1:
            raise ValueError(f"workers: must be >= 1, got {workers}")
        self._pipeline = pipeline
        self._heads = heads
        self._metrics = metrics or ServingMetrics()
        self._work = WorkerPool(workers, self._metrics)
        # with a BatchPolicy, Sample and Segment share graph runs (the pipeline's prepare/run)
        self._batcher = None if policy is None else DynamicBatcher(pipeline, "semantics", policy, self._metrics)
        self._jobs = jobs or JobRunner(max_jobs, self._metrics)
        self._heads_stamp = self._folder_stamp()

    @classmethod
    def from_dir(cls, models_dir: str | Path, heads_dir: str | Path, device: str = "auto", workers: int = 1,
                 max_jobs: int = 2, metrics: ServingMetrics | None = None,
                 jobs: JobRunner | None = None, onnx=None, policy=None, max_user_heads: int | None = None,
                 max_heads_bytes: int | None = None) -> "EmbeddedSemanticsEngine":
        """Load <models>/stylegan, segmenter and heads, plus the user heads in `heads_dir` (blocking).
        `jobs`: a job runner shared with other engines (else one of `max_jobs` of its own);
        `onnx`: an OnnxModels exported from the bundle; `policy`: a BatchPolicy for Sample/Segment;
        `max_user_heads`, `max_heads_bytes`: the limits FitHead keeps to (None: none). User heads already
        over them are loaded all the same, with a warning."""
        import torch
        from semgen.pipelines.semantics import HeadStore, SemanticsPipeline

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        pipeline = SemanticsPipeline.from_dir(models_dir, device=device, extra_heads_dir=heads_dir, onnx=onnx)
        heads = HeadStore.open(heads_dir, models_dir, max_user_heads, max_heads_bytes)
        over = heads.over_limits()
        if over:
            log.warning("the user heads in %s are over the limits (--max-user-heads, --max-heads-bytes): %s; "
                        "they are served, but FitHead adds no new head until there is room", heads_dir, over)
        return cls(pipeline, heads, workers=workers, max_jobs=max_jobs, metrics=metrics, jobs=jobs, policy=policy)

    @property
    def info(self) -> SemanticsInfo:
        p = self._pipeline
        heads = {}
        if p.segmenter is not None:
            heads[SEGMENTER] = HeadSummary(SEGMENTER, SEGMENTER, p.predictor_classes(SEGMENTER), bundled=True)
        for name, head in list(p.heads.items()):  # a job thread may add a head meanwhile
            heads[name] = HeadSummary(name, head.kind, p.predictor_classes(name), self._heads.is_bundled(name),
                                      self._heads.shots(name))
        largest = max((p.sample_bytes(name) for name in heads), default=0)
        return SemanticsInfo(int(p.image_size), tuple(p.latent_shape), heads, int(largest))

    # ---- forward work -------------------------------------------------------------------

    async def sample(self, seeds, latents, psi, head) -> Samples:
        classes = self._classes(head) if head else ()
        args = dict(seeds=seeds, latents=latents, psi=psi, predictor=head or None)
        if self._batcher is not None:
            r = await self._batcher.call(Op.SAMPLE, args)
        else:
            r = await self._work.call(Op.SAMPLE, _head_errors(self._pipeline.sample), **args)
        return Samples(r.images, r.latents, r.masks, classes)

    async def segment(self, latents, head) -> np.ndarray:
        self._classes(head)
        if self._batcher is not None:
            return (await self._batcher.call(Op.SAMPLE, dict(latents=latents, predictor=head), label="segment")).masks
        return await self._work.call("segment", _head_errors(self._pipeline.segment), latents, head)

    def _classes(self, head: str) -> tuple[str, ...]:
        return _head_errors(self._pipeline.predictor_classes)(head)

    # ---- iterative jobs -----------------------------------------------------------------

    async def fit_head(self, name, latents, masks, class_names, seed, iterations, replace,
                       time_remaining) -> HeadSummary:
        pipeline = self._pipeline

        def run(on_step, _check):
            from semgen.pipelines.semantics import FewShotSchedule, HeadExists, HeadLimit

            try:  # reserved on the job thread, so two requests cannot both take a name
                with self._heads.reserve(name, replace):
                    steps = iterations or FewShotSchedule.iterations(len(latents))
                    head = pipeline.fit_head(latents, masks, class_names, seed=seed, iterations=steps,
                                             on_step=on_step)
                    training = dict(method="few-shot LSE (FitHead)", shots=len(latents), seed=seed, iterations=steps)
                    self._heads.save(name, head, training)
                    pipeline.add_head(name, head)
                    return HeadSummary(name, head.kind, tuple(class_names), bundled=False, shots=len(latents))
            except HeadExists as e:
                raise AlreadyExists(str(e)) from None
            except HeadLimit as e:
                raise ResourceExhausted(str(e)) from None

        async for event in self._job("fit_head", run, iterations or 0, 0, time_remaining):
            if isinstance(event, HeadSummary):  # FitHead is unary: its progress is not sent
                return event
        raise RuntimeError("fit_head: the job ended without a result")

    def sample_conditional(self, target_mask, head, num_samples, seed, n_init, iterations, lr, space, psi,
                           preview_every, time_remaining) -> AsyncIterator[Progress | Samples]:
        def run(on_step, check):
            r = self._pipeline.sample_conditional(target_mask, head, num_samples, seed, n_init=n_init,
                                                  iterations=iterations, lr=lr, space=space, psi=psi,
                                                  on_step=on_step, on_candidates=check)
            return Samples(r.images, r.latents, r.masks, self._classes(head), r.scores)

        return self._job("sample_conditional", run, iterations, preview_every, time_remaining)

    def edit(self, latent, target_mask, head, iterations, lr, space, preview_every,
             time_remaining) -> AsyncIterator[Progress | Samples]:
        def run(on_step, _check):
            r = self._pipeline.edit(latent, target_mask, head, iterations=iterations, lr=lr, space=space,
                                    on_step=on_step)
            return Samples(r.images, r.latents, r.masks, self._classes(head), r.scores)

        return self._job("edit", run, iterations, preview_every, time_remaining)

    def _job(self, op: str, run: Callable, total: int, preview_every: int,
             time_remaining: float | None) -> AsyncIterator:
        """Run `run(on_step, check)` as a job: a Progress per step (with a preview of the first image every
        `preview_every` steps), then what `run` returned. `check(*_)` is for long phases before the first
        step (SCS's candidates): it raises JobStopped like `on_step` but posts nothing, so the events of a
        stream stay the same. Leaving the iteration stops the job."""

        def job(control: JobControl):
            def on_step(iteration: int, loss: float, images) -> None:
                control.check(iteration)
                preview = None
                if preview_every and iteration % preview_every == 0:
                    from semgen.data.loaders import to_uint8

                    preview = to_uint8(images[:1])[0]
                control.post(Progress(iteration, total, float(loss), preview))

            def check(*_progress) -> None:
                control.check(0)  # no step done yet

            return run(on_step, check)

        return self._jobs.stream(op, job, total, time_remaining)

    @property
    def running_jobs(self) -> int:
        """Iterative jobs holding a slot now."""
        return self._jobs.running

    def take_in_saved_heads(self) -> None:
        """Load the user heads another process saved in the heads folder since this engine last looked (a Ray Serve
        replica beside the one that fitted them); a stat of the folder when nothing changed."""
        stamp = self._folder_stamp()  # before the scan: a save that lands during it changes the stamp again
        if stamp == self._heads_stamp:
            return
        self._heads_stamp = stamp
        self._heads.rescan()
        for name, head in self._heads.load():
            self._pipeline.add_head(name, head)

    def _folder_stamp(self) -> int | None:
        folder = self._heads.folder
        return folder.stat().st_mtime_ns if folder.is_dir() else None

    def run_batch(self, requests: list[tuple[str, dict]]) -> list:
        """Forward requests [(op, args)] run together on this thread, as TorchServe hands the handler a batch;
        each request's result, or its own exception."""
        return run_batch(self._pipeline, requests)

    async def close(self) -> None:
        await self._jobs.close()
        if self._batcher is not None:
            await self._batcher.close()
        await self._work.close()


def _head_errors(fn: Callable) -> Callable:
    """`fn` with the pipeline's KeyError for an unknown predictor ("head: ...") as NotFound."""
    return not_found_errors(fn, "head")
