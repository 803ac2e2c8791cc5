"""The online executor: a batch job's items sent to a running semgen server, a bounded number in flight.

UNAVAILABLE, RESOURCE_EXHAUSTED and DEADLINE_EXCEEDED are retried with exponential back-off and full jitter up to
`max_attempts`; any other status (INVALID_ARGUMENT above all) is recorded at once and the job goes on. The retry
loop is ours, not gRPC's retry policy, because a batch job needs what that policy cannot give: a fresh deadline per
attempt (so DEADLINE_EXCEEDED can be retried), back-off long enough to outlast a server restart, and the count of
attempts in each record. The channel's own retries are off so that every attempt is counted.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Callable

import grpc

from serving.batch.manifest import RPCS, Item
from serving.batch.store import RETRYABLE, Result, reply_outputs
from serving.core.auth import AUTH_KEY
from serving.core.channel import DEFAULT_MAX_MESSAGE_BYTES


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    multiplier: float = 2.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based): full jitter under the capped curve."""
        return rng.uniform(0, min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1)))


def open_aio_channel(address: str, credentials: grpc.ChannelCredentials | None = None,
                     server_name: str | None = None,
                     max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> grpc.aio.Channel:
    options = [("grpc.max_send_message_length", max_message_bytes),
               ("grpc.max_receive_message_length", max_message_bytes),
               ("grpc.enable_retries", 0)]  # every attempt is ours, and counted
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    if credentials is not None:
        return grpc.aio.secure_channel(address, credentials, options=options)
    return grpc.aio.insecure_channel(address, options=options)


class Caller:
    """Calls items on one channel: `await caller(item)` -> Result, retrying what is worth retrying."""

    def __init__(self, channel: grpc.aio.Channel, timeout_s: float = 300.0, retry: RetryPolicy = RetryPolicy(),
                 token: str | None = None, sleep: Callable = asyncio.sleep):
        self.channel, self.timeout_s, self.retry, self.sleep = channel, timeout_s, retry, sleep
        self.metadata = ((AUTH_KEY, f"Bearer {token}"),) if token else ()

    async def __call__(self, item: Item, request=None) -> Result:
        """`request`: the item's message when it was built already (on the driver of a Ray job)."""
        rpc = RPCS[item.rpc]
        try:
            request = request or item.request()
        except ValueError as e:  # an input file changed since the job was checked
            return Result(item, "INVALID_ARGUMENT", error=f"line {item.line}: {e}", attempts=0)
        rng = random.Random(f"{item.key}:backoff")  # the jitter is seeded like everything else
        for attempt in range(1, self.retry.max_attempts + 1):
            started = time.perf_counter()
            try:
                reply = await self._attempt(rpc, request, item, attempt)
            except grpc.aio.AioRpcError as e:
                status, details = e.code().name, e.details() or ""
            else:
                outputs, info = reply_outputs(reply)
                return Result(item, "OK", outputs, info, latency_s=time.perf_counter() - started, attempts=attempt)
            if status not in RETRYABLE or attempt == self.retry.max_attempts:
                return Result(item, status, error=details, latency_s=time.perf_counter() - started, attempts=attempt)
            await self.sleep(self.retry.delay(attempt, rng))
        raise AssertionError("unreachable")

    async def _attempt(self, rpc, request, item: Item, attempt: int):
        metadata = (*self.metadata, ("x-request-id", f"{item.key}.{attempt}"))
        if not rpc.stream:
            call = self.channel.unary_unary(rpc.method, request_serializer=type(request).SerializeToString,
                                            response_deserializer=rpc.reply.FromString)
            return await call(request, timeout=self.timeout_s, metadata=metadata)
        call = self.channel.unary_stream(rpc.method, request_serializer=type(request).SerializeToString,
                                         response_deserializer=rpc.reply.FromString)
        async for event in call(request, timeout=self.timeout_s, metadata=metadata):
            if event.HasField("result"):
                return event.result
        raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
                                   "the job's stream ended without a result")


async def run_items(items: list[Item], call: Callable, write: Callable, concurrency: int,
                    stop: asyncio.Event | None = None, on_done: Callable = lambda record: None) -> int:
    """Call every item with at most `concurrency` in flight, `write` each result (in a thread: it fsyncs) as it
    comes; once `stop` is set no new item starts and the ones in flight finish. Returns the items finished."""
    queue = list(reversed(items))
    stop = stop or asyncio.Event()
    finished = 0

    async def worker():
        nonlocal finished
        while queue and not stop.is_set():
            result = await call(queue.pop())
            on_done(await asyncio.to_thread(write, result))
            finished += 1

    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, len(items))))))
    return finished
