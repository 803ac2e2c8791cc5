"""Engines that forward to a TorchServe running semgen's handler (serving/torchserve/handler.py).

Each call is one HTTP POST to TorchServe's inference API with a `serving.torchserve.wire` message
{"op", "args"}; the reply is a stream of framed messages, one per event (a single one for forward
work). HTTP runs on a thread pool, so the gRPC event loop never blocks. When TorchServe is down or
restarting, calls fail with Unavailable (UNAVAILABLE: retry); nothing is kept between calls, so
the gateway recovers as soon as TorchServe answers again.

Metrics use the embedded engine's names: compute time is what the handler measured, queue time
is the rest of the round trip (TorchServe's queue, batching delay and transport), every batch's
size is counted once, and the queue depth is the calls waiting for TorchServe.

Not supported here: FitHead (a fitted head would live in one worker only; UNIMPLEMENTED). A job the
caller leaves stops in the worker at its next event (cancel.py), or at its deadline. A full job queue
(HTTP 503) is UNAVAILABLE like any other 503.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import http.client
import json
import socket
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, AsyncIterator

import numpy as np

from semgen.pipelines.forward import Op
from serving.torchserve import wire
from serving.torchserve.cancel import new_marker
from serving.core.errors import (AlreadyExists, DeadlineExceeded, InvalidInput, NotFound, ResourceExhausted, Unavailable, Unsupported)
from serving.pyramid.engine import Engine, Generated, ModelInfo
from serving.imagine.engine import ImagineEngine, ImagineInfo, ImagineJob, StepProgress, Variations
from serving.core.jobs import job_seconds
from serving.core.metrics import ServingMetrics
from serving.semantics.engine import HeadSummary, Progress, Samples, SemanticsEngine, SemanticsInfo

# the engine errors a handler reports by name; any other name is a bug there (INTERNAL here)
_ERRORS = {cls.__name__: cls for cls in (InvalidInput, NotFound, AlreadyExists, ResourceExhausted, DeadlineExceeded,
                                         Unavailable, Unsupported)}
_END = object()


class TorchServeClient:
    """Calls to the models of one TorchServe, at most `max_in_flight` at once (more are refused
    with ResourceExhausted); `on_close` runs on the first `close` (it stops a TorchServe we started)."""

    def __init__(self, inference_url: str, metrics: ServingMetrics | None = None, max_in_flight: int = 64,
                 timeout: float = 600.0, on_close=None):
        url = urllib.parse.urlsplit(inference_url)
        self.url, self._host, self._port = inference_url, url.hostname, url.port or 80
        self._metrics = metrics or ServingMetrics()
        self._max_in_flight = max_in_flight
        self._pool = concurrent.futures.ThreadPoolExecutor(max_in_flight, thread_name_prefix="semgen-torchserve")
        self._in_flight = 0  # calls sent and not finished (event-loop side)
        self._connections: set[http.client.HTTPConnection] = set()  # open now; close() cuts them
        self._lock = threading.Lock()
        self._timeout = timeout
        self._on_close = on_close
        self._closed = False
        self.max_job_seconds: float | None = None  # the server's deadline for every job (see JobRunner)
        self.cancel_dir: Path | None = None  # where cancel markers go (a TorchServe we started; see cancel.py)

    async def call(self, model: str, op: str, args: dict | None = None) -> Any:
        """The single result of `op` (forward work, info)."""
        results = [result async for result in self.stream(model, op, args)]
        return results[-1] if results else None

    async def stream(self, model: str, op: str, args: dict | None = None) -> AsyncIterator[Any]:
        """Every event `op` sends; raises the engine error the handler reported."""
        if self._closed:
            raise Unavailable("engine: shutting down; retry on another replica")
        if self._in_flight >= self._max_in_flight:
            raise ResourceExhausted(f"queue: {self._max_in_flight} calls are waiting for TorchServe; retry with backoff")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        marker = None
        if args and "time_remaining" in args:  # a job: it stops at the server's deadline, or when we cancel it
            marker = new_marker(self.cancel_dir) if self.cancel_dir else None
            args = {**args, "time_remaining": job_seconds(args["time_remaining"], self.max_job_seconds),
                    "cancel_marker": marker and str(marker)}
        body = wire.pack({"op": op, "args": args or {}})
        m = self._metrics
        m.engine_queue_depth.inc()
        sent = time.perf_counter()
        left = threading.Event()  # the caller stopped reading (cancelled, error): stop at the next message

        def post(item):
            if not loop.is_closed():
                loop.call_soon_threadsafe(events.put_nowait, item)

        self._pool.submit(self._post, model, body, post, left)
        self._in_flight += 1
        first = True
        try:
            while (item := await events.get()) is not _END:
                if isinstance(item, Exception):
                    raise item
                if first:  # the first reply: the call left TorchServe's queue
                    first = False
                    m.engine_queue_depth.dec()
                    compute = float(item.get("compute_seconds", 0.0))
                    m.engine_queue_latency.labels(op=op).observe(max(0.0, time.perf_counter() - sent - compute))
                    m.engine_compute_latency.labels(op=op).observe(compute)
                    if item.get("batch_size"):
                        m.batch_size.labels(model=model).observe(item["batch_size"])
                if "error" in item:
                    raise _ERRORS.get(item["error"], RuntimeError)(item["message"])
                yield item["value"]
            marker = None  # the job finished: nothing to cancel
        finally:
            if marker is not None:  # the caller left before the end (cancel, deadline): stop the worker's job
                marker.touch()
            left.set()
            self._in_flight -= 1
            if first:
                m.engine_queue_depth.dec()

    def _post(self, model: str, body: bytes, post, left: threading.Event) -> None:
        """On a pool thread: POST, then hand every framed reply (or an error) to the event loop."""
        connection = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        with self._lock:
            self._connections.add(connection)
        try:
            connection.request("POST", f"/predictions/{model}", body, {"Content-Type": "application/octet-stream"})
            response = connection.getresponse()
            if response.status != 200:
                post(self._http_error(model, response.status, response.read()))
                return
            for message in wire.unframe(response):
                if left.is_set():  # closing the connection is all we can do: TorchServe cannot stop a handler
                    return
                post(wire.unpack(message))
        except (OSError, http.client.HTTPException) as e:
            post(Unavailable(f"engine: TorchServe at {self.url} is not reachable ({type(e).__name__}: {e}); "
                             "retry shortly"))
        except Exception as e:  # a reply we cannot read: a bug, not the client's fault
            post(RuntimeError(f"TorchServe reply for {model}: {e}"))
        finally:
            with self._lock:
                self._connections.discard(connection)
            connection.close()
            post(_END)

    def _http_error(self, model: str, status: int, body: bytes) -> Exception:
        try:
            message = json.loads(body).get("message", "")
        except ValueError:
            message = body[:200].decode(errors="replace")
        text = f"engine: TorchServe model {model!r} answered HTTP {status}: {message}"
        if status in (429, 507):
            return ResourceExhausted(text + "; retry with backoff")
        if status in (404, 500, 503):  # not loaded (yet), its queue full or no worker ("no worker to serve"),
            return Unavailable(text + "; retry shortly")  # a worker died ("Worker died.")
        if status == 408:
            return DeadlineExceeded(text)
        return RuntimeError(text)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._on_close is not None:  # stopping TorchServe ends every open call
            await asyncio.to_thread(self._on_close)
        with self._lock:  # a TorchServe we did not start: cut the calls still reading
            for connection in self._connections:
                if connection.sock is not None:
                    with contextlib.suppress(OSError):
                        connection.sock.shutdown(socket.SHUT_RDWR)
        await asyncio.to_thread(self._pool.shutdown, wait=True)


class TorchServePyramidEngine(Engine):
    def __init__(self, client: TorchServeClient, info: dict):
        self._client = client
        self.info = ModelInfo(tuple(info["levels"]), tuple(info["class_names"]), int(info["image_size"]))

    @classmethod
    async def connect(cls, client: TorchServeClient) -> "TorchServePyramidEngine":
        return cls(client, await client.call("pyramid", "info"))

    async def generate(self, image, levels, num_samples, seed, class_index=None) -> Generated:
        return await self._generated(Op.GENERATE, dict(image=image, levels=dict(levels), num_samples=num_samples,
                                                      seed=seed, class_index=class_index))

    async def repaint(self, image, region, level, num_samples, seed, class_index=None) -> Generated:
        return await self._generated(Op.REPAINT, dict(image=image, region=region, level=level,
                                                     num_samples=num_samples, seed=seed, class_index=class_index))

    async def composite(self, image, object_image, box, level, num_samples, seed, class_index=None) -> Generated:
        return await self._generated(Op.COMPOSITE, dict(image=image, object_image=object_image, box=list(box),
                                                       level=level, num_samples=num_samples, seed=seed,
                                                       class_index=class_index))

    async def _generated(self, op: str, args: dict) -> Generated:
        v = await self._client.call("pyramid", op, args)
        return Generated(images=v["images"], class_index=int(v["class_index"]), level=v["level"])

    async def close(self) -> None:
        await self._client.close()


class TorchServeSemanticsEngine(SemanticsEngine):
    """Sample and Segment on the batched "semantics" model; SCS and SIE on "semantics_jobs"."""

    def __init__(self, client: TorchServeClient, info: dict):
        self._client = client
        heads = {name: HeadSummary(h["name"], h["kind"], tuple(h["class_names"]), bool(h["bundled"]), int(h["shots"]))
                 for name, h in info["heads"].items()}
        self._info = SemanticsInfo(int(info["image_size"]), tuple(info["latent_shape"]), heads)

    @classmethod
    async def connect(cls, client: TorchServeClient) -> "TorchServeSemanticsEngine":
        return cls(client, await client.call("semantics", "info"))

    @property
    def info(self) -> SemanticsInfo:
        return self._info

    def _classes(self, head: str) -> tuple[str, ...]:
        if head not in self._info.heads:
            raise NotFound(f"head: no head named {head!r}; known: {', '.join(sorted(self._info.heads))}")
        return self._info.heads[head].class_names

    async def sample(self, seeds, latents, psi, head) -> Samples:
        classes = self._classes(head) if head else ()
        v = await self._client.call("semantics", Op.SAMPLE, dict(seeds=seeds, latents=latents, psi=psi,
                                                                predictor=head or None))
        return Samples(v["images"], v["latents"], v["masks"], classes)

    async def segment(self, latents, head) -> np.ndarray:
        self._classes(head)
        return (await self._client.call("semantics", Op.SAMPLE, dict(latents=latents, predictor=head)))["masks"]

    async def fit_head(self, *args, **kwargs) -> HeadSummary:
        raise Unsupported("FitHead: not served by the TorchServe engine (a fitted head would live in one worker "
                          "only); fit heads on a server started with --engine embedded")

    def sample_conditional(self, target_mask, head, num_samples, seed, n_init, iterations, lr, space, psi,
                           preview_every, time_remaining) -> AsyncIterator[Progress | Samples]:
        return self._job("sample_conditional", dict(
            target_mask=target_mask, head=head, num_samples=num_samples, seed=seed, n_init=n_init,
            iterations=iterations, lr=lr, space=space, psi=psi, preview_every=preview_every,
            time_remaining=time_remaining))

    def edit(self, latent, target_mask, head, iterations, lr, space, preview_every,
             time_remaining) -> AsyncIterator[Progress | Samples]:
        return self._job("edit", dict(latent=latent, target_mask=target_mask, head=head, iterations=iterations,
                                      lr=lr, space=space, preview_every=preview_every, time_remaining=time_remaining))

    async def _job(self, op: str, args: dict) -> AsyncIterator[Progress | Samples]:
        async for v in self._client.stream("semantics_jobs", op, args):
            if "iteration" in v:
                yield Progress(int(v["iteration"]), int(v["total"]), float(v["loss"]), v["preview"])
            else:
                yield Samples(v["images"], v["latents"], v["masks"], tuple(v["class_names"]), v["scores"])

    async def close(self) -> None:
        await self._client.close()


class TorchServeImagineEngine(ImagineEngine):
    def __init__(self, client: TorchServeClient, info: dict):
        self._client = client
        self._info = ImagineInfo(**{k: tuple(v) if isinstance(v, list) else v for k, v in info.items()})
        self._running = 0

    @classmethod
    async def connect(cls, client: TorchServeClient) -> "TorchServeImagineEngine":
        return cls(client, await client.call("imagine", "info"))

    @property
    def info(self) -> ImagineInfo:
        return self._info

    @property
    def running_jobs(self) -> int:
        return self._running

    async def imagine(self, job: ImagineJob, time_remaining: float | None) -> AsyncIterator[StepProgress | Variations]:
        self._running += 1
        try:
            async for v in self._client.stream("imagine", "imagine", dict(job=job, time_remaining=time_remaining)):
                if "stage" in v:
                    yield StepProgress(int(v["stage"]), int(v["iteration"]), int(v["total"]), dict(v["losses"]),
                                       v["previews"])
                else:
                    yield Variations(v["images"], int(v["target_class"]), v["class_name"], v["predicted"],
                                     tuple(int(s) for s in v["seeds"]))
        finally:
            self._running -= 1

    async def close(self) -> None:
        await self._client.close()
