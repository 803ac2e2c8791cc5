"""Iterative jobs shared by the engines: optimisation loops that stream progress and can be stopped.

A job is a blocking function that runs an optimisation (head fitting, SCS, SIE, IMAGINE) on its
own thread, at most `max_jobs` at once across the engine, so a long job never holds up forward
work. It gets a `JobControl`: after every iteration it calls `control.check(iteration)`, which
raises `JobStopped` once the request is cancelled or past its deadline (so the job ends within one
iteration), and `control.post(progress)`, which hands a progress event to the event loop
(`call_soon_threadsafe` into an asyncio.Queue). `JobRunner.stream` yields those events and then
what the job returned; however the caller leaves that iteration (done, cancelled, error), the
job's stop flag is set.

Metrics (op = the job's name): semgen_jobs_running{op}, semgen_jobs_total{op, outcome} with
outcome ok, cancelled, deadline, invalid, error or rejected (over a limit: running jobs, or one the job
raised as ResourceExhausted, such as the user heads'), and the compute time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import Any, AsyncIterator, Callable

from serving.core.errors import (AlreadyExists, DeadlineExceeded, InvalidInput, NotFound, ResourceExhausted, Unavailable)
from serving.core.metrics import ServingMetrics

_PROGRESS, _DONE, _FAILED = "progress", "done", "failed"


class JobStopped(Exception):
    """Raised inside a job's step callback to end the job early."""

    def __init__(self, reason: str, iteration: int):
        super().__init__(f"{reason} at iteration {iteration}")
        self.reason = reason  # "cancelled" or "deadline"
        self.iteration = iteration


class JobControl:
    """What a running job sees: `check` after every iteration, `post` for progress."""

    def __init__(self, stop: threading.Event, deadline: float | None, post: Callable[[str, Any], None]):
        self._stop = stop
        self._deadline = deadline
        self._post = post

    def check(self, iteration: int) -> None:
        """Raise JobStopped if the request is past its deadline or was cancelled."""
        # The deadline first: grpc also cancels a call whose deadline passed, which sets the stop flag.
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise JobStopped("deadline", iteration)
        if self._stop.is_set():
            raise JobStopped("cancelled", iteration)

    def post(self, progress) -> None:
        """Hand a progress event to the caller (thread-safe; never blocks)."""
        self._post(_PROGRESS, progress)


def job_seconds(client: float | None, server: float | None) -> float | None:
    """How long a job may run: the client's deadline, capped by the server's."""
    limits = [t for t in (client, server) if t is not None]
    return min(limits) if limits else None


class JobRunner:
    """Runs iterative jobs on their own threads, at most `max_jobs` at once."""

    def __init__(self, max_jobs: int, metrics: ServingMetrics, name: str = "semgen-job",
                 max_seconds: float | None = None):
        if max_jobs < 1:
            raise ValueError(f"max_jobs: must be >= 1, got {max_jobs}")
        self._pool = concurrent.futures.ThreadPoolExecutor(max_jobs, thread_name_prefix=name)
        self._metrics = metrics
        self._max_jobs = max_jobs
        self.max_seconds = max_seconds  # the server's own deadline for every job (the client's may be shorter)
        self._lock = threading.Lock()  # guards `_running`; job threads touch it too
        self._running: set[threading.Event] = set()  # the stop flag of every running job
        self._closed = False

    @property
    def running(self) -> int:
        """How many jobs hold a slot now (0 once every job has ended)."""
        with self._lock:
            return len(self._running)

    async def stream(self, op: str, job: Callable[[JobControl], Any], total: int,
                     time_remaining: float | None) -> AsyncIterator:
        """Run `job(control)` on a job thread; yield every progress it posts, then what it returned.

        Raises ResourceExhausted at the limit, Unavailable when shutting down, DeadlineExceeded
        when the deadline stopped the job, InvalidInput for the job's ValueErrors (the pipeline's
        input checks), and AlreadyExists/NotFound/other errors as the job raised them.
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
        time_remaining = job_seconds(time_remaining, self.max_seconds)
        deadline = None if time_remaining is None else time.monotonic() + time_remaining

        def post(kind: str, item) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, (kind, item))
            except RuntimeError:  # the event loop is closed: nobody listens any more
                stop.set()

        def work() -> None:
            started = time.perf_counter()
            outcome = "error"
            try:
                result = job(JobControl(stop, deadline, post))
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
                post(_FAILED, e if isinstance(e, InvalidInput) else InvalidInput(str(e)))
            except (AlreadyExists, NotFound) as e:
                outcome = "invalid"
                post(_FAILED, e)
            except ResourceExhausted as e:  # a limit the job found (stored heads)
                outcome = "rejected"
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
            self._pool.submit(work)
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

    def stop_running(self) -> None:
        """Stop every running job: each ends at its next check, as if its caller had cancelled."""
        with self._lock:
            for stop in self._running:
                stop.set()

    async def close(self) -> None:
        """Stop every running job and wait for their threads; no new job starts."""
        self._closed = True
        self.stop_running()
        await asyncio.to_thread(self._pool.shutdown, wait=True)
