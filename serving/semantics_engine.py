"""The linear-semantics engine: sampling and segmentation, few-shot heads, SCS and SIE.

Forward work (Sample, Segment) runs on a `WorkerPool` like the pyramid engine. Iterative jobs
(head fitting, SCS, SIE) run on their own threads, at most `max_jobs` at once, so a long job never
holds up sampling. A job reports every optimisation step through the pipeline's `on_step`
callback, which runs on the job's thread: it hands progress to the event loop
(`call_soon_threadsafe` into an asyncio.Queue) and raises `JobStopped` once the request is
cancelled or past its deadline, so the job ends within one iteration.

torch and semgen are imported only by `from_dir` and on job threads.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable, Iterable

import numpy as np

from serving.engine import (
    AlreadyExists,
    DeadlineExceeded,
    InvalidInput,
    NotFound,
    ResourceExhausted,
    Unavailable,
    WorkerPool,
)
from serving.metrics import ServingMetrics

SEGMENTER = "segmenter"  # the pipeline's name for its pixel-space segmenter (semgen.pipelines.semantics)


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


class JobStopped(Exception):
    """Raised inside the pipeline's on_step to end a job early."""

    def __init__(self, reason: str, iteration: int):
        super().__init__(f"{reason} at iteration {iteration}")
        self.reason = reason  # "cancelled" or "deadline"
        self.iteration = iteration


_PROGRESS, _DONE, _FAILED = "progress", "done", "failed"


class EmbeddedSemanticsEngine(SemanticsEngine):
    """Runs a `SemanticsPipeline` in-process. User heads are saved under `heads_dir`."""

    def __init__(self, pipeline, heads_dir: str | Path, bundled: Iterable[str] = (),
                 shots: dict[str, int] | None = None, workers: int = 1, max_jobs: int = 2,
                 metrics: ServingMetrics | None = None):
        if workers < 1 or max_jobs < 1:
            raise ValueError(f"workers and max_jobs: must be >= 1, got {workers} and {max_jobs}")
        self._pipeline = pipeline
        self._heads_dir = Path(heads_dir)
        self._bundled = frozenset(bundled)
        self._shots = dict(shots or {})
        self._metrics = metrics or ServingMetrics()
        self._work = WorkerPool(workers, self._metrics)
        self._jobs = concurrent.futures.ThreadPoolExecutor(max_jobs, thread_name_prefix="semgen-job")
        self._max_jobs = max_jobs
        self._lock = threading.Lock()  # guards the two sets below; job threads touch them too
        self._running: set[threading.Event] = set()  # the stop flag of every running job
        self._fitting: set[str] = set()  # head names being fitted now
        self._closed = False

    @classmethod
    def from_dir(cls, models_dir: str | Path, heads_dir: str | Path, device: str = "auto", workers: int = 1,
                 max_jobs: int = 2, metrics: ServingMetrics | None = None) -> "EmbeddedSemanticsEngine":
        """Load <models>/stylegan, segmenter and heads, plus the user heads in `heads_dir` (blocking)."""
        import torch
        from semgen.checkpoints import read_config
        from semgen.pipelines.semantics import SemanticsPipeline

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        pipeline = SemanticsPipeline.from_dir(models_dir, device=device, extra_heads_dir=heads_dir)
        user = {p.parent.name: int(read_config(p.parent).get("training", {}).get("shots", 0))
                for p in Path(heads_dir).glob("*/config.json")}
        # A user head with a bundled head's name replaced it in the pipeline (it loads last).
        bundled = {p.parent.name for p in (Path(models_dir) / "heads").glob("*/config.json")} - set(user)
        return cls(pipeline, heads_dir, bundled, user, workers=workers, max_jobs=max_jobs, metrics=metrics)

    @property
    def info(self) -> SemanticsInfo:
        p = self._pipeline
        heads = {}
        if p.segmenter is not None:
            heads[SEGMENTER] = HeadSummary(SEGMENTER, SEGMENTER, p.predictor_classes(SEGMENTER), bundled=True)
        for name, head in list(p.heads.items()):  # a job thread may add a head meanwhile
            heads[name] = HeadSummary(name, head.kind, p.predictor_classes(name), name in self._bundled,
                                      self._shots.get(name, 0))
        return SemanticsInfo(int(p.image_size), tuple(p.latent_shape), heads)

    # ---- forward work -------------------------------------------------------------------

    async def sample(self, seeds, latents, psi, head) -> Samples:
        classes = self._classes(head) if head else ()
        r = await self._work.call("sample", _head_errors(self._pipeline.sample), seeds=seeds, latents=latents,
                                  psi=psi, predictor=head or None)
        return Samples(r.images, r.latents, r.masks, classes)

    async def segment(self, latents, head) -> np.ndarray:
        self._classes(head)
        return await self._work.call("segment", _head_errors(self._pipeline.segment), latents, head)

    def _classes(self, head: str) -> tuple[str, ...]:
        return _head_errors(self._pipeline.predictor_classes)(head)

    # ---- iterative jobs -----------------------------------------------------------------

    async def fit_head(self, name, latents, masks, class_names, seed, iterations, replace,
                       time_remaining) -> HeadSummary:
        pipeline = self._pipeline

        def run(on_step):
            from semgen.pipelines.semantics import FewShotSchedule

            # Checked on the job thread, under the lock, so two requests cannot both take a name.
            with self._lock:
                if name in self._fitting:
                    raise AlreadyExists(f"name: a head named {name!r} is being fitted now")
                if name in pipeline.heads and not replace:
                    raise AlreadyExists(f"name: a head named {name!r} exists; set replace to overwrite it")
                self._fitting.add(name)
            try:
                steps = iterations or FewShotSchedule.iterations(len(latents))
                head = pipeline.fit_head(latents, masks, class_names, seed=seed, iterations=steps, on_step=on_step)
                training = dict(method="few-shot LSE (FitHead)", shots=len(latents), seed=seed, iterations=steps)
                pipeline.save_head(name, head, self._heads_dir, training=training)
                self._shots[name] = len(latents)
                return HeadSummary(name, head.kind, tuple(class_names), bundled=False, shots=len(latents))
            finally:
                with self._lock:
                    self._fitting.discard(name)

        async for event in self._job("fit_head", run, iterations or 0, 0, time_remaining):
            if isinstance(event, HeadSummary):  # FitHead is unary: its progress is not sent
                return event
        raise RuntimeError("fit_head: the job ended without a result")

    def sample_conditional(self, target_mask, head, num_samples, seed, n_init, iterations, lr, space, psi,
                           preview_every, time_remaining) -> AsyncIterator[Progress | Samples]:
        def run(on_step):
            r = self._pipeline.sample_conditional(target_mask, head, num_samples, seed, n_init=n_init,
                                                  iterations=iterations, lr=lr, space=space, psi=psi,
                                                  on_step=on_step)
            return Samples(r.images, r.latents, r.masks, self._classes(head), r.scores)

        return self._job("sample_conditional", run, iterations, preview_every, time_remaining)

    def edit(self, latent, target_mask, head, iterations, lr, space, preview_every,
             time_remaining) -> AsyncIterator[Progress | Samples]:
        def run(on_step):
            r = self._pipeline.edit(latent, target_mask, head, iterations=iterations, lr=lr, space=space,
                                    on_step=on_step)
            return Samples(r.images, r.latents, r.masks, self._classes(head), r.scores)

        return self._job("edit", run, iterations, preview_every, time_remaining)

    async def _job(self, op: str, run: Callable, total: int, preview_every: int,
                   time_remaining: float | None) -> AsyncIterator:
        """Run `run(on_step)` on a job thread; yield a Progress per step, then what `run` returned.

        However the caller leaves the iteration (done, cancelled, error), the job's stop flag is
        set, and the job ends at its next step.
        """
        if self._closed:
            raise Unavailable("engine: shutting down; retry on another replica")
        m = self._metrics
        stop = threading.Event()
        with self._lock:
            if len(self._running) >= self._max_jobs:
                m.jobs.labels(op=op, outcome="rejected").inc()
                raise ResourceExhausted(f"jobs: the server is at its limit of {self._max_jobs} running iterative "
                                        f"jobs (--max-jobs); retry later")
            self._running.add(stop)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        deadline = None if time_remaining is None else time.monotonic() + time_remaining

        def post(kind: str, item) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, (kind, item))
            except RuntimeError:  # the event loop is closed: nobody listens any more
                stop.set()

        def on_step(iteration: int, loss: float, images) -> None:
            # The deadline first: grpc also cancels a call whose deadline passed, which sets `stop`.
            if deadline is not None and time.monotonic() > deadline:
                raise JobStopped("deadline", iteration)
            if stop.is_set():
                raise JobStopped("cancelled", iteration)
            preview = None
            if preview_every and iteration % preview_every == 0:
                from semgen.data.loaders import to_uint8

                preview = to_uint8(images[:1])[0]
            post(_PROGRESS, Progress(iteration, total, float(loss), preview))

        def work() -> None:
            started = time.perf_counter()
            outcome = "error"
            try:
                result = run(on_step)
                outcome = "ok"
                post(_DONE, result)
            except JobStopped as e:
                outcome = e.reason
                # A cancelled caller is gone; one still listening was stopped by `close`.
                post(_FAILED, DeadlineExceeded(f"deadline: passed at iteration {e.iteration} of {total}; "
                                               f"the job stopped") if e.reason == "deadline" else
                     Unavailable("engine: shutting down, the job stopped; retry on another replica"))
            except ValueError as e:  # the pipeline's input checks (convention 4)
                outcome = "invalid"
                post(_FAILED, InvalidInput(str(e)))
            except (AlreadyExists, NotFound) as e:
                outcome = "invalid"
                post(_FAILED, e)
            except Exception as e:
                post(_FAILED, e)
            finally:
                # Free the slot before the gauge drops, so a zero gauge means a new job gets a slot.
                with self._lock:
                    self._running.discard(stop)
                m.engine_compute_latency.labels(op=op).observe(time.perf_counter() - started)
                m.jobs.labels(op=op, outcome=outcome).inc()
                m.jobs_running.labels(op=op).dec()

        m.jobs_running.labels(op=op).inc()
        try:
            self._jobs.submit(work)
        except RuntimeError:  # the pool is shut down
            m.jobs_running.labels(op=op).dec()
            with self._lock:
                self._running.discard(stop)
            raise Unavailable("engine: shutting down; retry on another replica") from None
        try:
            while True:
                kind, item = await events.get()
                if kind == _FAILED:
                    raise item
                yield item
                if kind == _DONE:
                    return
        finally:
            stop.set()

    async def close(self) -> None:
        self._closed = True
        with self._lock:
            for stop in self._running:
                stop.set()
        await asyncio.to_thread(self._jobs.shutdown, wait=True)
        await self._work.close()


def _head_errors(fn: Callable) -> Callable:
    """`fn` with the pipeline's KeyError for an unknown predictor ("head: ...") as NotFound."""

    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyError as e:
            message = str(e.args[0]) if e.args else ""
            if message.startswith("head:"):
                raise NotFound(message) from None
            raise

    return call
