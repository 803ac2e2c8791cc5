"""A small thread pool for blocking model calls, timed into the engine queue/compute metrics."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from typing import Callable

from serving.core.errors import InvalidInput, Unavailable
from serving.core.metrics import ServingMetrics


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
