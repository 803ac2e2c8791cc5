"""Client plumbing every service's client shares: one channel with the server's limits and gRPC's own
retry policy, and reading the stream of an iterative job."""

from __future__ import annotations

import json

import grpc

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # matches the server's default
SERVICES = ("semgen.v1.PyramidService", "semgen.v1.SemanticsService", "semgen.v1.ImagineService",
            "semgen.v1.HiganService")
# UNAVAILABLE means the call did not run (model loading, a backend restarting, a draining replica), so
# gRPC itself retries it with backoff; a stream is retried only before its first reply arrives.
RETRY_SERVICE_CONFIG = json.dumps({"methodConfig": [{
    "name": [{"service": service} for service in SERVICES],
    "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.2s", "maxBackoff": "2s", "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"]},
}]})


def job_result(events, on_progress=None):
    """Read the stream of an iterative job (SampleConditional, EditSemantics, Imagine): every
    progress to `on_progress`, then return the result."""
    for event in events:
        if event.HasField("result"):
            return event.result
        if on_progress is not None:
            on_progress(event.progress)
    raise RuntimeError("the job's stream ended without a result")


def follow_job(events, desc: str, show):
    """`job_result` with a tqdm progress bar: `show(bar, progress)` updates it for every progress.
    Ctrl-C cancels the job on the server."""
    from tqdm import tqdm

    bar = tqdm(desc=desc, unit="it")
    try:
        return job_result(events, lambda progress: show(bar, progress))
    except KeyboardInterrupt:
        events.cancel()
        raise
    finally:
        bar.close()


class ChannelClient:
    """One gRPC channel with the server's message limits; closes as a context manager."""

    def __init__(self, address: str, timeout: float = 60.0,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, wait_for_ready: bool = False):
        self.timeout = timeout
        self.wait_for_ready = wait_for_ready
        self._channel = grpc.insecure_channel(address, options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.enable_retries", 1),
            ("grpc.service_config", RETRY_SERVICE_CONFIG),
        ])

    def close(self) -> None:
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
