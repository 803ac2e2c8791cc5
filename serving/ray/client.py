"""RayServeClient: the gateway's calls to the two Ray Serve deployments, through their handles.

Forward models ("pyramid", "semantics") go to semgen-forward's `call`; jobs ("semantics_jobs", "imagine") stream from
semgen-jobs' `stream`. At most `max_in_flight` calls at once (more: RESOURCE_EXHAUSTED). A replica that dies under
a call, or a deployment with no replica left, is UNAVAILABLE: Ray Serve routes the next calls to the replicas alive.
A job the caller leaves is cancelled on its replica, which stops it.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, AsyncIterator

import ray

from serving.core import wire
from serving.core.errors import ResourceExhausted, Unavailable
from serving.core.jobs import job_seconds
from serving.core.metrics import ServingMetrics

FORWARD_MODELS = ("pyramid", "semantics")


class RayServeClient:
    backend = "Ray Serve"
    fits_heads = True  # a fitted head reaches every replica through the heads mirror (serving/ray/heads.py)

    def __init__(self, forward, jobs, metrics: ServingMetrics | None = None, max_in_flight: int = 64,
                 max_job_seconds: float | None = None, on_close=None, head_fitted=None):
        self._forward, self._jobs = forward, jobs.options(stream=True)  # DeploymentHandles
        self._metrics = metrics or ServingMetrics()
        self._max_in_flight, self._in_flight = max_in_flight, 0
        self._metrics.engine_queue_limit.inc(max_in_flight)
        self._max_job_seconds = max_job_seconds
        self._on_close, self._closed = on_close, False
        self.head_fitted = head_fitted  # async (name): keep a fitted head where the gateway keeps its record

    async def call(self, model: str, op: str, args: dict | None = None) -> Any:
        """The single result of a forward op or `info` (any model's: a forward replica loads them all)."""
        if model not in FORWARD_MODELS and op != "info":
            return [v async for v in self.stream(model, op, args)][-1]
        with self._slot(model, op) as first_reply:
            message = wire.pack({"op": op, "args": args or {}})
            try:
                reply = wire.unpack(await self._forward.call.remote(model, message))
            except ray.exceptions.RayError as e:
                raise _unavailable(e) from None
            first_reply(reply)
            return wire.value(reply)

    async def stream(self, model: str, op: str, args: dict | None = None) -> AsyncIterator[Any]:
        """Every event of a job; raises the engine error the replica reported."""
        args = dict(args or {})
        if "time_remaining" in args:  # it stops at the server's deadline; the wait in Ray's queue counts
            args.update(time_remaining=job_seconds(args["time_remaining"], self._max_job_seconds), sent_at=time.time())
        with self._slot(model, op) as first_reply:
            events = self._jobs.stream.remote(model, wire.pack({"op": op, "args": args}))
            try:
                async for message in events:
                    reply = wire.unpack(message)
                    first_reply(reply)
                    yield wire.value(reply)
            except ray.exceptions.RayError as e:
                raise _unavailable(e) from None
            finally:
                events.cancel()  # the caller left (or the job ended): stop it on its replica

    @contextlib.contextmanager
    def _slot(self, model: str, op: str):
        """One call: the in-flight limit, the queue gauge, and `first_reply(reply)` that records the metrics."""
        if self._closed:
            raise Unavailable("engine: shutting down; retry on another replica")
        if self._in_flight >= self._max_in_flight:
            raise ResourceExhausted(f"queue: {self._max_in_flight} calls are waiting for Ray Serve; retry with backoff")
        self._in_flight += 1
        self._metrics.engine_queue_depth.inc()
        sent, waiting = time.perf_counter(), [True]

        def first_reply(reply: dict) -> None:
            if waiting[0]:
                waiting[0] = False
                self._metrics.engine_queue_depth.dec()
                self._metrics.backend_reply(model, op, time.perf_counter() - sent, reply)

        try:
            yield first_reply
        finally:
            self._in_flight -= 1
            if waiting[0]:
                self._metrics.engine_queue_depth.dec()

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._on_close is not None:
                self._on_close()


def _unavailable(error: Exception) -> Unavailable:
    return Unavailable(f"engine: a Ray Serve replica failed ({type(error).__name__}); retry shortly")
