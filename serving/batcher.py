"""The dynamic batcher: forward-only requests share one graph run.

Requests wait in a bounded queue. The batch loop takes the oldest request and waits until
`max_batch` requests are there or the oldest has waited `max_delay` seconds, then runs them as one
`semgen.pipelines.forward.run_batch` on its own thread; the next batch gathers meanwhile. A full
queue refuses at once (RESOURCE_EXHAUSTED) instead of letting latency grow without bound.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from dataclasses import dataclass, field
from typing import Any

from serving.engine import InvalidInput, NotFound, ResourceExhausted, Unavailable
from serving.metrics import ServingMetrics


@dataclass(frozen=True)
class BatchPolicy:
    max_batch: int = 8  # requests per graph run (like TorchServe's batchSize)
    max_delay: float = 0.005  # seconds the oldest request may wait for others (maxBatchDelay)
    max_queue: int = 64  # requests waiting; one more is refused

    def check(self) -> None:
        if self.max_batch < 1 or self.max_queue < 1 or self.max_delay < 0:
            raise ValueError("--max-batch and --max-queue must be >= 1 and --max-batch-delay-ms >= 0")


@dataclass
class _Waiting:
    op: str
    args: dict
    future: asyncio.Future
    submitted: float = field(default_factory=time.perf_counter)


class DynamicBatcher:
    """Batches calls of `ops` (a `ForwardOps`: a pipeline with prepare/run) under `policy`."""

    def __init__(self, ops: Any, name: str, policy: BatchPolicy = BatchPolicy(),
                 metrics: ServingMetrics | None = None):
        policy.check()
        self._ops, self.name, self.policy = ops, name, policy
        self._metrics = metrics or ServingMetrics()
        self._queue: collections.deque[_Waiting] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None
        self._compute = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"semgen-batch-{name}")
        self._closed = False

    async def call(self, op: str, args: dict) -> Any:
        """The result of `op` on `args`; InvalidInput / NotFound for bad requests."""
        if self._closed:
            raise Unavailable("engine: shutting down; retry on another replica")
        if len(self._queue) >= self.policy.max_queue:
            raise ResourceExhausted(f"queue: the {self.name} queue is full ({self.policy.max_queue} requests "
                                    "waiting); retry with backoff")
        waiting = _Waiting(op, args, asyncio.get_running_loop().create_future())
        self._queue.append(waiting)
        self._metrics.engine_queue_depth.inc()
        self._start()
        self._arrived.set()
        result = await waiting.future
        if isinstance(result, Exception):
            raise _client_error(result)
        return result

    def _start(self) -> None:
        if self._loop_task is None:
            self._arrived = asyncio.Event()
            self._loop_task = asyncio.ensure_future(self._batch_loop())

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            started = time.perf_counter()
            m = self._metrics
            for w in batch:
                m.engine_queue_latency.labels(op=w.op).observe(started - w.submitted)
            m.batch_size.labels(model=self.name).observe(len(batch))
            try:
                results = await loop.run_in_executor(self._compute, _run_batch, self._ops,
                                                     [(w.op, w.args) for w in batch])
            except Exception as e:  # a bug in the batch itself: every request in it fails
                results = [e] * len(batch)
            elapsed = time.perf_counter() - started
            for w, result in zip(batch, results):
                m.engine_compute_latency.labels(op=w.op).observe(elapsed)
                if not w.future.done():  # the caller may have gone (cancelled)
                    w.future.set_result(result)

    async def _next_batch(self) -> list[_Waiting]:
        """Up to max_batch live requests, once the batch is full or its oldest waited max_delay."""
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            deadline = self._queue[0].submitted + self.policy.max_delay
            while len(self._queue) < self.policy.max_batch and (left := deadline - time.perf_counter()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except asyncio.TimeoutError:
                    break
            batch = [self._queue.popleft() for _ in range(min(self.policy.max_batch, len(self._queue)))]
            self._metrics.engine_queue_depth.dec(len(batch))
            live = [w for w in batch if not w.future.done()]  # drop requests cancelled while queued
            if live:
                return live

    async def close(self) -> None:
        """Refuse new calls, finish what is queued, stop."""
        self._closed = True
        while self._queue:
            await asyncio.sleep(0.01)
        if self._loop_task is not None:
            self._loop_task.cancel()
        await asyncio.to_thread(self._compute.shutdown, wait=True)


def _run_batch(ops, requests):
    from semgen.pipelines.forward import run_batch

    return run_batch(ops, requests)


def _client_error(e: Exception) -> Exception:
    """A pipeline's input errors as the engine's: ValueError -> InvalidInput, KeyError (an unknown
    name, "head: ...") -> NotFound; anything else stays what it is (an internal error)."""
    if isinstance(e, ValueError):
        return InvalidInput(str(e))
    if isinstance(e, KeyError):
        return NotFound(str(e.args[0]) if e.args else "name: not found")
    return e
