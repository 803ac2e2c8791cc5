"""Metrics: the registry, the /metrics endpoint, and what the interceptor records per RPC."""

import asyncio
import threading
import urllib.error
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from servingkit import FakePipeline, generate, generate_raw, in_process_server, png_bytes, sample_value, wait_until

from serving.core.metrics import LATENCY_BUCKETS, ServingMetrics
from serving.core.protos import pyramid_pb2 as pb

GEN = "semgen.v1.PyramidService/Generate"


def req(**fields) -> pb.GenerateRequest:
    base = dict(image=png_bytes(), level="fc7", num_samples=1, seed=0)
    base.update(fields)
    return pb.GenerateRequest(**base)


def test_registry_counts_and_times_by_method_and_code():
    m = ServingMetrics()
    m.observe_request("svc/A", "OK", 0.003)
    m.observe_request("svc/A", "OK", 0.2)
    m.observe_request("svc/A", "INVALID_ARGUMENT", 0.001)
    assert sample_value(m, "semgen_requests_total", method="svc/A", code="OK") == 2
    assert sample_value(m, "semgen_requests_total", method="svc/A", code="INVALID_ARGUMENT") == 1
    assert sample_value(m, "semgen_request_latency_seconds_bucket", method="svc/A", code="OK", le="0.005") == 1
    assert sample_value(m, "semgen_request_latency_seconds_count", method="svc/A", code="OK") == 2
    assert LATENCY_BUCKETS[0] == 0.001 and LATENCY_BUCKETS[-1] == 60.0


def test_each_instance_has_its_own_registry():
    a, b = ServingMetrics(), ServingMetrics()  # the global registry would refuse the second
    a.observe_request("m", "OK", 0.1)
    assert sample_value(a, "semgen_requests_total", method="m", code="OK") == 1
    assert sample_value(b, "semgen_requests_total", method="m", code="OK") == 0


def test_metrics_are_served_as_prometheus_text():
    m = ServingMetrics()
    m.observe_request("svc/A", "OK", 0.01)
    server = m.serve_http("127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5) as reply:
            content_type, text = reply.headers["Content-Type"], reply.read().decode()
    finally:
        server.shutdown()
    assert content_type.startswith("text/plain")
    assert 'semgen_requests_total{code="OK",method="svc/A"} 1.0' in text
    assert "process_resident_memory_bytes " in text and "process_start_time_seconds " in text
    assert "# TYPE semgen_request_latency_seconds histogram" in text
    assert "# TYPE semgen_requests_in_flight gauge" in text


def test_the_metrics_port_answers_metrics_only():
    m = ServingMetrics()
    server = m.serve_http("127.0.0.1", 0)
    try:
        for path in ("/", "/healthz", "/metrics/x", "/favicon.ico"):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}{path}", timeout=5)
                raise AssertionError(f"{path} answered")
            except urllib.error.HTTPError as e:
                assert e.code == 404 and b"serves /metrics only" in e.read()
    finally:
        server.shutdown()


def test_interceptor_records_every_rpc_with_its_final_code():
    async def scenario():
        async with in_process_server(FakePipeline()) as s:
            await generate(s.address, req())
            await generate(s.address, req(seed=3))
            await generate(s.address, req(level="fc9"))
            await generate_raw(s.address, b"\xff\xff")  # fails before the servicer runs
            await generate(s.address, req(seed=666))
            async with grpc.aio.insecure_channel(s.address) as channel:
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            return s.metrics

    m = asyncio.run(scenario())
    assert sample_value(m, "semgen_requests_total", method=GEN, code="OK") == 2
    assert sample_value(m, "semgen_requests_total", method=GEN, code="INVALID_ARGUMENT") == 2
    assert sample_value(m, "semgen_requests_total", method=GEN, code="INTERNAL") == 1
    # health checks are probes, kept out of the request series (and its error ratio)
    assert sample_value(m, "semgen_probes_total", method="grpc.health.v1.Health/Check", code="OK") == 1
    assert sample_value(m, "semgen_requests_total", method="grpc.health.v1.Health/Check", code="OK") == 0
    assert sample_value(m, "semgen_request_latency_seconds_count", method=GEN, code="OK") == 2
    assert sample_value(m, "semgen_requests_in_flight", method=GEN) == 0
    # Three calls reached the engine (two OK, one that raised); it timed all three.
    assert sample_value(m, "semgen_engine_compute_seconds_count", op="generate") == 3
    assert sample_value(m, "semgen_engine_queue_seconds_count", op="generate") == 3


def test_in_flight_and_queue_depth_while_calls_wait():
    pipeline = FakePipeline()
    pipeline.gate = threading.Event()

    async def scenario():
        async with in_process_server(pipeline, workers=1) as s:
            calls = [asyncio.ensure_future(generate(s.address, req(seed=i))) for i in range(2)]
            # One call computes (blocked on the gate), the other waits for the single worker.
            seen = await asyncio.to_thread(wait_until, lambda: (
                sample_value(s.metrics, "semgen_requests_in_flight", method=GEN) == 2
                and sample_value(s.metrics, "semgen_engine_queue_depth") == 1))
            pipeline.gate.set()
            results = await asyncio.gather(*calls)
            return seen, results, s.metrics

    seen, results, m = asyncio.run(scenario())
    assert seen
    assert all(error is None for _, error in results)
    assert sample_value(m, "semgen_requests_in_flight", method=GEN) == 0
    assert sample_value(m, "semgen_engine_queue_depth") == 0


def test_deadline_exceeded_is_recorded():
    pipeline = FakePipeline()
    pipeline.gate = threading.Event()

    async def scenario():
        async with in_process_server(pipeline) as s:
            _, error = await generate(s.address, req(), timeout=0.3)
            recorded = await asyncio.to_thread(wait_until, lambda: sample_value(
                s.metrics, "semgen_requests_total", method=GEN, code="DEADLINE_EXCEEDED") == 1)
            pipeline.gate.set()
            return error, recorded, s.metrics

    error, recorded, m = asyncio.run(scenario())
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert recorded
    assert sample_value(m, "semgen_requests_in_flight", method=GEN) == 0
