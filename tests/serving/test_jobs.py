"""JobRunner: the server's own deadline stops a job whose client set none (or a longer one)."""

from __future__ import annotations

import asyncio
import time

import pytest

from serving.core.errors import DeadlineExceeded
from serving.core.jobs import JobRunner, job_seconds
from serving.core.metrics import ServingMetrics


def endless(control):
    """A job that would run for a minute, checking its control every 10 ms."""
    for i in range(6000):
        control.check(i)
        time.sleep(0.01)
    return "finished"


async def run(runner: JobRunner, time_remaining: float | None):
    started = time.monotonic()
    try:
        async for _ in runner.stream("test", endless, 6000, time_remaining):
            pass
    finally:
        elapsed = time.monotonic() - started
        await runner.close()
    return elapsed


@pytest.mark.parametrize("client", [None, 30.0])
def test_the_server_deadline_caps_every_job(client):
    runner = JobRunner(1, ServingMetrics(), max_seconds=0.3)
    with pytest.raises(DeadlineExceeded):
        asyncio.run(run(runner, client))
    assert runner.running == 0


def test_a_shorter_client_deadline_still_wins():
    assert job_seconds(0.2, 600.0) == 0.2 and job_seconds(None, 600.0) == 600.0 and job_seconds(None, None) is None
