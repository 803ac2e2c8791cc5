"""The IMAGINE engine: image variations of one reference by inverting a classifier.

Every request is one iterative job on a `serving.core.jobs.JobRunner` (its own thread, at most
`max_jobs` jobs at once, shared with the semantics engine when the server passes one runner to
both). Requests are never batched together, so the same request with the same seed gives the same
bytes. The pipeline calls `on_step` after every iteration on the job's thread: it hands progress
(losses, and every `preview_every` iterations the images) to the event loop and raises
`JobStopped` once the request is cancelled or past its deadline, so the job ends within one
iteration.

torch and semgen are imported only by `from_dir`, by `imagine` and on job threads.
"""

from __future__ import annotations

import abc
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

import numpy as np

from serving.core.errors import InvalidInput
from serving.core.jobs import JobControl, JobRunner
from serving.core.metrics import ServingMetrics

OP = "imagine"  # the job's name in the metrics


@dataclass(frozen=True)
class ImagineInfo:
    image_size: int
    class_names: tuple[str, ...]
    layer_names: tuple[str, ...]  # every layer `layers` and `shape_layers` may name
    default_layers: tuple[str, ...]
    shallow_layers: tuple[str, ...]
    deep_layers: tuple[str, ...]
    default_stage1: int
    default_stage2: int


@dataclass(frozen=True)
class ImagineJob:
    """One decoded, checked Imagine request (what the pipeline's `run` and `Controls` take)."""

    reference: np.ndarray  # uint8 [H, W, 3]
    num_variations: int
    seed: int
    stage1: int
    stage2: int
    preview_every: int = 0  # 0 = no previews
    layers: tuple[str, ...] | None = None  # None: the classifier's default layers
    position: tuple[float, float, float] | None = None  # x, y, sigma
    shape_image: np.ndarray | None = None  # uint8 [H, W, 3]
    shape_layers: tuple[str, ...] | None = None
    style_content: np.ndarray | None = None  # uint8 [H, W, 3]
    counterfactual_query: np.ndarray | None = None  # uint8 [H, W, 3]
    query_region: np.ndarray | None = None  # bool [H, W] of the query
    reference_region: np.ndarray | None = None  # bool [H, W] of the reference

    @property
    def total(self) -> int:
        return self.stage1 + self.stage2

    @classmethod
    def from_fields(cls, fields: dict) -> "ImagineJob":
        """The job from its fields as they come out of `serving.core.wire` (lists where tuples were)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


@dataclass(frozen=True)
class StepProgress:
    stage: int  # 1 or 2
    iteration: int  # 1-based, across both stages
    total: int
    losses: dict[str, float]
    previews: np.ndarray | None  # uint8 [K, S, S, 3] every `preview_every` iterations, else None


@dataclass(frozen=True)
class Variations:
    images: np.ndarray  # uint8 [K, S, S, 3]
    target_class: int
    class_name: str
    predicted: np.ndarray  # int [K]
    seeds: tuple[int, ...]


class ImagineEngine(abc.ABC):
    """One interface for every backend of the IMAGINE service."""

    @property
    @abc.abstractmethod
    def info(self) -> ImagineInfo:
        """The classifier and the default schedule."""

    @property
    @abc.abstractmethod
    def running_jobs(self) -> int:
        """Iterative jobs holding a slot now."""

    @abc.abstractmethod
    def imagine(self, job: ImagineJob, time_remaining: float | None) -> AsyncIterator[StepProgress | Variations]:
        """StepProgress after every iteration, then the Variations. Leaving the iteration stops the job.
        Raises InvalidInput (the pipeline's checks) at once, ResourceExhausted over the job limit,
        DeadlineExceeded when the deadline stopped the job."""

    async def close(self) -> None:
        """Stop running jobs and release resources."""


class EmbeddedImagineEngine(ImagineEngine):
    """Runs an `ImaginePipeline` in-process."""

    def __init__(self, pipeline, max_jobs: int = 2, metrics: ServingMetrics | None = None,
                 jobs: JobRunner | None = None):
        from semgen.pipelines.imagine import Schedule

        self._pipeline = pipeline
        self._jobs = jobs or JobRunner(max_jobs, metrics or ServingMetrics())
        default = Schedule()
        p = pipeline
        self._info = ImagineInfo(int(p.image_size), tuple(p.class_names), tuple(p.layer_names),
                                 tuple(p.default_layers), tuple(p.shallow_layers), tuple(p.deep_layers),
                                 int(default.stage1), int(default.stage2))

    @classmethod
    def from_dir(cls, models_dir: str | Path, classifier_spec: str | None = None, device: str = "auto",
                 max_jobs: int = 2, metrics: ServingMetrics | None = None,
                 jobs: JobRunner | None = None) -> "EmbeddedImagineEngine":
        """Load <models>/classifier, or the classifier `classifier_spec` names (e.g.
        'torchvision-resnet50:PATH'), blocking. `jobs`: a job runner shared with other engines."""
        import torch
        from semgen.pipelines.imagine import ImaginePipeline

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        pipeline = ImaginePipeline.from_dir(models_dir, classifier=classifier_spec or None, device=device)
        return cls(pipeline, max_jobs=max_jobs, metrics=metrics, jobs=jobs)

    @property
    def info(self) -> ImagineInfo:
        return self._info

    @property
    def running_jobs(self) -> int:
        return self._jobs.running

    def imagine(self, job: ImagineJob, time_remaining: float | None) -> AsyncIterator[StepProgress | Variations]:
        from semgen.pipelines.imagine import Controls, Position

        pipeline = self._pipeline
        controls = Controls(
            layers=job.layers,
            position=None if job.position is None else Position(*job.position),
            shape_image=job.shape_image,
            shape_layers=job.shape_layers,
            style_content=job.style_content,
            counterfactual_query=job.counterfactual_query,
            query_region=job.query_region,
            reference_region=job.reference_region,
        )
        try:  # before taking a job slot: bad input is INVALID_ARGUMENT even on a busy server
            pipeline.check(job.reference, controls, job.num_variations)
        except ValueError as e:
            raise InvalidInput(str(e)) from None
        schedule = dataclasses.replace(pipeline.default_schedule(controls), stage1=job.stage1, stage2=job.stage2)
        every = job.preview_every

        def run(control: JobControl) -> Variations:
            def on_step(step) -> None:
                control.check(step.iteration)
                previews = step.images() if every and step.iteration % every == 0 else None
                control.post(StepProgress(step.stage, step.iteration, step.total, dict(step.losses), previews))

            r = pipeline.run(job.reference, job.num_variations, job.seed, controls, schedule, on_step=on_step)
            return Variations(r.images, int(r.target_class), r.class_name, np.asarray(r.predicted),
                              tuple(int(s) for s in r.seeds))

        return self._jobs.stream(OP, run, schedule.total, time_remaining)

    async def close(self) -> None:
        await self._jobs.close()
