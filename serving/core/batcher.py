"""The dynamic batcher: forward-only requests share one graph run.

A request is first prepared (checked, its rows made: `ops.prepare`) on a small thread pool, so bad
input fails at once and preparing overlaps the running batch. Prepared requests wait in a bounded
queue. The batch loop takes the oldest and waits until `max_batch` requests for the same graph (or
`max_batch_bytes` of their estimated working memory) are there or the oldest has waited `max_delay`
seconds, then runs them as one graph run
(`semgen.pipelines.forward.run_prepared`) on its own thread; the next batch gathers meanwhile. A
full queue refuses at once (RESOURCE_EXHAUSTED) instead of letting latency grow without bound.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import time
from dataclasses import dataclass, field
from typing import Any

from serving.core.errors import ResourceExhausted, Unavailable, client_error
from serving.core.metrics import ServingMetrics


@dataclass(frozen=True)
class BatchPolicy:
    max_batch: int = 8  # requests per graph run (like TorchServe's batchSize)
    max_delay: float = 0.005  # seconds from its arrival the oldest request may wait for others (maxBatchDelay)
    max_queue: int = 64  # requests waiting; one more is refused
    # estimated working bytes of one graph run (Prepared.nbytes): a 1024 px sample needs ~250x a 64 px one, so a
    # batch is also capped by bytes; a request over it alone still runs, alone (its size is bounded per request)
    max_batch_bytes: int = 1024 * 1024 * 1024

    def check(self) -> None:
        if self.max_batch < 1 or self.max_queue < 1 or self.max_delay < 0 or self.max_batch_bytes < 1:
            raise ValueError("--max-batch, --max-queue and --max-batch-bytes must be >= 1 and --max-batch-delay-ms >= 0")


@dataclass
class _Waiting:
    op: str
    prepared: Any  # a semgen.pipelines.forward.Prepared
    future: asyncio.Future
    arrived: float = field(default_factory=time.perf_counter)  # max_delay counts from here
    queued: float = 0.0  # prepared and queued: the queue-time metric counts from here
    left_queue: bool = False  # counted out of the queue-depth gauge


class DynamicBatcher:
    """Batches calls of `ops` (a `ForwardOps`: a pipeline with prepare/run) under `policy`."""

    def __init__(self, ops: Any, name: str, policy: BatchPolicy = BatchPolicy(),
                 metrics: ServingMetrics | None = None):
        policy.check()
        self._ops, self.name, self.policy = ops, name, policy
        self._metrics = metrics or ServingMetrics()
        self._metrics.engine_queue_limit.inc(policy.max_queue)
        self._queue: collections.deque[_Waiting] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None
        self._compute = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"semgen-batch-{name}")
        # one thread: preparing overlaps the running batch; more would only compete for the cores
        self._prepare = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"semgen-prepare-{name}")
        self._admitted = 0  # requests preparing or waiting for their batch: what max_queue bounds
        self._running: list[_Waiting] = []  # the batch computing now
        self._closed = False

    async def call(self, op: str, args: dict, label: str | None = None) -> Any:
        """The result of `op` on `args`; InvalidInput / NotFound for bad requests. `label`: the op's
        name in the metrics, when it is not `op` (Segment runs as sample)."""
        if self._closed:
            raise Unavailable("engine: shutting down; retry on another replica")
        if self._admitted >= self.policy.max_queue:
            raise ResourceExhausted(f"queue: the {self.name} queue is full ({self.policy.max_queue} requests "
                                    "waiting); retry with backoff")
        loop = asyncio.get_running_loop()
        waiting = _Waiting(label or op, None, loop.create_future())
        self._admitted += 1
        self._metrics.engine_queue_depth.inc()
        try:
            try:
                waiting.prepared = await loop.run_in_executor(self._prepare, self._ops.prepare, op, args)
            except (ValueError, KeyError) as e:
                raise client_error(e) from None
            waiting.queued = time.perf_counter()
            self._queue.append(waiting)
            self._start()
            self._arrived.set()
            result = await waiting.future
        finally:
            self._leave_queue(waiting)  # failed or cancelled before its batch started
        if isinstance(result, Exception):  # the graph run failed: a bug, not the client's input
            raise result
        return result

    def _leave_queue(self, waiting: _Waiting) -> None:
        """Count a request out of the queue (once): its batch started, or it failed or left first."""
        if not waiting.left_queue:
            waiting.left_queue = True
            self._admitted -= 1
            self._metrics.engine_queue_depth.dec()

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
                m.engine_queue_latency.labels(op=w.op).observe(started - w.queued)
            m.batch_size.labels(model=self.name).observe(len(batch))
            self._running = batch
            try:
                results = await loop.run_in_executor(self._compute, _run_prepared, self._ops,
                                                     [w.prepared for w in batch])
            except Exception as e:  # a bug in the batch itself: every request in it fails
                results = [e] * len(batch)
            self._running = []
            elapsed = time.perf_counter() - started
            for w, result in zip(batch, results):
                m.engine_compute_latency.labels(op=w.op).observe(elapsed)
                if not w.future.done():  # the caller may have gone (cancelled)
                    w.future.set_result(result)

    async def _next_batch(self) -> list[_Waiting]:
        """Up to max_batch live requests for the oldest one's graph, once that many are queued or
        the oldest has waited max_delay."""
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            oldest = self._queue[0]
            deadline = oldest.arrived + self.policy.max_delay  # preparing took part of it already
            while not self._full(oldest) and (left := deadline - time.perf_counter()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except asyncio.TimeoutError:
                    break
            batch, rest, nbytes = [], collections.deque(), 0
            for w in self._queue:
                fits = (w.prepared.key == oldest.prepared.key and len(batch) < self.policy.max_batch
                        and (not batch or nbytes + w.prepared.nbytes <= self.policy.max_batch_bytes))
                nbytes += w.prepared.nbytes if fits else 0
                (batch if fits else rest).append(w)
            self._queue = rest
            for w in batch:
                self._leave_queue(w)
            live = [w for w in batch if not w.future.done()]  # drop requests cancelled while queued
            if live:
                return live

    def _full(self, oldest: _Waiting) -> bool:
        """Whether the requests queued for the oldest one's graph fill a batch, by count or by bytes."""
        same = [w.prepared.nbytes for w in self._queue if w.prepared.key == oldest.prepared.key]
        return len(same) >= self.policy.max_batch or sum(same) >= self.policy.max_batch_bytes

    async def close(self) -> None:
        """Refuse new calls, finish every admitted one (the server's grace has passed already), stop."""
        self._closed = True
        while self._admitted or self._running:
            await asyncio.sleep(0.01)
        if self._loop_task is not None:
            self._loop_task.cancel()
        await asyncio.to_thread(self._compute.shutdown, wait=True)
        await asyncio.to_thread(self._prepare.shutdown, wait=True)


def _run_prepared(ops, prepared):
    from semgen.pipelines.forward import run_prepared

    return run_prepared(ops, prepared)


