"""serve() itself, in-process with a fake pipeline: SIGTERM drains in-flight requests."""

import asyncio
import os
import signal
import threading

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from servingkit import LEVELS, FakePipeline, free_port, generate, png_bytes

from serving.pyramid.engine import EmbeddedEngine
from serving.core.protos import pyramid_pb2 as pb
from serving.engines import Engines
from serving.options import ServeOptions
from serving.server import serve


async def wait_serving(address: str, timeout: float = 10.0) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=timeout)
        while reply.status != health_pb2.HealthCheckResponse.SERVING:
            await asyncio.sleep(0.02)
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)


def test_sigterm_lets_in_flight_requests_finish_then_exits_zero(capsys):
    pipeline = FakePipeline()
    pipeline.gate = threading.Event()
    opts = ServeOptions(port=free_port(), metrics_port=free_port(), http_port=free_port(), grace_seconds=5)
    address = f"127.0.0.1:{opts.port}"
    request = pb.GenerateRequest(image=png_bytes(), level="conv1", num_samples=2, seed=3)

    async def scenario():
        server = asyncio.ensure_future(serve(opts, lambda o, m: Engines(EmbeddedEngine(pipeline, LEVELS, metrics=m))))
        await wait_serving(address)
        in_flight = asyncio.ensure_future(generate(address, request))
        assert await asyncio.to_thread(pipeline.entered.wait, 5)
        os.kill(os.getpid(), signal.SIGTERM)  # handled by serve()'s event-loop signal handler
        await asyncio.sleep(0.3)
        late = await generate(address, request, timeout=2)  # arrives while draining
        pipeline.gate.set()
        return await in_flight, late, await asyncio.wait_for(server, 10)

    (reply, error), (_, late_error), code = asyncio.run(scenario())
    assert error is None and len(reply.images) == 2
    assert late_error.code() == grpc.StatusCode.UNAVAILABLE
    assert code == 0
    out = capsys.readouterr().out
    assert "health SERVING" in out and "shutting down" in out and out.rstrip().endswith("stopped")
