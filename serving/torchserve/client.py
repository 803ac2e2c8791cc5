"""The gateway's HTTP client of one TorchServe running semgen's handler (serving/torchserve/handler.py).

Each call is one HTTP POST to TorchServe's inference API with a `serving.core.wire` message
{"op", "args"}; the reply is a stream of framed messages, one per event (a single one for forward
work). HTTP runs on a thread pool, so the gRPC event loop never blocks. When TorchServe is down or
restarting, calls fail with Unavailable (UNAVAILABLE: retry); nothing is kept between calls, so
the gateway recovers as soon as TorchServe answers again.

Metrics use the embedded engine's names: compute time is what the handler measured, queue time
is the rest of the round trip (TorchServe's queue, batching delay and transport), every batch's
size is counted once, and the queue depth is the calls waiting for TorchServe.

A job the caller leaves is skipped by the worker or stops at its next check (cancel.py), or at its
deadline, which counts the wait in TorchServe's queue (`sent_at`). Calls carry TorchServe's inference
token where it asks for one (config.KeyFile).
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

from serving.core.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from serving.core.jobs import job_seconds
from serving.core.metrics import ServingMetrics
from serving.core import wire
from serving.torchserve.cancel import new_marker
from serving.torchserve.config import KeyFile

_END = object()


class TorchServeClient:
    """Calls to the models of one TorchServe, at most `max_in_flight` at once (more are refused
    with ResourceExhausted); `on_close` runs on the first `close` (it stops a TorchServe we started)."""

    backend = "TorchServe"
    fits_heads = False  # a fitted head would live in one worker only

    def __init__(self, inference_url: str, metrics: ServingMetrics | None = None, max_in_flight: int = 64,
                 timeout: float = 600.0, on_close=None, keys: KeyFile | None = None):
        url = urllib.parse.urlsplit(inference_url)
        self.url, self._host, self._port = inference_url, url.hostname, url.port or 80
        self._metrics = metrics or ServingMetrics()
        self._max_in_flight = max_in_flight
        self._metrics.engine_queue_limit.inc(max_in_flight)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_in_flight, thread_name_prefix="semgen-torchserve")
        self._in_flight = 0  # calls sent and not finished (event-loop side)
        self._connections: set[http.client.HTTPConnection] = set()  # open now; close() cuts them
        self._lock = threading.Lock()
        self._timeout = timeout
        self._on_close = on_close
        self._keys = keys  # TorchServe's bearer tokens, where it asks for them
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
                    "cancel_marker": marker and str(marker), "sent_at": time.time()}  # wall clock: another process
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
                    m.backend_reply(model, op, time.perf_counter() - sent, item)
                yield wire.value(item)
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
            headers = {"Content-Type": "application/octet-stream", **(self._keys.header("inference") if self._keys else {})}
            connection.request("POST", f"/predictions/{model}", body, headers)
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
        if status in (413, 429, 507):  # 413: a body over TorchServe's max_request_size
            return ResourceExhausted(text + "; retry with backoff")
        if "Token Authorization failed" in message:  # HTTP 400: no key, an old one (TorchServe restarted)
            return Unavailable(text + "; retry shortly (an operator's TorchServe: check --torchserve-key-file)")
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
